package qemu

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/vmmadapter"
)

var qemuID = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]*$`)

func TestSanitizeID(t *testing.T) {
	long := strings.Repeat("a", 70)
	tests := []struct {
		in, want string // want "" = only check validity
	}{
		{"net0", "net0"},
		{"vmnic-eth0_1.x", "vmnic-eth0_1.x"},
		{"sandbox:1/eth0", ""},
		{"1abc", ""},
		{"", ""},
		{"-x", ""},
		{long, ""},
		{"héllo", ""},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		got := SanitizeID(tt.in)
		if tt.want != "" && got != tt.want {
			t.Errorf("SanitizeID(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if !qemuID.MatchString(got) || len(got) > maxIDLen {
			t.Errorf("SanitizeID(%q) = %q: not a valid QEMU id of at most %d bytes", tt.in, got, maxIDLen)
		}
		if again := SanitizeID(got); again != got {
			t.Errorf("SanitizeID not idempotent: %q -> %q -> %q", tt.in, got, again)
		}
		if prev, ok := seen[got]; ok {
			t.Errorf("%q and %q both map to %q", prev, tt.in, got)
		}
		seen[got] = tt.in
	}
	if SanitizeID("a:b") == SanitizeID("a/b") {
		t.Error(`"a:b" and "a/b" map to the same id`)
	}
	if got := SanitizeID("sandbox:1/eth0"); !strings.HasPrefix(got, "sandbox-1-eth0-") {
		t.Errorf("SanitizeID keeps no readable prefix: %q", got)
	}
}

func TestArgs(t *testing.T) {
	tests := []struct {
		name string
		nics []vmmadapter.NIC
		want []string
	}{
		{"none", nil, nil},
		{
			"one",
			[]vmmadapter.NIC{{ID: "net0", Tap: "tap0", MAC: "02:00:00:00:00:01"}},
			[]string{
				"-netdev", "tap,id=netdev-net0,ifname=tap0,script=no,downscript=no,vhost=off",
				"-device", "virtio-net-pci,netdev=netdev-net0,id=net0,mac=02:00:00:00:00:01",
			},
		},
		{
			"multiqueue, MTU, queue size, then a second NIC",
			[]vmmadapter.NIC{
				{ID: "net0", Tap: "tap0", MAC: "02:00:00:00:00:01", MTU: 1450, QueuePairs: 2, QueueSize: 1024},
				{ID: "net1", Tap: "tap,1"},
			},
			[]string{
				"-netdev", "tap,id=netdev-net0,ifname=tap0,script=no,downscript=no,vhost=off,queues=2",
				"-device", "virtio-net-pci,netdev=netdev-net0,id=net0,mac=02:00:00:00:00:01,host_mtu=1450,mq=on,vectors=6,rx_queue_size=1024,tx_queue_size=256",
				"-netdev", "tap,id=netdev-net1,ifname=tap,,1,script=no,downscript=no,vhost=off",
				"-device", "virtio-net-pci,netdev=netdev-net1,id=net1",
			},
		},
		{
			"id sanitised like AddNIC",
			[]vmmadapter.NIC{{ID: "pod/eth0", Tap: "tap0"}},
			[]string{
				"-netdev", "tap,id=" + NetdevID(SanitizeID("pod/eth0")) + ",ifname=tap0,script=no,downscript=no,vhost=off",
				"-device", "virtio-net-pci,netdev=" + NetdevID(SanitizeID("pod/eth0")) + ",id=" + SanitizeID("pod/eth0"),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Args(tt.nics); !slices.Equal(got, tt.want) {
				t.Errorf("Args =\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}
