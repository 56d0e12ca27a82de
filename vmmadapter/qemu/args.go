package qemu

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/vmnic/vmnic/vmmadapter"
)

// maxIDLen bounds the device ids this package makes; a longer valid id is
// shortened (with a hash of the original) like an invalid one.
const maxIDLen = 64

// validID reports whether s is a QEMU identifier: [A-Za-z][A-Za-z0-9_.-]*.
func validID(s string) bool {
	if s == "" || len(s) > maxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case i > 0 && (c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// SanitizeID maps a NIC id to a QEMU device id. A valid id is returned
// unchanged, so SanitizeID(SanitizeID(x)) == SanitizeID(x). Anything else has
// its invalid bytes replaced by '-', gets an "n" prefix when it does not start
// with a letter, and ends with 8 hex digits of the SHA-256 of the original, so
// that different inputs ("a:b", "a/b") stay different devices.
func SanitizeID(id string) string {
	if validID(id) {
		return id
	}
	var b strings.Builder
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-'
		if !ok {
			c = '-'
		}
		if b.Len() == 0 && !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z') {
			b.WriteByte('n')
		}
		b.WriteByte(c)
	}
	if b.Len() == 0 {
		b.WriteByte('n')
	}
	sum := sha256.Sum256([]byte(id))
	suffix := "-" + hex.EncodeToString(sum[:4])
	s := b.String()
	if len(s) > maxIDLen-len(suffix) {
		s = s[:maxIDLen-len(suffix)]
	}
	return s + suffix
}

// NetdevID is the id of the tap netdev that backs device devID.
func NetdevID(devID string) string { return "netdev-" + devID }

// nicID is the device id for nic: its sanitised ID, or its TAP name when
// the ID is empty.
func nicID(nic vmmadapter.NIC) string {
	if nic.ID == "" {
		return SanitizeID(nic.Tap)
	}
	return SanitizeID(nic.ID)
}

// queuePairs returns the number of queue pairs of nic (at least 1).
func queuePairs(nic vmmadapter.NIC) int {
	if nic.QueuePairs < 1 {
		return 1
	}
	return nic.QueuePairs
}

// optValue escapes a value for QEMU's option syntax (a comma is doubled).
func optValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Args returns the QEMU command-line arguments that attach nics at boot:
// for each NIC a "-netdev tap,…" and a "-device virtio-net-pci,…" pair with
// the same ids AddNIC would use, so RemoveNIC works on them later.
func Args(nics []vmmadapter.NIC) []string {
	return FdArgs(nics, nil)
}

// FdArgs is Args for a launcher that hands QEMU its TAPs as inherited fds:
// NIC i whose fds[i] is non-empty gets "-netdev tap,id=…,fd=N,vhost=off"
// (one queue pair) or "fds=N:M:…" (several), without ifname, script or
// queues, which net/tap.c refuses together with fd/fds. nil fds is Args.
func FdArgs(nics []vmmadapter.NIC, fds [][]int) []string {
	var args []string
	for i, nic := range nics {
		id := nicID(nic)
		q := queuePairs(nic)
		netdev := fmt.Sprintf("tap,id=%s,ifname=%s,script=no,downscript=no,vhost=off", NetdevID(id), optValue(nic.Tap))
		if q > 1 {
			netdev += fmt.Sprintf(",queues=%d", q)
		}
		if i < len(fds) && len(fds[i]) > 0 {
			nums := make([]string, len(fds[i]))
			for j, fd := range fds[i] {
				nums[j] = fmt.Sprint(fd)
			}
			key := "fd"
			if len(nums) > 1 {
				key = "fds"
			}
			netdev = fmt.Sprintf("tap,id=%s,%s=%s,vhost=off", NetdevID(id), key, strings.Join(nums, ":"))
		}
		dev := fmt.Sprintf("virtio-net-pci,netdev=%s,id=%s", NetdevID(id), id)
		if nic.MAC != "" {
			dev += ",mac=" + optValue(nic.MAC)
		}
		if nic.MTU > 0 {
			dev += fmt.Sprintf(",host_mtu=%d", nic.MTU)
		}
		if q > 1 {
			dev += fmt.Sprintf(",mq=on,vectors=%d", 2*q+2)
		}
		if nic.QueueSize > 0 {
			dev += fmt.Sprintf(",rx_queue_size=%d,tx_queue_size=%d", nic.QueueSize, txQueueSize(nic.QueueSize))
		}
		args = append(args, "-netdev", netdev, "-device", dev)
	}
	return args
}

// netdevArgs is the QMP netdev_add argument object for nic opened by name.
func netdevArgs(id string, nic vmmadapter.NIC) map[string]any {
	a := map[string]any{
		"type":       "tap",
		"id":         NetdevID(id),
		"ifname":     nic.Tap,
		"script":     "no",
		"downscript": "no",
		"vhost":      false,
	}
	if q := queuePairs(nic); q > 1 {
		a["queues"] = q
	}
	return a
}

// FdName is the monitor name of queue fd q of the NIC with device id devID
// (getfd fdname).
func FdName(devID string, q int) string { return fmt.Sprintf("vmnic-%s-q%d", devID, q) }

// netdevFdArgs is the netdev_add argument object for a tap netdev on the
// queue fds passed before with getfd under names: "fd" for one queue,
// "fds" (colon-separated) for several. net/tap.c net_init_tap refuses
// ifname, script, downscript and queues together with fd/fds (the queue
// count is the number of fds), so none is given; vhost stays off.
func netdevFdArgs(id string, names []string) map[string]any {
	a := map[string]any{"type": "tap", "id": NetdevID(id), "vhost": false}
	if len(names) == 1 {
		a["fd"] = names[0]
	} else {
		a["fds"] = strings.Join(names, ":")
	}
	return a
}

// deviceArgs is the QMP device_add argument object for nic.
func deviceArgs(id string, nic vmmadapter.NIC) map[string]any {
	a := map[string]any{
		"driver": "virtio-net-pci",
		"id":     id,
		"netdev": NetdevID(id),
	}
	if nic.MAC != "" {
		a["mac"] = nic.MAC
	}
	if nic.MTU > 0 {
		a["host_mtu"] = nic.MTU
	}
	if q := queuePairs(nic); q > 1 {
		a["mq"] = true
		a["vectors"] = 2*q + 2
	}
	if nic.QueueSize > 0 {
		a["rx_queue_size"] = nic.QueueSize
		a["tx_queue_size"] = txQueueSize(nic.QueueSize)
	}
	return a
}

// txQueueSize is the tx ring QEMU gives a tap-backed virtio-net device:
// hw/net/virtio-net.c virtio_net_max_tx_queue_size caps it at
// VIRTIO_NET_TX_QUEUE_DEFAULT_SIZE (256) for any backend but vhost-user and
// vDPA, so a larger request is asked for only up to that.
func txQueueSize(rx int) int { return min(rx, vmmadapter.QEMUTapTxQueueSize) }

// RootPortID is the id of the i-th PCIe root port RootPortArgs reserves.
func RootPortID(i int) string { return fmt.Sprintf("vmnic-rp%d", i) }

// MaxRootPorts bounds RootPortArgs (chassis numbers are 8-bit).
const MaxRootPorts = 128

// RootPortArgs returns "-device pcie-root-port,…" arguments for n root
// ports (for a q35 machine), into which AddNIC places NICs so that they can
// be hot-plugged and unplugged (pcie.0 itself takes neither). Each port has
// its own chassis number so that chassis/slot pairs stay unique.
func RootPortArgs(n int) []string {
	var args []string
	for i := 0; i < min(n, MaxRootPorts); i++ {
		args = append(args, "-device", fmt.Sprintf("pcie-root-port,id=%s,bus=pcie.0,chassis=%d,slot=0", RootPortID(i), 0x40+i))
	}
	return args
}
