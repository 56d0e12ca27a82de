# bench: issue 6 — pod start and NIC hot-plug cost, measured side by side
# with the reference CNI plugins (see docs/performance.md).
#
#   make bench                 full run (< 10 min), report in $(BENCH_OUT)
#   make bench BENCH_QUICK=1   smoke run (1–2 min)
#   make bench BENCH_FLAGS='-sections cycle,steps'
#   make bench BENCH_FLAGS="-sections cycle -ref-vmnic OLD/vmnic"   before/after:
#                              a build of an earlier commit as the variant vmnic-prev
#   make bench-test            vet the bench module and run its tests (the quick
#                              run as a test, TestQuickRun; part of `make test`)
#
# Root only: it makes network namespaces, bridges, TAPs and boots a QEMU guest.
# bench/ is a Go module of its own (its plot code's golang.org/x/image stays
# out of the main go.mod); MODULE_GOFLAGS is in the Makefile.

BENCH_OUT   ?= .bench
BENCH_QUICK ?=
BENCH_FLAGS ?=

# The QEMU hot-plug measurement boots the test guest (internal/testkit/qemuguest).
APT_PACKAGES += qemu-system-x86 linux-image-amd64 busybox-static xz-utils

.PHONY: bench bench-test
bench: apt tools build
	@test "$$(id -u)" = 0 || { echo "make bench needs root (network namespaces, links, tc)" >&2; exit 1; }
	cd bench && GOFLAGS="$(MODULE_GOFLAGS)" $(GO) run ./cmd/vmnic-bench -out $(abspath $(BENCH_OUT)) $(if $(filter 1 true yes,$(BENCH_QUICK)),-quick) $(BENCH_FLAGS)

# bench-test: as root the quick run must not skip (VMNIC_REQUIRE_ROOT_TESTS).
bench-test: tools build
	cd bench && GOFLAGS="$(MODULE_GOFLAGS)" $(GO) vet ./...
	cd bench && GOFLAGS="$(MODULE_GOFLAGS)" VMNIC_REQUIRE_ROOT_TESTS=$$([ "$$(id -u)" = 0 ] && echo 1) \
	  $(GO) test -count=1 -p 1 -timeout 40m $(GOTEST_FLAGS) ./...

TEST_DEPS += bench-test

# bench-datapath: issue 15 §1 — how fast a NIC carries traffic (bench/datapath):
# vmnic's bridge backend vs the cni backend with the u32 and the bpf data path,
# interleaved; report in $(BENCH_OUT)/datapath.md (BENCH_QUICK=1: smoke run).
# BENCH_DATAPATH_FLAGS='-experiments' adds the host → guest experiments (GRO or
# XDP on eth0; docs/performance.md), '-variants a,b' and '-echo-only' narrow a run.
BENCH_DATAPATH_FLAGS ?=

.PHONY: bench-datapath
bench-datapath: apt tools build
	@test "$$(id -u)" = 0 || { echo "make bench-datapath needs root (network namespaces, links, tc, BPF)" >&2; exit 1; }
	cd bench && GOFLAGS="$(MODULE_GOFLAGS)" $(GO) run ./datapath/cmd/vmnic-datapath-bench -out $(abspath $(BENCH_OUT)) $(if $(filter 1 true yes,$(BENCH_QUICK)),-quick) $(BENCH_DATAPATH_FLAGS)
