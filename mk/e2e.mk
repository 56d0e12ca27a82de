# e2e: vmnic end to end on a real containerd, driven through the CRI API.
#
#   make e2e         builds what it needs (pinned containerd + runc, local images), runs e2e/
#   make e2e-bench   RunPodSandbox wall time with and without vmnic in the CNI chain
#
# e2e/ is a separate Go module (k8s.io/cri-client stays out of the main module).
# Everything it builds goes to .tools/e2e; every target is incremental.

E2E_DIR                := $(TOOLS)/e2e
E2E_BIN                := $(E2E_DIR)/bin
E2E_IMAGES             := $(E2E_DIR)/images
E2E_CONTAINERD_VERSION := v2.4.2
E2E_RUNC_VERSION       := v1.3.1
E2E_TIMEOUT            ?= 15m
E2E_FLAGS              ?=
E2E_BENCH_PODS         ?= 20

# containerd without the snapshotters that need extra C headers (btrfs,
# devmapper, zfs): the suite uses overlayfs.
E2E_CONTAINERD_TAGS := no_btrfs no_devmapper no_zfs
E2E_CONTAINERD_PKG  := github.com/containerd/containerd/v2/cmd

# e2e/go.mod follows the main module through its replace directive (see
# MODULE_GOFLAGS in the Makefile).
E2E_GOFLAGS := $(MODULE_GOFLAGS)

# The tests find the binaries and images through these.
export VMNIC_E2E_TOOLS := $(E2E_DIR)

E2E_STAMP_CONTAINERD := $(E2E_BIN)/.containerd-$(E2E_CONTAINERD_VERSION)
E2E_STAMP_RUNC       := $(E2E_BIN)/.runc-$(E2E_RUNC_VERSION)
E2E_IMAGE_SRCS       := $(wildcard e2e/go.mod e2e/go.sum e2e/cmd/*/*.go e2e/internal/*/*.go \
                        internal/testkit/vmmsim/*.go internal/testkit/tapguest/*.go internal/testkit/openapi/*.go netsetup/*.go)

# E2E_DEPS: everything `make e2e` needs before the tests run.
E2E_DEPS := tools build e2e-tools e2e-images

.PHONY: e2e e2e-bench e2e-tools e2e-images

e2e-tools: $(E2E_STAMP_CONTAINERD) $(E2E_STAMP_RUNC)

# containerd, its runc shim and ctr at the pinned version.
$(E2E_STAMP_CONTAINERD):
	@mkdir -p $(E2E_BIN)
	GOBIN=$(E2E_BIN) GOFLAGS=-buildvcs=false $(GO) install -tags "$(E2E_CONTAINERD_TAGS)" \
	  $(E2E_CONTAINERD_PKG)/containerd@$(E2E_CONTAINERD_VERSION) \
	  $(E2E_CONTAINERD_PKG)/containerd-shim-runc-v2@$(E2E_CONTAINERD_VERSION) \
	  $(E2E_CONTAINERD_PKG)/ctr@$(E2E_CONTAINERD_VERSION)
	@touch $@

# runc: built with cgo (its nsenter is C) but without the seccomp build tag,
# so it needs no libseccomp-dev; the suite's containers use no seccomp profile.
$(E2E_STAMP_RUNC):
	@mkdir -p $(E2E_BIN)
	GOBIN=$(E2E_BIN) GOFLAGS=-buildvcs=false $(GO) install github.com/opencontainers/runc@$(E2E_RUNC_VERSION)
	@touch $@

# The sandbox (pause) image and the VMM stand-in image, built from static Go
# binaries and packed as OCI image layouts (no registry needed).
e2e-images: $(E2E_IMAGES)/pause.tar $(E2E_IMAGES)/vmm.tar

$(E2E_DIR)/build/mkimage $(E2E_DIR)/build/pause $(E2E_DIR)/build/vmmprobe &: $(E2E_IMAGE_SRCS)
	@mkdir -p $(E2E_DIR)/build
	cd e2e && GOFLAGS="$(E2E_GOFLAGS)" CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(E2E_DIR)/build/ ./cmd/mkimage ./cmd/pause ./cmd/vmmprobe

$(E2E_IMAGES)/pause.tar: $(E2E_DIR)/build/mkimage $(E2E_DIR)/build/pause
	@mkdir -p $(E2E_IMAGES)
	$(E2E_DIR)/build/mkimage -name localhost/vmnic-e2e/pause:1 -o $@ \
	  -entrypoint /pause -file /pause=$(E2E_DIR)/build/pause

# `vmmprobe ch` runs the Cloud Hypervisor simulator, which finds the API spec
# as the repository's tests do (../shared/specs from the directory of the
# vmnic go.mod): the image holds both, and the container runs in /vmnic.
E2E_CH_SPEC := $(wildcard ../shared/specs/cloud-hypervisor.yaml)

$(E2E_IMAGES)/vmm.tar: $(E2E_DIR)/build/mkimage $(E2E_DIR)/build/vmmprobe go.mod $(E2E_CH_SPEC)
	@mkdir -p $(E2E_IMAGES)
	$(E2E_DIR)/build/mkimage -name localhost/vmnic-e2e/vmm:1 -o $@ \
	  -entrypoint /vmmprobe -file /vmmprobe=$(E2E_DIR)/build/vmmprobe \
	  -file /vmnic/go.mod=go.mod $(if $(E2E_CH_SPEC),-file /shared/specs/cloud-hypervisor.yaml=$(E2E_CH_SPEC))

# e2e: the end-to-end suite (root). As root a missing piece fails, never skips.
e2e: apt $(E2E_DEPS)
	@test -z "$$(gofmt -l e2e)" || { echo "gofmt needed:"; gofmt -l e2e; exit 1; }
	cd e2e && GOFLAGS="$(E2E_GOFLAGS)" $(GO) vet ./...
	cd e2e && GOFLAGS="$(E2E_GOFLAGS)" VMNIC_REQUIRE_ROOT_TESTS=$$([ "$$(id -u)" = 0 ] && echo 1) \
	  $(GO) test -count=1 -p 1 -timeout $(E2E_TIMEOUT) -v $(E2E_FLAGS) ./...

# e2e-bench: RunPodSandbox wall time, E2E_BENCH_PODS pods each way, printed
# as median, p90 and the with/without ratio.
e2e-bench: apt $(E2E_DEPS)
	cd e2e && GOFLAGS="$(E2E_GOFLAGS)" VMNIC_REQUIRE_ROOT_TESTS=$$([ "$$(id -u)" = 0 ] && echo 1) VMNIC_E2E_BENCH_PODS=$(E2E_BENCH_PODS) \
	  $(GO) test -count=1 -p 1 -timeout $(E2E_TIMEOUT) -run '^$$' -bench BenchmarkRunPodSandbox -benchtime 1x .
