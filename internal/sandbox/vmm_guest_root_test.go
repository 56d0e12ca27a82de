package sandbox

// Root tests of how the engine carries the VMMs' hot-plug rules (issue 17):
// Firecracker's guest steps, a paused Cloud Hypervisor, per-VMM queue
// sizes at ADD.

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

func attachFC(t *testing.T, e *env, id string) *vmmsim.FC {
	t.Helper()
	sim := vmmsim.NewFC(t, vmmsim.FCConfig{State: vmmsim.FCRunning, Version: "1.16.1", PCI: true})
	if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{NetnsPath: e.netns}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.AttachVMM(ctx(t), id, vmmadapter.Firecracker, sim.Socket()); err != nil {
		t.Fatal(err)
	}
	return sim
}

func wantCode(t *testing.T, err error, code uint) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Code != code {
		t.Fatalf("error %v, want CNI code %d", err, code)
	}
}

// TestVMMFirecrackerGuestMustAct: a hot-added Firecracker NIC is recorded
// with the rescan note; DEL does not tear it down under the guest (try
// again, the steps as the note) until the guest's release is recorded.
func TestVMMFirecrackerGuestMustAct(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-fcg"
	sim := attachFC(t, e, id)
	added, err := e.m.AddNIC(ctx(t), e.spec(id))
	if err != nil {
		t.Fatal(err)
	}
	if added.NIC.State != netsetup.NICAttached || !strings.Contains(added.NIC.Note, "rescan its PCI bus") {
		t.Fatalf("NIC %+v: want attached with the rescan note", added.NIC)
	}
	err = e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"})
	wantCode(t, err, CodeTryAgain)
	if !errors.Is(err, vmmadapter.ErrGuestMustAct) {
		t.Fatalf("DEL = %v, want ErrGuestMustAct", err)
	}
	if n := sim.CountCalls("DELETE", "/network-interfaces/eth0"); n != 0 {
		t.Fatalf("DELETE sent %d times before the guest let go", n)
	}
	rec, _ := e.m.Store.Get(id)
	if n, _ := rec.NIC("eth0"); n == nil || n.State != netsetup.NICDetaching || !strings.Contains(n.Note, "guest-acked") {
		t.Fatalf("record after the refused DEL: %+v", n)
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") == nil {
		t.Fatal("the TAP went although the device is still in the VMM")
	}
	sim.GuestRescan()
	sim.GuestRemove("eth0")
	if _, err := e.m.AckGuestRelease(ctx(t), id, "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"}); err != nil {
		t.Fatalf("DEL after guest-acked: %v", err)
	}
	if len(sim.Interfaces()) != 0 || len(sim.SurpriseRemovals()) != 0 {
		t.Fatalf("VMM interfaces %+v, surprise removals %v", sim.Interfaces(), sim.SurpriseRemovals())
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") != nil {
		t.Fatal("TAP left after DEL")
	}
}

// TestVMMQueueSizeRefusedAtAdd: a queue size the sandbox's VMM cannot take
// is an invalid-config error before anything is set up.
func TestVMMQueueSizeRefusedAtAdd(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-fcq"
	attachFC(t, e, id)
	s := e.spec(id)
	s.QueueSize = 1024
	_, err := e.m.AddNIC(ctx(t), s)
	wantCode(t, err, CodeInvalidConfig)
	if !strings.Contains(err.Error(), "queueSize 1024") {
		t.Fatalf("error %v does not name the field", err)
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") != nil {
		t.Fatal("a TAP was created for a refused NIC")
	}
}

// TestVMMPausedRemoval: DEL on a paused Cloud Hypervisor is "try again" and
// leaves the NIC attached; after resume it goes.
func TestVMMPausedRemoval(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-pau"
	sim := attachCH(t, e, id, vmmsim.CHRunning)
	if _, err := e.m.AddNIC(ctx(t), e.spec(id)); err != nil {
		t.Fatal(err)
	}
	sim.Pause()
	err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"})
	wantCode(t, err, CodeTryAgain)
	if !errors.Is(err, vmmadapter.ErrVMPaused) {
		t.Fatalf("DEL on a paused VM = %v", err)
	}
	rec, _ := e.m.Store.Get(id)
	if n, _ := rec.NIC("eth0"); n == nil || n.State != netsetup.NICAttached {
		t.Fatalf("NIC after the refused DEL: %+v, want attached", n)
	}
	sim.Resume()
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if len(sim.Devices()) != 0 {
		t.Fatalf("devices left: %v", sim.Devices())
	}
}
