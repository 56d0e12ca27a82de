# NRI plugin (nri-hook/): compatibility tests against the NRI versions the
# runtimes vendor. nri-hook/compat is one Go module with one module file per
# github.com/containerd/nri version, each used with its build tag:
# go.mod (v0.11.0: containerd 2.2.1+, CRI-O 1.35/1.36), go.v0100.mod + tag
# nri0100 (v0.10.0: containerd 2.2.0, CRI-O 1.34), go.v080.mod + tag nri080
# (v0.8.0: containerd 2.0/2.1). The test starts that version's
# pkg/adaptation as a fake runtime and drives the real bin/vmnic-nri (built
# on NRI v0.12.5), with the plugin pre-installed and external. Root runs them
# for real (network namespaces); as in `make test`, root makes a skip a
# failure.

# modfile:tag of each NRI version ("-" for no tag).
NRI_COMPAT_VERSIONS := go.v080.mod:nri080 go.v0100.mod:nri0100 go.mod:-

.PHONY: nri-compat-test
nri-compat-test: build
	@for v in $(NRI_COMPAT_VERSIONS); do \
	  mf=$${v%%:*}; tag=$${v##*:}; [ "$$tag" = - ] && tag=; \
	  echo "nri compat: $$mf $${tag:+(-tags $$tag)}"; \
	  ( cd nri-hook/compat && $(GO) vet -modfile=$$mf -tags "$$tag" ./... && \
	    VMNIC_NRI_BIN=$(BIN)/vmnic-nri \
	    VMNIC_NRI_MODULE_VERSION=$$($(GO) list -modfile=$$mf -m -f '{{.Version}}' github.com/containerd/nri) \
	    VMNIC_REQUIRE_ROOT_TESTS=$$([ "$$(id -u)" = 0 ] && echo 1) \
	    $(GO) test -modfile=$$mf -tags "$$tag" -count=1 -timeout 10m $(GOTEST_FLAGS) ./... ) || exit 1; \
	done

TEST_DEPS += nri-compat-test
