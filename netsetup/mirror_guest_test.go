package netsetup

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// TestMirrorCarriesGuestConfig: the live copy in the runtime dir holds the
// rendered guest config next to the record, so a NIC hot-added after boot
// shows up there with its addresses, gateways, routes and MTU; the record in
// the state dir stays the record alone.
func TestMirrorCarriesGuestConfig(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	rt := filepath.Join(t.TempDir(), "rt")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	rec := New("gc-mirror")
	rec.RuntimeDir = rt
	rec.PutNIC(NIC{IfName: "eth0", Tap: "tapeth0", MAC: "02:00:00:00:01:01", MTU: 1500, State: NICAttached,
		IPs: []string{"10.5.0.2/24", "fd05::2/64"}, Gateway: "10.5.0.1", Gateways: []string{"10.5.0.1", "fd05::1"},
		Routes: []Route{{Dst: "0.0.0.0/0"}, {Dst: "::/0"}}})
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	read := func() *GuestConfig {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(rt, MirrorDir, MirrorFile))
		if err != nil {
			t.Fatal(err)
		}
		if m, err := Decode(data, ""); err != nil || m.SandboxID != "gc-mirror" {
			t.Fatalf("the copy must still load as a record: %v %+v", err, m)
		}
		gc, err := ReadMirrorGuestConfig(data)
		if err != nil {
			t.Fatal(err)
		}
		return gc
	}
	gc := read()
	if len(gc.Interfaces) != 1 || gc.Interfaces[0].Gateway6 != "fd05::1" || len(gc.Interfaces[0].Routes) != 2 ||
		gc.Interfaces[0].Routes[1].Via != "fd05::1" {
		t.Fatalf("guest config in the copy: %+v", gc)
	}
	// Hot-plug: a NIC added to the running sandbox.
	if _, err := s.Update(ctx, "gc-mirror", func(r *NetSetup) error {
		r.PutNIC(NIC{IfName: "net1", Tap: "tapnet1", MAC: "02:00:00:00:01:02", MTU: 1400, State: NICAttached,
			IPs: []string{"10.6.0.2/24"}, Gateway: "10.6.0.1", Routes: []Route{{Dst: "10.60.0.0/16", MTU: 9000}}})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	gc = read()
	if len(gc.Interfaces) != 2 || gc.Interfaces[1].Name != "net1" || gc.Interfaces[1].MAC != "02:00:00:00:01:02" ||
		gc.Interfaces[1].Routes[0].Via != "10.6.0.1" || gc.Interfaces[1].Routes[0].MTU != 1400 {
		t.Fatalf("hot-added NIC in the copy: %+v", gc.Interfaces)
	}
	stored, err := os.ReadFile(s.Path("gc-mirror"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ReadMirrorGuestConfig(stored); err == nil {
		t.Errorf("the record in the state dir must not carry %s", MirrorGuestConfigKey)
	}
}
