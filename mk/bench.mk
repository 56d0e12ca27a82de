# bench: issue 6 — pod start and NIC hot-plug cost, measured side by side
# with the reference CNI plugins (see docs/performance.md).
#
#   make bench                 full run (< 10 min), report in $(BENCH_OUT)
#   make bench BENCH_QUICK=1   smoke run (1–2 min)
#   make bench BENCH_FLAGS='-sections cycle,steps'
#
# Root only: it makes network namespaces, bridges, TAPs and boots a QEMU guest.

BENCH_OUT   ?= .bench
BENCH_QUICK ?=
BENCH_FLAGS ?=

# The QEMU hot-plug measurement boots the test guest (internal/testkit/qemuguest).
APT_PACKAGES += qemu-system-x86 linux-image-amd64 busybox-static xz-utils

.PHONY: bench
bench: apt tools build
	@test "$$(id -u)" = 0 || { echo "make bench needs root (network namespaces, links, tc)" >&2; exit 1; }
	$(GO) run ./bench/cmd/vmnic-bench -out $(BENCH_OUT) $(if $(filter 1 true yes,$(BENCH_QUICK)),-quick) $(BENCH_FLAGS)

# bench-datapath: issue 15 §1 — how fast a NIC carries traffic (bench/datapath):
# vmnic's bridge backend vs the cni backend with the u32 and the bpf data path,
# interleaved; report in $(BENCH_OUT)/datapath.md (BENCH_QUICK=1: smoke run).
BENCH_DATAPATH_FLAGS ?=

.PHONY: bench-datapath
bench-datapath: apt tools build
	@test "$$(id -u)" = 0 || { echo "make bench-datapath needs root (network namespaces, links, tc, BPF)" >&2; exit 1; }
	$(GO) run ./bench/datapath/cmd/vmnic-datapath-bench -out $(BENCH_OUT) $(if $(filter 1 true yes,$(BENCH_QUICK)),-quick) $(BENCH_DATAPATH_FLAGS)
