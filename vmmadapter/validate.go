package vmmadapter

import "fmt"

// Queue limits of each VMM's virtio-net device, from upstream source.
const (
	// QEMU hw/net/virtio-net.c virtio_net_device_realize: rx_queue_size and
	// tx_queue_size must be powers of two from VIRTIO_NET_RX_QUEUE_MIN_SIZE /
	// VIRTIO_NET_TX_QUEUE_MIN_SIZE (256) to VIRTQUEUE_MAX_SIZE (1024); with a
	// tap backend virtio_net_max_tx_queue_size then caps tx at
	// VIRTIO_NET_TX_QUEUE_DEFAULT_SIZE (256).
	QEMUMinQueueSize   = 256
	QEMUMaxQueueSize   = 1024
	QEMUTapTxQueueSize = 256
	// Firecracker src/vmm/src/devices/virtio/net/mod.rs: NET_QUEUE_SIZES are
	// fixed at NET_QUEUE_MAX_SIZE (256), one queue pair
	// (devices/virtio/net/tap.rs opens the TAP without IFF_MULTI_QUEUE).
	FirecrackerQueueSize = 256
	// Cloud Hypervisor vmm/src/config.rs validate_queue_size: a power of two
	// no greater than VIRTIO_MAX_QUEUE_SIZE (32768).
	CloudHypervisorMaxQueueSize = 32768
	// Firecracker src/vmm/src/devices/virtio/net/device.rs Net::new: an
	// advertised MTU must be within 68..=65535.
	FirecrackerMinMTU = 68
)

// ValidateNIC checks nic against what the VMM of kind accepts, so a CNI ADD
// can refuse it with a clear message instead of failing inside the VMM's
// API (QEMU's device_add, Firecracker's PUT). QueueSize 0 and QueuePairs 0
// mean the VMM default and always pass.
func ValidateNIC(kind Kind, nic NIC) error {
	if nic.MTU < 0 || nic.QueuePairs < 0 || nic.QueueSize < 0 {
		return fmt.Errorf("%s: NIC %q: negative MTU, queue pairs or queue size", kind, nic.ID)
	}
	if err := ValidateFds(kind, nic); err != nil {
		return err
	}
	qs := nic.QueueSize
	pow2 := qs&(qs-1) == 0
	switch kind {
	case QEMU:
		if qs != 0 && (qs < QEMUMinQueueSize || qs > QEMUMaxQueueSize || !pow2) {
			return fmt.Errorf("qemu: NIC %q: queueSize %d: QEMU's virtio-net takes a power of two from %d to %d (the tx queue stays at %d with a tap backend)",
				nic.ID, qs, QEMUMinQueueSize, QEMUMaxQueueSize, QEMUTapTxQueueSize)
		}
	case Firecracker:
		if nic.QueuePairs > 1 {
			return fmt.Errorf("firecracker: NIC %q asks for %d queue pairs; Firecracker opens TAPs single-queue (use 1)", nic.ID, nic.QueuePairs)
		}
		if qs != 0 && qs != FirecrackerQueueSize {
			return fmt.Errorf("firecracker: NIC %q: queueSize %d: Firecracker's virtio-net queues have the fixed size %d (leave queueSize unset or %d)",
				nic.ID, qs, FirecrackerQueueSize, FirecrackerQueueSize)
		}
		if nic.MTU != 0 && nic.MTU < FirecrackerMinMTU {
			return fmt.Errorf("firecracker: NIC %q: MTU %d: Firecracker advertises an MTU from %d to 65535", nic.ID, nic.MTU, FirecrackerMinMTU)
		}
	case CloudHypervisor:
		if qs != 0 && (qs > CloudHypervisorMaxQueueSize || !pow2) {
			return fmt.Errorf("cloud-hypervisor: NIC %q: queueSize %d: Cloud Hypervisor takes a power of two up to %d", nic.ID, qs, CloudHypervisorMaxQueueSize)
		}
	default:
		return fmt.Errorf("unknown VMM kind %q", kind)
	}
	return nil
}

// TakesFds reports whether the VMM of kind can take a NIC's TAP as queue
// fds over its control socket: Cloud Hypervisor (SCM_RIGHTS on vm.add-net,
// vmm/src/api/http/http_endpoint.rs) and QEMU (getfd over QMP, then
// netdev_add tap fd=/fds=, qapi/net.json NetdevTapOptions). Firecracker's
// API server never reads ancillary data: it opens TAPs by name.
func TakesFds(kind Kind) bool {
	return kind == CloudHypervisor || kind == QEMU
}

// ValidateFds checks nic.Fds: none, or one (non-nil) per queue pair for a
// VMM that takes fds (ErrFdsUnsupported, ErrFdCount otherwise).
func ValidateFds(kind Kind, nic NIC) error {
	if len(nic.Fds) == 0 {
		return nil
	}
	if !TakesFds(kind) {
		return fmt.Errorf("%s: NIC %q: %w (it opens TAP %s by name)", kind, nic.ID, ErrFdsUnsupported, nic.Tap)
	}
	pairs := max(nic.QueuePairs, 1)
	if len(nic.Fds) != pairs {
		return fmt.Errorf("%s: NIC %q: %d TAP fds for %d queue pair(s) (num_queues %d): %w",
			kind, nic.ID, len(nic.Fds), pairs, 2*pairs, ErrFdCount)
	}
	for i, f := range nic.Fds {
		if f == nil {
			return fmt.Errorf("%s: NIC %q: TAP fd %d is nil", kind, nic.ID, i)
		}
	}
	return nil
}
