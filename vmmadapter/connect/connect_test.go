package connect_test

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/cloudhypervisor"
	"github.com/vmnic/vmnic/vmmadapter/connect"
	"github.com/vmnic/vmnic/vmmadapter/firecracker"
	"github.com/vmnic/vmnic/vmmadapter/qemu"
)

func TestOpenDispatches(t *testing.T) {
	opts := vmmadapter.Options{CallTimeout: 2 * time.Second}
	ch := vmmsim.NewCH(t, vmmsim.CHConfig{})
	fc := vmmsim.NewFC(t, vmmsim.FCConfig{})
	tests := []struct {
		kind   vmmadapter.Kind
		socket string
		check  func(vmmadapter.Adapter) bool
	}{
		{vmmadapter.CloudHypervisor, ch.Socket(), func(a vmmadapter.Adapter) bool { _, ok := a.(*cloudhypervisor.Adapter); return ok }},
		{vmmadapter.Firecracker, fc.Socket(), func(a vmmadapter.Adapter) bool { _, ok := a.(*firecracker.Adapter); return ok }},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			a, err := connect.Open(tt.kind, tt.socket, opts)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			if !tt.check(a) {
				t.Fatalf("Open(%s) returned %T", tt.kind, a)
			}
			info, err := a.Info(context.Background())
			if err != nil || info.Kind != tt.kind {
				t.Fatalf("Info = %+v, %v", info, err)
			}
		})
	}
}

func TestOpenQEMUReachesTheQEMUAdapter(t *testing.T) {
	// qemu.New connects at once: a missing QMP socket is ErrUnavailable,
	// which proves the dispatch (an unknown kind would say so instead).
	_, err := connect.Open(vmmadapter.QEMU, filepath.Join(t.TempDir(), "qmp.sock"), vmmadapter.Options{CallTimeout: time.Second})
	if !errors.Is(err, vmmadapter.ErrUnavailable) {
		t.Fatalf("Open(qemu, missing socket) = %v, want ErrUnavailable", err)
	}
}

func TestOpenErrors(t *testing.T) {
	if a, err := connect.Open("xen", "/x.sock", vmmadapter.Options{}); err == nil || a != nil || !strings.Contains(err.Error(), "cloud-hypervisor, firecracker, qemu") {
		t.Fatalf("unknown kind: %v, %v", a, err)
	}
	if a, err := connect.Open(vmmadapter.Firecracker, "", vmmadapter.Options{}); err == nil || a != nil {
		t.Fatalf("empty socket: %v, %v", a, err)
	}
}

func TestParseKind(t *testing.T) {
	for in, want := range map[string]vmmadapter.Kind{
		"cloud-hypervisor": vmmadapter.CloudHypervisor, "CH": vmmadapter.CloudHypervisor, "clh": vmmadapter.CloudHypervisor,
		"firecracker": vmmadapter.Firecracker, "fc": vmmadapter.Firecracker, " qemu ": vmmadapter.QEMU,
	} {
		if got, err := connect.ParseKind(in); err != nil || got != want {
			t.Errorf("ParseKind(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := connect.ParseKind("kvmtool"); err == nil {
		t.Error("ParseKind(kvmtool) succeeded")
	}
}

func TestLaunchNICs(t *testing.T) {
	nics := []vmmadapter.NIC{
		{ID: "net0", Tap: "tap0", MAC: "02:00:00:00:00:01", MTU: 1400},
		{ID: "1:x", Tap: "tap1", MAC: "02:00:00:00:00:02"},
	}
	fcJSON, err := firecracker.NetworkInterfacesJSON(nics, "1.16.1")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		kind       vmmadapter.Kind
		wantArgs   []string
		wantConfig string
	}{
		{kind: vmmadapter.CloudHypervisor, wantArgs: cloudhypervisor.NetArgs(nics)},
		{kind: vmmadapter.QEMU, wantArgs: qemu.Args(nics)},
		{kind: vmmadapter.Firecracker, wantConfig: string(fcJSON)},
	}
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			got, err := connect.LaunchNICs(tt.kind, nics, connect.LaunchOptions{Version: "1.16.1"})
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Args)+len(got.Config) == 0 || !slices.Equal(got.Args, tt.wantArgs) || string(got.Config) != tt.wantConfig {
				t.Fatalf("LaunchNICs(%s) = %q / %s, want %q / %s", tt.kind, got.Args, got.Config, tt.wantArgs, tt.wantConfig)
			}
			// The arguments name each device as DeviceIDs does, so the
			// engine finds the cold-plugged NICs later.
			text := strings.Join(got.Args, " ") + string(got.Config)
			for _, n := range nics {
				ids := connect.DeviceIDs(n.ID)
				if !slices.ContainsFunc(ids, func(id string) bool {
					return strings.Contains(text, "id="+id) || strings.Contains(text, `"iface_id": "`+id+`"`)
				}) {
					t.Errorf("%s launch arguments %s name NIC %q by none of %q", tt.kind, text, n.ID, ids)
				}
			}
		})
	}
	if got, err := connect.LaunchNICs(vmmadapter.Firecracker, nics, connect.LaunchOptions{}); err != nil || strings.Contains(string(got.Config), "mtu") {
		t.Errorf("Firecracker without a version: %s, %v; want no mtu", got.Config, err)
	}
	if got, err := connect.LaunchNICs(vmmadapter.CloudHypervisor, nil, connect.LaunchOptions{}); err != nil || got.Args != nil || got.Config != nil {
		t.Errorf("no NICs: %+v, %v; want nothing", got, err)
	}
	if _, err := connect.LaunchNICs(vmmadapter.Firecracker, nics, connect.LaunchOptions{Version: "one"}); err == nil || !strings.Contains(err.Error(), `"one"`) {
		t.Errorf("bad Firecracker version: %v", err)
	}
	if _, err := connect.LaunchNICs("xen", nics, connect.LaunchOptions{}); err == nil || !strings.Contains(err.Error(), "cloud-hypervisor, firecracker, qemu") {
		t.Errorf("unknown kind: %v", err)
	}
}

func TestDeviceIDs(t *testing.T) {
	tests := []struct {
		id   string
		want []string
	}{
		{"net0", []string{"net0"}},                                                   // valid everywhere
		{"a-b", []string{"a-b", firecracker.IfaceID("a-b")}},                         // QEMU takes it, Firecracker does not
		{"a_b", []string{"a_b"}},                                                     // both take it
		{"1:x", []string{"1:x", firecracker.IfaceID("1:x"), qemu.SanitizeID("1:x")}}, // neither
	}
	for _, tt := range tests {
		got := connect.DeviceIDs(tt.id)
		if !slices.Equal(got, tt.want) {
			t.Errorf("DeviceIDs(%q) = %q, want %q", tt.id, got, tt.want)
		}
	}
	if a, b := firecracker.IfaceID("1:x"), qemu.SanitizeID("1:x"); a == "1:x" || b == "1:x" || a == b {
		t.Fatalf("test ids do not exercise sanitising: %q %q", a, b)
	}
}

func TestEveryKindIsWired(t *testing.T) {
	for _, k := range vmmadapter.Kinds {
		if _, err := connect.LaunchNICs(k, nil, connect.LaunchOptions{}); err != nil {
			t.Errorf("LaunchNICs(%s): %v", k, err)
		}
		// An unreachable socket, not an unknown kind.
		_, err := connect.Open(k, filepath.Join(t.TempDir(), "none.sock"), vmmadapter.Options{CallTimeout: time.Second})
		if err != nil && strings.Contains(err.Error(), "unknown VMM kind") {
			t.Errorf("Open(%s): %v", k, err)
		}
	}
}
