# NRI plugin (nri-hook/): compatibility tests against the NRI versions the
# runtimes vendor. Each nri-hook/compat/vNNN is its own Go module pinned to
# one github.com/containerd/nri version (v0.8.0: containerd 2.0/2.1;
# v0.10.0: containerd 2.2.0, CRI-O 1.34; v0.11.0: containerd 2.2.1+,
# CRI-O 1.35/1.36); it starts that version's pkg/adaptation as a fake
# runtime and drives the real bin/vmnic-nri (built on NRI v0.12.5), with the
# plugin pre-installed and external. Root runs them for real (network
# namespaces); as in `make test`, root makes a skip a failure.

NRI_COMPAT_MODULES := v080 v0100 v0110

.PHONY: nri-compat-test
nri-compat-test: build
	@for m in $(NRI_COMPAT_MODULES); do \
	  echo "nri compat: NRI $$m"; \
	  ( cd nri-hook/compat/$$m && $(GO) vet ./... && \
	    VMNIC_NRI_BIN=$(BIN)/vmnic-nri \
	    VMNIC_REQUIRE_ROOT_TESTS=$$([ "$$(id -u)" = 0 ] && echo 1) \
	    $(GO) test -count=1 -timeout 10m $(GOTEST_FLAGS) ./... ) || exit 1; \
	done
	@cd nri-hook/compat/harness && $(GO) vet ./...

TEST_DEPS += nri-compat-test
