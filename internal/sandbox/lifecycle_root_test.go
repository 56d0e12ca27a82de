package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// TestAttachVMMAfterVMMRestart is issue 16 item 6: after a VMM restart,
// attach-vmm skipped NICs recorded attached with the old VMM's device ids,
// and the new VMM booted without network. Re-attach goes by the VMM's
// device list, not the record's word.
func TestAttachVMMAfterVMMRestart(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-restart"
	old := attachCH(t, e, id, vmmsim.CHRunning)
	if added, err := e.m.AddNIC(ctx(t), e.spec(id)); err != nil || added.NIC.State != netsetup.NICAttached {
		t.Fatalf("AddNIC: %v %+v", err, added.NIC)
	}
	old.Close()
	fresh := vmmsim.NewCH(t, vmmsim.CHConfig{State: vmmsim.CHRunning})
	rec, err := e.m.AttachVMM(ctx(t), id, vmmadapter.CloudHypervisor, fresh.Socket())
	if err != nil {
		t.Fatalf("attach-vmm to the restarted VMM: %v", err)
	}
	if n, _ := rec.NIC("eth0"); n == nil || n.State != netsetup.NICAttached || n.VMMDeviceID == "" {
		t.Errorf("NIC after re-attach: %+v", n)
	}
	if nets := fresh.Net(); len(nets) != 1 || nets[0].Tap != "tapeth0" {
		t.Fatalf("the restarted VMM has %+v, want the recorded NIC added again", nets)
	}
	// Once more: the VMM has the NIC now, nothing is sent again.
	if _, err := e.m.AttachVMM(ctx(t), id, vmmadapter.CloudHypervisor, fresh.Socket()); err != nil {
		t.Fatal(err)
	}
	if got := fresh.CountCalls("PUT", "/api/v1/vm.add-net"); got != 1 {
		t.Errorf("vm.add-net calls = %d, want 1", got)
	}
}

// replaceNetns removes the namespace at path and makes a new one there, as
// an operator does who deletes vm1 and creates a new vm1 for another VM.
func replaceNetns(t *testing.T, path string) {
	t.Helper()
	if err := netns.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := netns.Create(filepath.Dir(path), filepath.Base(path)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Remove(path) })
}

// TestReplacedNetnsIsLeftAlone is issue 16 item 8: an operation that enters
// a recorded netns entered whatever namespace was at the path now, and the
// old sandbox's teardown deleted the new VM's tap<ifname>. When the netns
// is not the recorded one (nsfs dev:ino), vmnic touches nothing in it and
// says so; an owned netns path that holds another namespace is not
// unmounted.
func TestReplacedNetnsIsLeftAlone(t *testing.T) {
	e := newEnv(t)

	// An adopted netns (vmnicctl prepare --netns .../vm1).
	vm1 := netfixture.Netns(t, netfixture.Name("vmnict-vm1"))
	netfixture.Veth(t, vm1, "eth0", e.peer, "peer8", 0, "")
	id := "vmnict-adopted"
	if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{NetnsPath: vm1}); err != nil {
		t.Fatal(err)
	}
	s := e.spec(id)
	s.NetnsPath = vm1
	if _, err := e.m.AddNIC(ctx(t), s); err != nil {
		t.Fatal(err)
	}
	replaceNetns(t, vm1)
	netfixture.In(t, vm1, func() error {
		_, err := hostnet.CreateTap(hostnet.TapSpec{Name: "tapeth0", Owner: -1, Group: -1})
		return err
	})
	if err := e.m.CheckNIC(ctx(t), id, "eth0"); err == nil || !strings.Contains(err.Error(), "not the recorded") {
		t.Errorf("CHECK in a replaced netns = %v, want it to say the netns is not the recorded one", err)
	}
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if netfixture.LinkIn(t, vm1, "tapeth0") == nil {
		t.Error("the old sandbox's teardown deleted the new VM's tapeth0")
	}

	// An owned netns whose path now holds another namespace.
	id = "vmnict-ownedrepl"
	if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{}); err != nil {
		t.Fatal(err)
	}
	owned := e.m.OwnedNetnsPath(id)
	replaceNetns(t, owned)
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	if _, err := netsetup.IdentifyNetns(owned); err != nil {
		t.Errorf("teardown unmounted a namespace that is not the recorded one: %v", err)
	}
}

// TestVMMSocketOfAnotherOwner (issue 16 item 10): the socket's owner at
// attach is recorded; a socket of another owner hard-linked where the VMM's
// was (another sandbox's, whose mode let it be linked) is never dialled.
func TestVMMSocketOfAnotherOwner(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-owner"
	own := attachCH(t, e, id, vmmsim.CHRunning)
	rec, err := e.m.Store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.VMM.SocketUID == nil || *rec.VMM.SocketUID != uint32(os.Geteuid()) {
		t.Fatalf("recorded socket owner %v, want %d", rec.VMM.SocketUID, os.Geteuid())
	}
	other := vmmsim.NewCH(t, vmmsim.CHConfig{State: vmmsim.CHRunning})
	if err := os.Lchown(other.Socket(), 4242, 4242); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(own.Socket()); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(other.Socket(), own.Socket()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.AddNIC(ctx(t), e.spec(id)); err == nil {
		t.Error("ADD through a socket of another owner succeeded")
	}
	if n := len(other.Calls()); n != 0 {
		t.Errorf("%d calls reached the other owner's VMM", n)
	}
}

// TestPrepareRefusesAReplacedNetns (issue 16 item 8): Prepare again of a
// sandbox whose netns path now holds another namespace took that namespace
// as the sandbox's own. It is refused, and the record keeps its identity.
func TestPrepareRefusesAReplacedNetns(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-reprep"
	rec, err := e.m.Prepare(ctx(t), id, PrepareOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := *rec.NetnsID
	replaceNetns(t, e.m.OwnedNetnsPath(id))
	if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{}); err == nil || !strings.Contains(err.Error(), "not the recorded") {
		t.Errorf("Prepare with the netns replaced = %v, want a refusal saying it is not the recorded one", err)
	}
	if got, err := e.m.Store.Get(id); err != nil || got.NetnsID == nil || *got.NetnsID != want {
		t.Errorf("record after the refused Prepare: %v %+v", err, got)
	}
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err != nil {
		t.Fatal(err)
	}
}
