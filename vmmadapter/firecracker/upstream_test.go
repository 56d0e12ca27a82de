package firecracker_test

// Tests of behaviour the real Firecracker has and an earlier adapter (and
// simulator) did not model (issue 17, items 6–8; issue 10 item 7).

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/firecracker"
)

// TestHotplugGuestMustAct: Firecracker tells the guest nothing. A hot-add
// is recorded with the rescan note (and the guest does not see the NIC
// until it rescans); a removal without the guest's release is refused
// before any DELETE, so no device is torn down under the guest; with the
// release acknowledged the DELETE goes out and nothing is surprise-removed.
func TestHotplugGuestMustAct(t *testing.T) {
	s := sim(t, vmmsim.FCConfig{Version: "1.16.1", PCI: true, State: vmmsim.FCRunning})
	a := adapter(t, s.Socket(), fastOpts)
	att, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth1", Tap: "tap1"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(att.Note, "the guest must rescan its PCI bus") {
		t.Fatalf("hot-add note = %q", att.Note)
	}
	if got := s.Interfaces(); len(got) != 1 || got[0].GuestBound {
		t.Fatalf("the guest saw the NIC without a rescan: %+v", got)
	}
	s.GuestRescan()

	err = a.RemoveNIC(context.Background(), "eth1")
	if !errors.Is(err, vmmadapter.ErrGuestMustAct) || !strings.Contains(err.Error(), "/sys/bus/pci/devices/<BDF>/remove") ||
		!strings.Contains(err.Error(), "vmnicctl guest-acked") {
		t.Fatalf("RemoveNIC without the guest's release = %v, want ErrGuestMustAct with instructions", err)
	}
	if n := s.CountCalls("DELETE", "/network-interfaces/eth1"); n != 0 {
		t.Fatalf("%d DELETEs sent under a guest that still has the device", n)
	}

	s.GuestRemove("eth1")
	if err := a.RemoveNIC(vmmadapter.WithGuestAcked(context.Background()), "eth1"); err != nil {
		t.Fatal(err)
	}
	if len(s.Interfaces()) != 0 || len(s.SurpriseRemovals()) != 0 {
		t.Fatalf("interfaces %+v, surprise removals %v", s.Interfaces(), s.SurpriseRemovals())
	}
}

// TestSimSurpriseRemoval: the simulator records a DELETE of a device the
// guest still has.
func TestSimSurpriseRemoval(t *testing.T) {
	s := sim(t, vmmsim.FCConfig{Version: "1.16.1", PCI: true})
	putRaw(s, "eth0", "tap0")
	s.Start()
	a := adapter(t, s.Socket(), fastOpts)
	if err := a.RemoveNIC(vmmadapter.WithGuestAcked(context.Background()), "eth0"); err != nil {
		t.Fatal(err)
	}
	if got := s.SurpriseRemovals(); len(got) != 1 || got[0] != "eth0" {
		t.Fatalf("SurpriseRemovals = %v, want [eth0] (acked although the guest had not let go)", got)
	}
}

// TestReplaceFailureRestores: before boot a PUT for an existing iface_id
// replaces it, and Firecracker drops the old device before opening the new
// TAP. A replacement that fails on the TAP leaves no interface in the VMM;
// the adapter puts the previous one back.
func TestReplaceFailureRestores(t *testing.T) {
	s := sim(t, vmmsim.FCConfig{Version: "1.16.1"})
	a := adapter(t, s.Socket(), fastOpts)
	old := vmmadapter.NIC{ID: "eth0", Tap: "tapold", MAC: "02:00:00:00:00:01", MTU: 1400}
	if _, err := a.AddNIC(context.Background(), old); err != nil {
		t.Fatal(err)
	}
	s.HoldTap("tapbusy")
	_, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth0", Tap: "tapbusy", MAC: "02:00:00:00:00:02"})
	if !errors.Is(err, vmmadapter.ErrTapBusy) || !strings.Contains(err.Error(), "previous interface eth0 was put back") {
		t.Fatalf("AddNIC = %v, want ErrTapBusy and the previous interface put back", err)
	}
	got := s.Interfaces()
	if len(got) != 1 || got[0].HostDevName != "tapold" || got[0].GuestMAC != old.MAC || got[0].MTU != 1400 {
		t.Fatalf("interfaces after the failed replacement = %+v, want the previous one", got)
	}
}

// TestMTUGatedOnRelease: mtu is sent from the v1.16.0 release on; a
// "1.16.0-dev" build gets none, and a NIC whose MTU is not 1500 is then
// attached with a note that the guest assumes 1500.
func TestMTUGatedOnRelease(t *testing.T) {
	for _, tt := range []struct {
		version string
		mtu     int
		sent    bool
		note    bool
	}{
		{"1.16.0-dev", 9000, false, true},
		{"1.16.0-dev", 1500, false, false},
		{"1.15.1", 1400, false, true},
		{"1.16.0", 9000, true, false},
		{"1.17.0-dev", 9000, true, false},
	} {
		t.Run(tt.version, func(t *testing.T) {
			s := sim(t, vmmsim.FCConfig{Version: tt.version})
			att, err := adapter(t, s.Socket(), fastOpts).AddNIC(context.Background(), vmmadapter.NIC{ID: "eth0", Tap: "tap0", MTU: tt.mtu})
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Interfaces(); len(got) != 1 || (got[0].MTU == tt.mtu) != tt.sent {
				t.Fatalf("interfaces %+v, mtu sent %v", got, tt.sent)
			}
			if hasNote := strings.Contains(att.Note, "the guest will assume 1500"); hasNote != tt.note {
				t.Fatalf("note %q, want one: %v", att.Note, tt.note)
			}
		})
	}
	out, err := firecracker.NetworkInterfacesJSON([]vmmadapter.NIC{{ID: "eth0", Tap: "tap0", MTU: 9000}}, "1.16.0-dev")
	if err != nil || bytes.Contains(out, []byte("mtu")) {
		t.Fatalf("NetworkInterfacesJSON for 1.16.0-dev = %s, %v; want no mtu", out, err)
	}
}

// TestLogsToConfiguredLogger: the adapter logs through Options.Logger.
func TestLogsToConfiguredLogger(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := sim(t, vmmsim.FCConfig{Version: "1.15.1"})
	opts := fastOpts
	opts.Logger = log
	if _, err := adapter(t, s.Socket(), opts).AddNIC(context.Background(), vmmadapter.NIC{ID: "eth0", Tap: "tap0", MTU: 9000}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "the guest will assume 1500") || !strings.Contains(buf.String(), "nic=eth0") {
		t.Fatalf("configured logger got %q", buf.String())
	}
}

// TestValidateNICAtAdd: what Firecracker cannot take is refused before any
// request, with the field named.
func TestValidateNICAtAdd(t *testing.T) {
	s := sim(t, vmmsim.FCConfig{Version: "1.16.1"})
	a := adapter(t, s.Socket(), fastOpts)
	for _, n := range []vmmadapter.NIC{
		{ID: "eth0", Tap: "tap0", QueueSize: 1024},
		{ID: "eth0", Tap: "tap0", QueuePairs: 2},
		{ID: "eth0", Tap: "tap0", MTU: 60},
	} {
		if _, err := a.AddNIC(context.Background(), n); err == nil || !strings.Contains(err.Error(), "firecracker: NIC \"eth0\"") {
			t.Errorf("AddNIC(%+v) = %v, want a clear refusal", n, err)
		}
	}
	if n := s.CountCalls("PUT", "/network-interfaces/eth0"); n != 0 {
		t.Fatalf("%d PUTs sent for invalid NICs", n)
	}
}
