# vmnic — the two commands a user needs:
#   make demo   installs what it needs, then runs the end-to-end demo (root)
#   make test   installs what it needs, then runs every test (root runs the integration tests)
#
# Everything is installed by this Makefile: Debian packages with apt-get, Go tools
# with `go install module@version` into .tools/. Area-specific targets live in mk/*.mk.

SHELL := /bin/bash
.DEFAULT_GOAL := build

TOOLS      := $(CURDIR)/.tools
BIN        := $(CURDIR)/bin
CNI_BIN    := $(TOOLS)/cni
GO         ?= go
GOTEST_FLAGS ?=

CNI_VERSION         := v1.3.1
CNI_PLUGINS_VERSION := v1.9.1
CNI_PLUGINS         := bridge ptp host-local loopback tuning portmap tap

# Debian packages; mk/*.mk files append what their area needs.
APT_PACKAGES := iproute2 iptables iputils-ping kmod
# The guest-config consumers (netsetup/guestconfig tests): cloud-init's parser
# (cloud-init devel net-convert) and netplan's (netplan generate) run without a
# booted systemd; systemd-networkd and systemd-network-generator come with systemd.
APT_PACKAGES += cloud-init netplan.io systemd

# Tests find tools and binaries through these.
export VMNIC_TOOLS   := $(TOOLS)
export VMNIC_CNI_BIN := $(CNI_BIN)
export VMNIC_BIN     := $(BIN)

# Prerequisites of `make test` beyond build/tools; mk/*.mk files append.
TEST_DEPS :=

# bench/, soak/ and e2e/ are Go modules of their own, so the main go.mod
# lists only what the binaries use. Each follows the main module through a
# replace directive; -mod=mod lets a dependency the main module gained since
# the nested go.sum was tidied be added on the fly instead of failing.
MODULE_GOFLAGS := -buildvcs=false -mod=mod

include $(sort $(wildcard mk/*.mk))

.PHONY: build test go-test unit-test demo demo-test tools apt clean fmt vet

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/vmnic ./plugin
	$(GO) build -o $(BIN)/vmnicctl ./cmd/vmnicctl
	CGO_ENABLED=0 $(GO) build -o $(BIN)/vmnic-guest-agent ./internal/testkit/guestagent/cmd/vmnic-guest-agent
	@if [ -d nri-hook ]; then $(GO) build -o $(BIN)/vmnic-nri ./nri-hook; fi
	@cp -f $(BIN)/vmnic $(CNI_BIN)/vmnic 2>/dev/null || true

# apt: install the Debian packages the tests and the demo use (root; no-op when present).
apt:
	@missing=""; for p in $(sort $(APT_PACKAGES)); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install:$$missing" >&2; exit 1; fi; \
	  echo "apt-get install:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# tools: the reference CNI plugins and cnitool at pinned versions.
tools: $(CNI_BIN)/.$(CNI_PLUGINS_VERSION) $(TOOLS)/bin/cnitool

$(CNI_BIN)/.$(CNI_PLUGINS_VERSION):
	@mkdir -p $(CNI_BIN)
	GOBIN=$(CNI_BIN) $(GO) install $(foreach p,$(CNI_PLUGINS),github.com/containernetworking/plugins/plugins/$(if $(filter host-local,$(p)),ipam,$(if $(filter tuning portmap,$(p)),meta,main))/$(p)@$(CNI_PLUGINS_VERSION))
	@touch $@

$(TOOLS)/bin/cnitool:
	@mkdir -p $(TOOLS)/bin
	GOBIN=$(TOOLS)/bin $(GO) install github.com/containernetworking/cni/cnitool@$(CNI_VERSION)

fmt:
	gofmt -l -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...
	@for m in bench soak e2e; do echo "go vet ($$m module)"; ( cd $$m && GOFLAGS="$(MODULE_GOFLAGS)" $(GO) vet ./... ) || exit 1; done

unit-test:
	$(GO) test -count=1 $(GOTEST_FLAGS) ./...

# test: all tests. As root the integration tests run (and must not skip:
# VMNIC_REQUIRE_ROOT_TESTS makes a missing tool a failure, not a skip).
# Order: the main module's tests, then each area's extra suites (TEST_DEPS,
# from mk/*.mk: the bench and soak modules among them), then the end-to-end
# suite on a real containerd, and last the demo (`make demo`, the README's
# main command), so CI checks it end to end as well.
test: apt tools build
	@$(MAKE) --no-print-directory go-test
	@for t in $(TEST_DEPS) e2e demo-test; do echo "== make $$t"; $(MAKE) --no-print-directory $$t || exit 1; done

# demo-test: the demo as a test (root; skipped with a message otherwise).
demo-test:
	@if [ "$$(id -u)" != 0 ]; then echo "demo-test: skipped: the demo needs root"; exit 0; fi; ./demo/demo.sh

go-test:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	VMNIC_REQUIRE_ROOT_TESTS=$$([ "$$(id -u)" = 0 ] && echo 1) \
	  $(GO) test -count=1 -p 1 -timeout 40m $(GOTEST_FLAGS) ./...

demo: apt tools build
	./demo/demo.sh

clean:
	rm -rf $(BIN)
