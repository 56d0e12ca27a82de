package firecracker_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/openapi"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/firecracker"
)

var fastOpts = vmmadapter.Options{CallTimeout: 2 * time.Second}

func sim(t *testing.T, cfg vmmsim.FCConfig) *vmmsim.FC {
	t.Helper()
	s := vmmsim.NewFC(t, cfg)
	vmmsim.FailOnViolations(t, s, "Firecracker")
	return s
}

func adapter(t *testing.T, socket string, opts vmmadapter.Options) *firecracker.Adapter {
	t.Helper()
	a, err := firecracker.New(socket, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func TestIfaceID(t *testing.T) {
	valid := regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)
	tests := []struct {
		in        string
		unchanged bool
		prefix    string
	}{
		{"eth0", true, "eth0"},
		{"vmnic_1", true, "vmnic_1"},
		{"eth-0", false, "eth_0_"},
		{"a.b", false, "a_b_"},
		{"a-b", false, "a_b_"},
		{"", false, "_"},
		{"ümlaut", false, "__mlaut_"},
		{strings.Repeat("x", 64), true, strings.Repeat("x", 64)},
		{strings.Repeat("x", 65), false, strings.Repeat("x", 55) + "_"},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		got := firecracker.IfaceID(tt.in)
		if !valid.MatchString(got) {
			t.Errorf("IfaceID(%q) = %q is not a valid iface_id", tt.in, got)
		}
		if (got == tt.in) != tt.unchanged || !strings.HasPrefix(got, tt.prefix) {
			t.Errorf("IfaceID(%q) = %q, want prefix %q, unchanged %v", tt.in, got, tt.prefix, tt.unchanged)
		}
		if again := firecracker.IfaceID(tt.in); again != got {
			t.Errorf("IfaceID(%q) not deterministic: %q then %q", tt.in, got, again)
		}
		if firecracker.IfaceID(got) != got {
			t.Errorf("IfaceID(IfaceID(%q)) changed it again", tt.in)
		}
		if prev, dup := seen[got]; dup {
			t.Errorf("IfaceID(%q) = IfaceID(%q) = %q", tt.in, prev, got)
		}
		seen[got] = tt.in
	}
	if firecracker.IfaceID("a_b") == firecracker.IfaceID("a-b") {
		t.Error("a_b and a-b collide")
	}
}

func TestInfo(t *testing.T) {
	tests := []struct {
		name string
		cfg  vmmsim.FCConfig
		pci  vmmadapter.PCIMode
		want vmmadapter.Info
	}{
		{"1.12 not started", vmmsim.FCConfig{Version: "1.12.1"}, 0, vmmadapter.Info{Version: "1.12.1"}},
		{"1.15 running", vmmsim.FCConfig{Version: "1.15.0", State: vmmsim.FCRunning}, 0, vmmadapter.Info{Version: "1.15.0", Booted: true}},
		{"1.16 paused, pci unknown", vmmsim.FCConfig{Version: "1.16.1", State: vmmsim.FCPaused}, 0, vmmadapter.Info{Version: "1.16.1", Booted: true, HotAdd: true, HotRemove: true}},
		{"1.16 no pci", vmmsim.FCConfig{Version: "1.16.1", State: vmmsim.FCRunning}, vmmadapter.PCIDisabled, vmmadapter.Info{Version: "1.16.1", Booted: true}},
		{"1.17-dev pci", vmmsim.FCConfig{Version: "1.17.0-dev", PCI: true}, vmmadapter.PCIEnabled, vmmadapter.Info{Version: "1.17.0-dev", HotAdd: true, HotRemove: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sim(t, tt.cfg)
			got, err := adapter(t, s.Socket(), vmmadapter.Options{PCI: tt.pci}).Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			tt.want.Kind = vmmadapter.Firecracker
			if got != tt.want {
				t.Fatalf("Info = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAddNICBeforeBoot(t *testing.T) {
	nic := vmmadapter.NIC{ID: "eth0", Tap: "vmnic1", MAC: "02:00:0a:58:00:05", MTU: 1450}
	tests := []struct {
		version string
		body    string
	}{
		{"1.12.1", `{"iface_id":"eth0","host_dev_name":"vmnic1","guest_mac":"02:00:0a:58:00:05"}`},
		{"1.15.0", `{"iface_id":"eth0","host_dev_name":"vmnic1","guest_mac":"02:00:0a:58:00:05"}`},
		{"1.16.0", `{"iface_id":"eth0","host_dev_name":"vmnic1","guest_mac":"02:00:0a:58:00:05","mtu":1450}`},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			s := sim(t, vmmsim.FCConfig{Version: tt.version})
			att, err := adapter(t, s.Socket(), fastOpts).AddNIC(context.Background(), nic)
			if err != nil {
				t.Fatal(err)
			}
			note := ""
			if tt.version != "1.16.0" {
				note = "Firecracker v" + tt.version + " cannot advertise an MTU (the mtu field is new in v1.16.0): the guest will assume 1500, not 1450, unless it is set in the guest"
			}
			if att != (vmmadapter.Attachment{ID: "eth0", Note: note}) {
				t.Fatalf("Attachment = %+v, want note %q", att, note)
			}
			if n := s.CountCalls("PUT", "/network-interfaces/eth0"); n != 1 {
				t.Fatalf("PUT sent %d times", n)
			}
			for _, c := range s.Calls() {
				if c.Method == "PUT" && string(c.Body) != tt.body {
					t.Fatalf("body %s, want %s", c.Body, tt.body)
				}
			}
			got := s.Interfaces()
			if len(got) != 1 || got[0].HostDevName != "vmnic1" || got[0].GuestMAC != nic.MAC {
				t.Fatalf("interfaces = %+v", got)
			}
		})
	}
}

func TestAddNICSanitisedID(t *testing.T) {
	s := sim(t, vmmsim.FCConfig{Version: "1.16.1", PCI: true, State: vmmsim.FCRunning})
	a := adapter(t, s.Socket(), fastOpts)
	att, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "net-1", Tap: "tap1"})
	if err != nil {
		t.Fatal(err)
	}
	want := firecracker.IfaceID("net-1")
	if att.ID != want || !att.Hot || s.CountCalls("PUT", "/network-interfaces/"+want) != 1 {
		t.Fatalf("Attachment %+v, calls %+v", att, s.Calls())
	}
	if ids, err := a.NICs(context.Background()); err != nil || len(ids) != 1 || ids[0] != want {
		t.Fatalf("NICs = %v, %v", ids, err)
	}
	// Removing by the original id or by the id used both work.
	if err := a.RemoveNIC(vmmadapter.WithGuestAcked(context.Background()), "net-1"); err != nil {
		t.Fatal(err)
	}
	if s.CountCalls("DELETE", "/network-interfaces/"+want) != 1 || len(s.Interfaces()) != 0 {
		t.Fatalf("DELETE not sent: %+v", s.Calls())
	}
}

func TestAddNICAfterBoot(t *testing.T) {
	nic := vmmadapter.NIC{ID: "eth1", Tap: "tap1", MAC: "02:00:00:00:00:02", MTU: 1500}
	tests := []struct {
		name     string
		cfg      vmmsim.FCConfig
		pci      vmmadapter.PCIMode
		ok       bool
		puts     int    // PUTs that reach the VMM
		msg      string // for failures
		learnNot bool   // a second attempt sends nothing
	}{
		{"1.12", vmmsim.FCConfig{Version: "1.12.1"}, 0, false, 0, "this Firecracker (v1.12.1) cannot hot-plug NICs", false},
		{"1.15 even with pci", vmmsim.FCConfig{Version: "1.15.0", PCI: true}, vmmadapter.PCIEnabled, false, 0, "this Firecracker (v1.15.0) cannot hot-plug NICs: hot-plug needs Firecracker v1.16.0", false},
		{"1.16 without pci, unknown", vmmsim.FCConfig{Version: "1.16.0"}, vmmadapter.PCIUnknown, false, 1, "started without --enable-pci", true},
		{"1.16 without pci, known", vmmsim.FCConfig{Version: "1.16.0"}, vmmadapter.PCIDisabled, false, 0, "this Firecracker (v1.16.0) cannot hot-plug NICs: it was started without --enable-pci", false},
		{"1.16 with pci, unknown", vmmsim.FCConfig{Version: "1.16.1", PCI: true}, vmmadapter.PCIUnknown, true, 1, "", false},
		{"1.16 with pci, known", vmmsim.FCConfig{Version: "1.16.1", PCI: true}, vmmadapter.PCIEnabled, true, 1, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.State = vmmsim.FCRunning
			s := sim(t, tt.cfg)
			a := adapter(t, s.Socket(), vmmadapter.Options{PCI: tt.pci})
			att, err := a.AddNIC(context.Background(), nic)
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				if att != (vmmadapter.Attachment{ID: "eth1", Hot: true, Note: firecracker.NoteRescan}) {
					t.Fatalf("Attachment = %+v", att)
				}
				if got := s.Interfaces(); len(got) != 1 || got[0].MTU != 1500 || !got[0].Hot {
					t.Fatalf("interfaces = %+v", got)
				}
			} else {
				if !errors.Is(err, vmmadapter.ErrHotplugUnsupported) || !strings.Contains(err.Error(), tt.msg) {
					t.Fatalf("err = %v, want ErrHotplugUnsupported with %q", err, tt.msg)
				}
				if !strings.Contains(err.Error(), "stays pending") || !strings.Contains(err.Error(), `"eth1"`) {
					t.Errorf("error does not say what happens to the NIC: %v", err)
				}
				if len(s.Interfaces()) != 0 {
					t.Fatal("interface added anyway")
				}
			}
			if n := s.CountCalls("PUT", "/network-interfaces/eth1"); n != tt.puts {
				t.Fatalf("%d PUTs reached the VMM, want %d", n, tt.puts)
			}
			if tt.learnNot {
				if _, err := a.AddNIC(context.Background(), nic); !errors.Is(err, vmmadapter.ErrHotplugUnsupported) {
					t.Fatalf("second AddNIC = %v", err)
				}
				if n := s.CountCalls("PUT", "/network-interfaces/eth1"); n != tt.puts {
					t.Fatalf("the adapter did not remember the missing PCI: %d PUTs", n)
				}
				if info, _ := a.Info(context.Background()); info.HotAdd {
					t.Error("Info.HotAdd still true after the VMM said PCI is off")
				}
			}
		})
	}
}

func TestAddNICErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  vmmsim.FCConfig
		prep func(s *vmmsim.FC)
		nic  vmmadapter.NIC
		is   error
		msgs []string
	}{
		{"id in use after boot", vmmsim.FCConfig{PCI: true, State: vmmsim.FCRunning},
			func(s *vmmsim.FC) { putRaw(s, "eth0", "tapx") }, vmmadapter.NIC{ID: "eth0", Tap: "tap1"},
			vmmadapter.ErrDeviceIDInUse, []string{"Device ID in use", "iface_id eth0"}},
		{"tap busy", vmmsim.FCConfig{}, func(s *vmmsim.FC) { s.HoldTap("tap1") }, vmmadapter.NIC{ID: "eth0", Tap: "tap1"},
			vmmadapter.ErrTapBusy, []string{"TAP tap1", "Resource busy (os error 16)", "answered 400"}},
		{"mac in use", vmmsim.FCConfig{}, nil, vmmadapter.NIC{ID: "eth9", Tap: "tap9", MAC: "02:00:00:00:00:01"},
			nil, []string{"The MAC address is already in use: 02:00:00:00:00:01", `add NIC "eth9"`}},
		{"multi-queue", vmmsim.FCConfig{}, nil, vmmadapter.NIC{ID: "eth0", Tap: "tap1", QueuePairs: 2},
			nil, []string{"single-queue"}},
		{"no tap", vmmsim.FCConfig{}, nil, vmmadapter.NIC{ID: "eth0"}, nil, []string{"without a TAP"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sim(t, tt.cfg)
			if tt.prep != nil {
				tt.prep(s)
			}
			a := adapter(t, s.Socket(), fastOpts)
			if tt.name == "mac in use" {
				if _, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth0", Tap: "tap0", MAC: "02:00:00:00:00:01"}); err != nil {
					t.Fatal(err)
				}
			}
			_, err := a.AddNIC(context.Background(), tt.nic)
			if err == nil {
				t.Fatal("AddNIC succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			for _, m := range tt.msgs {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q lacks %q", err, m)
				}
			}
		})
	}
}

// putRaw adds an interface through a second adapter (as another client would).
func putRaw(s *vmmsim.FC, id, tap string) {
	a, _ := firecracker.New(s.Socket(), vmmadapter.Options{})
	if _, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: id, Tap: tap}); err != nil {
		panic(err)
	}
}

func TestRemoveNIC(t *testing.T) {
	tests := []struct {
		name    string
		cfg     vmmsim.FCConfig
		pci     vmmadapter.PCIMode
		add     bool
		is      error
		msg     string
		deletes int
		left    int
	}{
		{"1.16 pci", vmmsim.FCConfig{Version: "1.16.1", PCI: true, State: vmmsim.FCRunning}, 0, true, nil, "", 1, 0},
		{"absent id", vmmsim.FCConfig{Version: "1.16.1", PCI: true, State: vmmsim.FCRunning}, 0, false, nil, "", 0, 0},
		{"absent id on 1.12", vmmsim.FCConfig{Version: "1.12.1", State: vmmsim.FCRunning}, 0, false, nil, "", 0, 0},
		{"before boot", vmmsim.FCConfig{Version: "1.16.1", PCI: true}, 0, true, vmmadapter.ErrHotplugUnsupported, "cannot remove a network interface before boot", 0, 1},
		{"1.15 running", vmmsim.FCConfig{Version: "1.15.0", State: vmmsim.FCRunning}, 0, true, vmmadapter.ErrHotplugUnsupported, "this Firecracker (v1.15.0) cannot hot-plug NICs", 0, 1},
		{"1.16 no pci, unknown", vmmsim.FCConfig{Version: "1.16.1", State: vmmsim.FCRunning}, 0, true, vmmadapter.ErrHotplugUnsupported, "PCI is not enabled", 1, 1},
		{"1.16 no pci, known", vmmsim.FCConfig{Version: "1.16.1", State: vmmsim.FCRunning}, vmmadapter.PCIDisabled, true, vmmadapter.ErrHotplugUnsupported, "without --enable-pci", 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			running := tt.cfg.State
			tt.cfg.State = vmmsim.FCNotStarted
			s := sim(t, tt.cfg)
			a := adapter(t, s.Socket(), vmmadapter.Options{PCI: tt.pci})
			if tt.add {
				if _, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth0", Tap: "tap0"}); err != nil {
					t.Fatal(err)
				}
			}
			if running == vmmsim.FCRunning {
				s.Start()
			}
			err := a.RemoveNIC(vmmadapter.WithGuestAcked(context.Background()), "eth0")
			if tt.is == nil && err != nil {
				t.Fatal(err)
			}
			if tt.is != nil && (!errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.msg)) {
				t.Fatalf("err = %v, want %v with %q", err, tt.is, tt.msg)
			}
			if n := s.CountCalls("DELETE", "/network-interfaces/eth0"); n != tt.deletes {
				t.Errorf("%d DELETEs, want %d", n, tt.deletes)
			}
			if n := len(s.Interfaces()); n != tt.left {
				t.Errorf("%d interfaces left, want %d", n, tt.left)
			}
		})
	}
}

func TestTransportFailures(t *testing.T) {
	opts := vmmadapter.Options{CallTimeout: 150 * time.Millisecond}
	tests := []struct {
		name   string
		fault  vmmsim.Fault
		is     error
		msgs   []string
		closed bool
	}{
		{name: "never answers", fault: vmmsim.Fault{Mode: vmmsim.FaultNeverAnswer, Method: "PUT"}, is: context.DeadlineExceeded,
			msgs: []string{"no answer within 150ms", "PUT /network-interfaces/eth0", "fc.sock"}},
		{name: "garbage", fault: vmmsim.Fault{Mode: vmmsim.FaultGarbage}, msgs: []string{"not an HTTP response", "GET /"}},
		{name: "closes mid-call", fault: vmmsim.Fault{Mode: vmmsim.FaultCloseMidCall}, msgs: []string{"closed the connection"}},
		{name: "body not JSON", fault: vmmsim.Fault{Mode: vmmsim.FaultBadBody}, msgs: []string{"not valid InstanceInfo", "not json"}},
		{name: "VMM gone", closed: true, is: vmmadapter.ErrUnavailable, msgs: []string{"cannot connect", "fc.sock"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := vmmsim.NewFC(t, vmmsim.FCConfig{})
			if tt.closed {
				s.Close()
			}
			s.SetFault(tt.fault)
			a := adapter(t, s.Socket(), opts)
			_, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth0", Tap: "tap0"})
			if err == nil {
				t.Fatal("AddNIC succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			for _, m := range tt.msgs {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q lacks %q", err, m)
				}
			}
		})
	}
	t.Run("missing socket", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "none.sock")
		a := adapter(t, sock, opts)
		for i, err := range []error{
			func() error { _, err := a.Info(context.Background()); return err }(),
			a.RemoveNIC(context.Background(), "eth0"),
			func() error { _, err := a.NICs(context.Background()); return err }(),
		} {
			if !errors.Is(err, vmmadapter.ErrUnavailable) {
				t.Errorf("call %d: %v, want ErrUnavailable", i, err)
			}
		}
	})
}

func TestNetworkInterfacesJSON(t *testing.T) {
	nics := []vmmadapter.NIC{
		{ID: "eth0", Tap: "vmnic0", MAC: "02:00:0a:58:00:05", MTU: 1450},
		{ID: "net-1", Tap: "vmnic1"},
	}
	tests := []struct {
		version string
		mtu     bool
		err     string
	}{
		{"1.12.1", false, ""},
		{"1.15.0", false, ""},
		{"1.16.0", true, ""},
		{"v1.17.0-dev", true, ""},
		{"", false, ""},
		{"banana", false, "cannot read version"},
	}
	spec, specErr := openapi.LoadNamed(openapi.FirecrackerSpec)
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			b, err := firecracker.NetworkInterfacesJSON(nics, tt.version)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || got[0]["iface_id"] != "eth0" || got[0]["host_dev_name"] != "vmnic0" ||
				got[0]["guest_mac"] != "02:00:0a:58:00:05" || got[1]["iface_id"] != firecracker.IfaceID("net-1") {
				t.Fatalf("JSON = %s", b)
			}
			if _, has := got[0]["mtu"]; has != tt.mtu {
				t.Fatalf("mtu present = %v, want %v: %s", has, tt.mtu, b)
			}
			if _, has := got[1]["guest_mac"]; has {
				t.Fatalf("empty guest_mac sent: %s", b)
			}
			if specErr != nil {
				return
			}
			for i := range got {
				one, _ := json.Marshal(got[i])
				if v := spec.ValidateSchema("NetworkInterface", one); len(v) > 0 {
					t.Errorf("entry %d violates NetworkInterface: %v", i, v)
				}
			}
		})
	}
	if _, err := firecracker.NetworkInterfacesJSON([]vmmadapter.NIC{{ID: "a-b", Tap: "t1"}, {ID: "a-b", Tap: "t2"}}, "1.16.0"); err == nil {
		t.Error("duplicate iface_ids accepted")
	}
}
