package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

// openFds counts this process's open TUN/TAP fds (those of /proc/self/fd
// that point at /dev/net/tun): the VMM simulator runs in this process, so
// its copies count too.
func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/net/tun" {
			n++
		}
	}
	return n
}

// TestFdHandoffCloudHypervisor: with the default handoff a Cloud
// Hypervisor gets the TAP as queue fds on vm.add-net (1 and 2 queue
// pairs); the simulator checks them with TUNGETIFF. The record says fd,
// vmnic keeps no copy, and after DEL (the guest ejects) no fd is left.
func TestFdHandoffCloudHypervisor(t *testing.T) {
	for _, pairs := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d-pairs", pairs), func(t *testing.T) {
			e := newEnv(t)
			id := "vmnict-fd"
			sim := attachCH(t, e, id, vmmsim.CHRunning)
			spec := e.spec(id)
			spec.QueuePairs = pairs
			before := openFds(t)
			added, err := e.m.AddNIC(ctx(t), spec)
			if err != nil {
				t.Fatal(err)
			}
			if added.NIC.State != netsetup.NICAttached || added.NIC.Handoff != netsetup.HandoffFd {
				t.Fatalf("NIC %+v: want attached with handoff fd", added.NIC)
			}
			rec, err := e.m.Store.Get(id)
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := rec.NIC("eth0"); n == nil || n.Handoff != netsetup.HandoffFd {
				t.Fatalf("recorded NIC %+v: want handoff fd", n)
			}
			nets := sim.Net()
			if len(nets) != 1 || nets[0].Fds != pairs || nets[0].Tap != "tapeth0" || nets[0].NumQueues != 2*pairs {
				t.Fatalf("VMM has %+v: want tapeth0 from %d fds, num_queues %d", nets, pairs, 2*pairs)
			}
			var fdsSent int
			for _, c := range sim.Calls() {
				if c.Path == "/api/v1/vm.add-net" {
					fdsSent = c.Fds
				}
			}
			if fdsSent != pairs {
				t.Errorf("vm.add-net carried %d fds, want %d", fdsSent, pairs)
			}
			if v := sim.Violations(); len(v) > 0 {
				t.Errorf("spec violations: %v", v)
			}
			// The VMM (the simulator, in this process) holds exactly one
			// copy per queue; vmnic's own are closed.
			if got := openFds(t) - before; got != pairs {
				t.Errorf("%d more fds open after the ADD, want %d (the VMM's copies only)", got, pairs)
			}
			if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"}); err != nil {
				t.Fatal(err)
			}
			if got := openFds(t); got != before {
				t.Errorf("%d fds open after DEL, %d before the ADD: leak", got, before)
			}
		})
	}
}

// TestNameHandoffCloudHypervisor: tapHandoff name keeps the old way.
func TestNameHandoffCloudHypervisor(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-nm"
	sim := attachCH(t, e, id, vmmsim.CHRunning)
	spec := e.spec(id)
	spec.TapHandoff = netsetup.HandoffName
	added, err := e.m.AddNIC(ctx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	if added.NIC.Handoff != netsetup.HandoffName {
		t.Errorf("handoff %q, want name", added.NIC.Handoff)
	}
	if nets := sim.Net(); len(nets) != 1 || nets[0].Fds != 0 || nets[0].Tap != "tapeth0" {
		t.Errorf("VMM has %+v: want tapeth0 by name", nets)
	}
}

// TestFdHandoffRefusedForFirecracker: tapHandoff fd for a VMM that takes
// no fds fails the ADD before anything is set up, naming the setting.
func TestFdHandoffRefusedForFirecracker(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-fcfd"
	sim := vmmsim.NewFC(t, vmmsim.FCConfig{})
	if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{NetnsPath: e.netns}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.AttachVMM(ctx(t), id, vmmadapter.Firecracker, sim.Socket()); err != nil {
		t.Fatal(err)
	}
	spec := e.spec(id)
	spec.TapHandoff = netsetup.HandoffFd
	_, err := e.m.AddNIC(ctx(t), spec)
	var ce *Error
	if !errors.As(err, &ce) || ce.Code != CodeInvalidConfig || !strings.Contains(err.Error(), "tapHandoff fd") {
		t.Fatalf("AddNIC = %v, want an invalid-config error naming tapHandoff fd", err)
	}
	// auto gives Firecracker the TAP by name.
	spec.TapHandoff = ""
	added, err := e.m.AddNIC(ctx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	if added.NIC.Handoff != netsetup.HandoffName {
		t.Errorf("Firecracker NIC handoff %q, want name", added.NIC.Handoff)
	}
}

// refusingFds is a Cloud Hypervisor adapter of a VMM that refuses fds.
type refusingFds struct{ vmmadapter.Adapter }

func (r refusingFds) AddNIC(ctx context.Context, nic vmmadapter.NIC) (vmmadapter.Attachment, error) {
	if len(nic.Fds) > 0 {
		return vmmadapter.Attachment{}, fmt.Errorf("add NIC: %w", vmmadapter.ErrFdsUnsupported)
	}
	return r.Adapter.AddNIC(ctx, nic)
}

// TestFdHandoffFallsBackToName: a VMM that refuses fds gets the TAP by
// name when the handoff is auto (noted on the NIC), and fails the ADD
// when fd was asked for.
func TestFdHandoffFallsBackToName(t *testing.T) {
	e := newEnv(t)
	e.m.OpenVMM = func(kind vmmadapter.Kind, socket string, opts vmmadapter.Options) (vmmadapter.Adapter, error) {
		a, err := connect.Open(kind, socket, opts)
		if err != nil {
			return nil, err
		}
		return refusingFds{a}, nil
	}
	id := "vmnict-fb"
	sim := attachCH(t, e, id, vmmsim.CHRunning)
	spec := e.spec(id)
	spec.TapHandoff = netsetup.HandoffFd
	if _, err := e.m.AddNIC(ctx(t), spec); err == nil || !errors.Is(err, vmmadapter.ErrFdsUnsupported) {
		t.Fatalf("AddNIC with tapHandoff fd to a VMM refusing fds = %v", err)
	}
	spec.TapHandoff = ""
	added, err := e.m.AddNIC(ctx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	if added.NIC.Handoff != netsetup.HandoffName || !strings.Contains(added.NIC.Note, "refused the TAP fds") {
		t.Errorf("NIC %+v: want handoff name with a note", added.NIC)
	}
	if nets := sim.Net(); len(nets) != 1 || nets[0].Fds != 0 {
		t.Errorf("VMM has %+v", nets)
	}
	if n := sim.CountCalls(http.MethodPut, "/api/v1/vm.add-net"); n != 1 {
		t.Errorf("%d vm.add-net calls, want 1", n)
	}
}

// TestOpenTapFdsChecksRecord: fds are opened only for a TAP of the record,
// in the recorded netns.
func TestOpenTapFdsChecksRecord(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-otf"
	if _, err := e.m.AddNIC(ctx(t), e.spec(id)); err != nil {
		t.Fatal(err)
	}
	rec, err := e.m.Store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := rec.NIC("eth0")
	files, err := OpenTapFds(rec, *n)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 1 {
		t.Errorf("%d fds, want 1", len(files))
	}
	for _, f := range files {
		f.Close()
	}
	other := *n
	other.Tap = "eth0" // the veth: not the NIC's TAP
	if _, err := OpenTapFds(rec, other); err == nil {
		t.Error("OpenTapFds opened a device that is not the NIC's TAP")
	}
	moved := *rec
	moved.NetnsID = &netsetup.NetnsID{Dev: 1, Ino: 1}
	if _, err := OpenTapFds(&moved, *n); err == nil || !strings.Contains(err.Error(), "no longer the netns") {
		t.Errorf("OpenTapFds in a netns that is not the recorded one = %v", err)
	}
}

// TestFdHandoffPeerChecked: attach records the VMM's pid (CH's vmm.ping);
// TAP fds go only to that process (SO_PEERCRED). A record whose VMM pid is
// another process's gets no fd: the ADD fails, rolled back.
func TestFdHandoffPeerChecked(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-peer"
	sim := attachCH(t, e, id, vmmsim.CHRunning)
	rec, err := e.m.Store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.VMM.PID != os.Getpid() {
		t.Fatalf("recorded VMM pid %d, want the simulator's %d", rec.VMM.PID, os.Getpid())
	}
	if _, err := e.m.AddNIC(ctx(t), e.spec(id)); err != nil {
		t.Fatalf("ADD with the right peer: %v", err)
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Store.Update(ctx(t), id, func(r *netsetup.NetSetup) error {
		r.VMM.PID = os.Getppid() // some other process
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	calls := sim.CountCalls(http.MethodPut, "/api/v1/vm.add-net")
	_, err = e.m.AddNIC(ctx(t), e.spec(id))
	if !errors.Is(err, vmmadapter.ErrPeerMismatch) {
		t.Fatalf("ADD with another process recorded as the VMM = %v, want ErrPeerMismatch", err)
	}
	if n := sim.CountCalls(http.MethodPut, "/api/v1/vm.add-net"); n != calls {
		t.Errorf("vm.add-net sent to a peer that is not the recorded VMM")
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") != nil {
		t.Error("refused ADD left its TAP")
	}
}
