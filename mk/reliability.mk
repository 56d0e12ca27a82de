# reliability: issue 7 — crashes, faults and hostile input lose nothing and
# let nothing through (see docs/reliability.md).
#
#   make soak          2000 ADD/DEL cycles with random faults, then an audit
#                      of every resource kind (root; ~10 min)
#   make soak-short    the same, 200 cycles (part of `make test`)
#   make fuzz-short    every fuzz target for FUZZ_TIME (10 s) each (part of `make test`)
#   make failpoint-test  the failpoint package built with -tags vmnic_failpoints
#
# The crash, fault and security tests are in test/reliability (plain
# `go test`; they build the failpoint binaries themselves).

SOAK_CYCLES       ?= 2000
SOAK_SHORT_CYCLES ?= 200
SOAK_SEED         ?= 0
SOAK_OUT          ?= $(TOOLS)/soak
FUZZ_TIME         ?= 10s

# package:target of every fuzz target.
FUZZ_TARGETS := \
	./netsetup:FuzzDecode \
	./plugin:FuzzConf \
	./internal/sandbox:FuzzNames \
	./vmmadapter/cloudhypervisor:FuzzResponses \
	./vmmadapter/cloudhypervisor:FuzzNetArgs \
	./vmmadapter/firecracker:FuzzResponses \
	./vmmadapter/firecracker:FuzzIfaceID \
	./vmmadapter/qemu:FuzzQMP \
	./vmmadapter/qemu:FuzzArgs \
	./vmmadapter/internal/apiclient:FuzzDecodeErrorBody \
	./vmmadapter/internal/apiclient:FuzzParseVersion

.PHONY: soak soak-short fuzz-short failpoint-test

# soak-run CYCLES: the soak program (root); without root it says why and
# skips, or fails when root tests are required (VMNIC_REQUIRE_ROOT_TESTS=1).
define soak-run
	@if [ "$$(id -u)" != 0 ]; then \
	  if [ "$(VMNIC_REQUIRE_ROOT_TESTS)" = 1 ]; then echo "soak: needs root" >&2; exit 1; fi; \
	  echo "soak: skipped (needs root: network namespaces, links, tc, iptables)"; exit 0; fi; \
	mkdir -p $(SOAK_OUT) && \
	$(GO) run ./soak/cmd/vmnic-soak -cycles $(1) -seed $(SOAK_SEED) -cni-bin $(CNI_BIN) -timeout $(2) -out $(SOAK_OUT)/soak-$(1).json
endef

soak: apt tools
	$(call soak-run,$(SOAK_CYCLES),60m)

soak-short: apt tools
	$(call soak-run,$(SOAK_SHORT_CYCLES),10m)

# fuzz-short: each target for FUZZ_TIME, seeded from its testdata/fuzz corpus.
# A failing input is written to the package's testdata/fuzz/<target>/.
fuzz-short:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t##*:}; \
	  echo "fuzz $$pkg $$name ($(FUZZ_TIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZ_TIME) -fuzzminimizetime 5s $$pkg; \
	done

failpoint-test:
	$(GO) vet -tags vmnic_failpoints ./internal/failpoint/
	$(GO) test -count=1 -tags vmnic_failpoints ./internal/failpoint/

TEST_DEPS += failpoint-test fuzz-short soak-short
