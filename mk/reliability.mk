# reliability: issue 7 — crashes, faults and hostile input lose nothing and
# let nothing through (see docs/reliability.md).
#
#   make soak          2000 ADD/DEL cycles with random faults, then an audit
#                      of every resource kind (root; ~10 min)
#   make soak-short    the same, 200 cycles (part of `make test`)
#   make fuzz-short    every fuzz target for its input budget, about 10 s each
#                      (part of `make test`)
#   make failpoint-test  the failpoint package built with -tags vmnic_failpoints
#   make soak-test     vet the soak module and run its tests (part of `make test`)
#
# The crash, fault and security tests are in test/reliability (plain
# `go test`; they build the failpoint binaries themselves). They and the soak
# share internal/testkit/faultenv (the isolated installation) and
# internal/testkit/hostaudit (the audit). soak/ is a Go module of its own;
# MODULE_GOFLAGS is in the Makefile.

SOAK_CYCLES       ?= 2000
SOAK_SHORT_CYCLES ?= 200
SOAK_SEED         ?= 0
SOAK_OUT          ?= $(TOOLS)/soak
# FUZZ_TIME: when set (e.g. 10m), every target runs for that long instead of
# its input count. Left empty in `make test`: a wall-clock -fuzztime races Go's
# fuzz coordinator at the deadline (go.dev/issue/75804, fixed in Go 1.27) and
# fails a busy run with a bare "context deadline exceeded" and no input.
FUZZ_TIME         ?=

# package:target:inputs of every fuzz target. The input counts are about 10 s
# of each on this 2-core machine (docs/reliability.md); the HTTP and QMP
# targets are slow on purpose (every input is a real exchange on a socket).
FUZZ_TARGETS := \
	./netsetup:FuzzDecode:200000 \
	./plugin:FuzzConf:80000 \
	./internal/sandbox:FuzzNames:80000 \
	./vmmadapter/cloudhypervisor:FuzzResponses:3000 \
	./vmmadapter/cloudhypervisor:FuzzNetArgs:100000 \
	./vmmadapter/firecracker:FuzzResponses:6000 \
	./vmmadapter/firecracker:FuzzIfaceID:100000 \
	./vmmadapter/qemu:FuzzQMP:1500 \
	./vmmadapter/qemu:FuzzArgs:150000 \
	./vmmadapter/internal/apiclient:FuzzDecodeErrorBody:200000 \
	./vmmadapter/internal/apiclient:FuzzParseVersion:200000

.PHONY: soak soak-short soak-test fuzz-short failpoint-test

# soak-run CYCLES: the soak program (root); without root it says why and
# skips, or fails when root tests are required (VMNIC_REQUIRE_ROOT_TESTS=1).
define soak-run
	@if [ "$$(id -u)" != 0 ]; then \
	  if [ "$(VMNIC_REQUIRE_ROOT_TESTS)" = 1 ]; then echo "soak: needs root" >&2; exit 1; fi; \
	  echo "soak: skipped (needs root: network namespaces, links, tc, iptables)"; exit 0; fi; \
	mkdir -p $(SOAK_OUT) && cd soak && GOFLAGS="$(MODULE_GOFLAGS)" \
	$(GO) run ./cmd/vmnic-soak -cycles $(1) -seed $(SOAK_SEED) -cni-bin $(CNI_BIN) -timeout $(2) -out $(SOAK_OUT)/soak-$(1).json
endef

soak: apt tools
	$(call soak-run,$(SOAK_CYCLES),60m)

soak-short: apt tools
	$(call soak-run,$(SOAK_SHORT_CYCLES),10m)

soak-test:
	cd soak && GOFLAGS="$(MODULE_GOFLAGS)" $(GO) vet ./...
	cd soak && GOFLAGS="$(MODULE_GOFLAGS)" VMNIC_REQUIRE_ROOT_TESTS=$$([ "$$(id -u)" = 0 ] && echo 1) \
	  $(GO) test -count=1 -p 1 -timeout 20m $(GOTEST_FLAGS) ./...

# fuzz-short: each target for its input count (or FUZZ_TIME), seeded from its
# testdata/fuzz corpus. A failing input is written to the package's
# testdata/fuzz/<target>/.
fuzz-short:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; budget=$${rest##*:}x; \
	  if [ -n "$(FUZZ_TIME)" ]; then budget=$(FUZZ_TIME); fi; \
	  echo "fuzz $$pkg $$name ($$budget)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $$budget -fuzzminimizetime 200x $$pkg; \
	done

failpoint-test:
	$(GO) vet -tags vmnic_failpoints ./internal/failpoint/
	$(GO) test -count=1 -tags vmnic_failpoints ./internal/failpoint/

TEST_DEPS += failpoint-test fuzz-short soak-test soak-short
