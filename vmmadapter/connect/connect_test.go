package connect_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/cloudhypervisor"
	"github.com/vmnic/vmnic/vmmadapter/connect"
	"github.com/vmnic/vmnic/vmmadapter/firecracker"
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
