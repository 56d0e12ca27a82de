# vmm: Cloud Hypervisor / Firecracker adapters, their simulators (internal/testkit/vmmsim)
# and the spec validator (internal/testkit/openapi). No root, no packages: the simulators
# serve on unix sockets in temp dirs and validate every request against
# ../shared/specs/*.yaml (tests skip the spec checks, saying so, when absent).
#
#   make vmm-test   the adapter, simulator and conformance tests only

VMM_PKGS := ./internal/testkit/openapi/... ./internal/testkit/vmmsim/... ./vmmadapter/cloudhypervisor/... \
            ./vmmadapter/firecracker/... ./vmmadapter/connect/... ./vmmadapter/internal/...

.PHONY: vmm-test
vmm-test:
	$(GO) test -count=1 $(GOTEST_FLAGS) $(VMM_PKGS)
