package vmmsim

import (
	"strings"
	"testing"
)

// TestFCReplaceDropsOld: NetBuilder::build (src/vmm/src/vmm_config/net.rs)
// checks MAC conflicts first (a failure keeps the old interface), then drops
// the old device and opens the new TAP (a failure leaves none).
func TestFCReplaceDropsOld(t *testing.T) {
	s := NewFC(t, FCConfig{Version: "1.16.1"})
	put := func(id, body string, status int, want string) {
		t.Helper()
		st, b := mustRaw(t, s.Socket(), "PUT", "/network-interfaces/"+id, body)
		if st != status || !strings.Contains(b, want) {
			t.Fatalf("PUT %s %s: %d %s, want %d %q", id, body, st, b, status, want)
		}
	}
	put("eth0", `{"iface_id":"eth0","host_dev_name":"tapold","guest_mac":"02:00:00:00:00:01"}`, 204, "")
	put("eth1", `{"iface_id":"eth1","host_dev_name":"tapother","guest_mac":"02:00:00:00:00:02"}`, 204, "")
	put("eth0", `{"iface_id":"eth0","host_dev_name":"tapnew","guest_mac":"02:00:00:00:00:02"}`, 400, "MAC address is already in use")
	if got := s.Interfaces(); len(got) != 2 {
		t.Fatalf("a MAC conflict dropped an interface: %+v", got)
	}
	s.HoldTap("tapbusy")
	put("eth0", `{"iface_id":"eth0","host_dev_name":"tapbusy"}`, 400, "Resource busy (os error 16)")
	if got := s.Interfaces(); len(got) != 1 || got[0].IfaceID != "eth1" {
		t.Fatalf("after a failed replacement: %+v, want only eth1", got)
	}
}

// TestFCGuestView: cold interfaces are on the guest's bus from boot; a
// hot-added one only after a rescan; a DELETE of a bound device is recorded
// as a surprise removal.
func TestFCGuestView(t *testing.T) {
	s := NewFC(t, FCConfig{Version: "1.16.1", PCI: true})
	mustRaw(t, s.Socket(), "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)
	mustRaw(t, s.Socket(), "PUT", "/actions", `{"action_type":"InstanceStart"}`)
	mustRaw(t, s.Socket(), "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1"}`)
	got := s.Interfaces()
	if len(got) != 2 || !got[0].GuestBound || got[1].GuestBound {
		t.Fatalf("guest view = %+v, want eth0 bound, eth1 not (no rescan yet)", got)
	}
	s.GuestRescan()
	s.GuestRemove("eth1")
	mustRaw(t, s.Socket(), "DELETE", "/network-interfaces/eth1", "")
	mustRaw(t, s.Socket(), "DELETE", "/network-interfaces/eth0", "")
	if sr := s.SurpriseRemovals(); len(sr) != 1 || sr[0] != "eth0" {
		t.Fatalf("SurpriseRemovals = %v, want [eth0]", sr)
	}
}

// TestFCMTUField: mtu is a known field from the v1.16.0 release; a
// 1.16.0-dev build is simulated as one from before commit e865b9c5f.
func TestFCMTUField(t *testing.T) {
	for v, want := range map[string]int{"1.15.1": 400, "1.16.0-dev": 400, "1.16.0": 204, "1.17.0-dev": 204} {
		s := NewFC(t, FCConfig{Version: v})
		if st, b := mustRaw(t, s.Socket(), "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","mtu":1500}`); st != want {
			t.Errorf("%s: PUT with mtu: %d %s, want %d", v, st, b, want)
		}
	}
}
