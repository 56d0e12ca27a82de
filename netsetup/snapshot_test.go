package netsetup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func snapRecord() *NetSetup {
	s := New("sb-snap")
	s.VMM = &VMM{Kind: "qemu", APISocket: "/run/x.sock", Booted: true, Version: "7.2.0"}
	s.PutNIC(NIC{ID: "eth0", Network: "net-a", IfName: "eth0", Tap: "tapeth0", MAC: "02:00:0a:00:00:05", MTU: 1400,
		NumQueues: 2, QueueSize: 256, IPs: []string{"10.0.0.5/24"}, Gateway: "10.0.0.1",
		Routes: []Route{{Dst: "0.0.0.0/0"}}, State: NICAttached, HostReady: true, VMMDeviceID: "eth0", BDF: "0000:00:04.0"})
	s.PutNIC(NIC{ID: "net1", Network: "net-b", IfName: "net1", Tap: "tapnet1", MAC: "02:00:0a:00:01:05",
		State: NICQuiesced, ResumeState: NICPending, HostReady: true})
	return s
}

func TestSnapshotManifest(t *testing.T) {
	m, err := Snapshot(snapRecord())
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind != ManifestKind || m.Schema != ManifestSchema || m.SandboxID != "sb-snap" || m.VMM.Kind != "qemu" || len(m.NICs) != 2 {
		t.Fatalf("manifest %+v", m)
	}
	e := m.NICs[0]
	if e.Network != "net-a" || e.IfName != "eth0" || e.MAC != "02:00:0a:00:00:05" || e.MTU != 1400 || e.NumQueues != 2 ||
		e.VMMDeviceID != "eth0" || e.Tap != "tapeth0" || len(e.Gateways) != 1 || e.Gateways[0] != "10.0.0.1" || e.BDF != "0000:00:04.0" {
		t.Errorf("NIC eth0 %+v", e)
	}
	if n := m.NICs[1]; n.VMMDeviceID != "net1" {
		t.Errorf("a NIC never in the VMM gets its vmnic id as device id (vmm-args): %+v", n)
	}
	path := filepath.Join(t.TempDir(), "snap.json")
	if err := WriteManifest(path, m); err != nil {
		t.Fatal(err)
	}
	back, err := ReadManifest(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.NICs[0].MAC != e.MAC || back.NICs[1].Tap != "tapnet1" {
		t.Errorf("round trip: %+v", back)
	}
}

func TestSnapshotRefused(t *testing.T) {
	for name, mod := range map[string]func(*NetSetup){
		"no NICs":   func(s *NetSetup) { s.NetworkConfigs = nil },
		"invalid":   func(s *NetSetup) { s.Phase = PhaseInvalid },
		"not ready": func(s *NetSetup) { s.NetworkConfigs[0].HostReady = false },
		"detaching": func(s *NetSetup) { s.NetworkConfigs[0].State = NICDetaching },
		"no MAC":    func(s *NetSetup) { s.NetworkConfigs[0].MAC = "" },
		"multicast": func(s *NetSetup) { s.NetworkConfigs[0].MAC = "01:00:5e:00:00:01" },
		"tearing":   func(s *NetSetup) { s.Phase = PhaseTearingDown },
		"no TAP":    func(s *NetSetup) { s.NetworkConfigs[1].Tap = "" },
		"twice":     func(s *NetSetup) { s.NetworkConfigs[1].IfName = "eth0" },
	} {
		s := snapRecord()
		mod(s)
		if _, err := Snapshot(s); err == nil {
			t.Errorf("%s: snapshot succeeded", name)
		}
	}
}

func TestParseManifestVersions(t *testing.T) {
	for _, tc := range []struct {
		name, data, want string
	}{
		{"newer", `{"kind":"vmnic-snapshot","schema":9,"nics":[],"later_field":1}`, "newer than this vmnic reads"},
		{"unknown field", `{"kind":"vmnic-snapshot","schema":1,"sandbox_id":"a","nics":[{"ifname":"eth0","mac":"02:00:00:00:00:01","tap":"t","vmm_device_id":"d"}],"x":1}`, "unknown field"},
		{"a record", `{"schema":2,"sandbox_id":"a","phase":"prepared","network_configs":[]}`, "not a vmnic snapshot manifest"},
		{"schema 0", `{"kind":"vmnic-snapshot","schema":0,"nics":[]}`, "not valid"},
	} {
		_, err := ParseManifest([]byte(tc.data))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := ReadManifest(filepath.Join(t.TempDir(), "none")); err == nil || !os.IsNotExist(errorsUnwrapAll(err)) {
		t.Errorf("missing file: %v", err)
	}
}

func errorsUnwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok || u.Unwrap() == nil {
			return err
		}
		err = u.Unwrap()
	}
}
