# QEMU adapter and the real-guest test harness (internal/testkit/qemuguest).
# The guest is Debian's kernel (linux-image-amd64, its virtio-net modules)
# plus busybox-static in an initramfs the harness builds in Go and caches
# under .tools/guest/. xz-utils unpacks .ko.xz modules on kernels that
# ship them compressed. Nothing here downloads from anywhere but apt.
APT_PACKAGES += qemu-system-x86 linux-image-amd64 busybox-static xz-utils iputils-ping

.PHONY: qemu-test guest-clean

# qemu-test: only the QEMU adapter and harness tests (root boots real guests).
qemu-test: apt
	VMNIC_REQUIRE_ROOT_TESTS=$$([ "$$(id -u)" = 0 ] && echo 1) \
	  $(GO) test -count=1 -p 1 -timeout 20m $(GOTEST_FLAGS) ./vmmadapter/qemu/... ./internal/testkit/qemuguest/...

# guest-clean: drop the cached guest initramfs (rebuilt on the next boot).
guest-clean:
	rm -rf $(TOOLS)/guest
