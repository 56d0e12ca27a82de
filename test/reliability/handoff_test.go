package reliability

import (
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
)

// notAVMM listens on path and, for every connection, reads the first
// message with its ancillary data (counting the fds it carried), then
// answers with answer (nothing: close at once) — a socket that is not a
// VMM's. It returns how many fds it received, and what it still holds.
type notAVMM struct {
	mu   sync.Mutex
	fds  int
	held []int
}

func listenNotAVMM(t *testing.T, path string, answer string) *notAVMM {
	t.Helper()
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	must(t, "listen", err)
	n := &notAVMM{}
	t.Cleanup(func() {
		ln.Close()
		n.mu.Lock()
		for _, fd := range n.held {
			syscall.Close(fd)
		}
		n.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			buf := make([]byte, 64<<10)
			oob := make([]byte, syscall.CmsgSpace(253*4))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, oobn, _, _, _ := c.ReadMsgUnix(buf, oob)
			if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if fds, err := syscall.ParseUnixRights(&m); err == nil {
						n.mu.Lock()
						n.fds += len(fds)
						n.held = append(n.held, fds...) // a hostile peer keeps them
						n.mu.Unlock()
					}
				}
			}
			if answer != "" {
				c.Write([]byte(answer))
			}
			c.Close()
		}
	}()
	return n
}

func (n *notAVMM) received() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.fds
}

// TestFdHandoffFaults: the fd handoff's own failure cases at ADD. The VMM
// dies after it got the fds but before it answers; the socket is not a
// VMM's (it takes the fds and closes, or answers something that is not
// HTTP). Each ADD fails with a CNI error that says what happened, is
// rolled back (no TAP, no NIC recorded, even though the peer still holds
// a queue fd of the deleted TAP) and a DEL leaves the host as before.
func TestFdHandoffFaults(t *testing.T) {
	addNet := "/api/v1/vm.add-net"
	for _, tc := range []struct {
		name   string
		fault  func(t *testing.T, w *world) func() int // returns the fds the peer got
		saying string
	}{
		{"vmm-dies-holding-fds", func(t *testing.T, w *world) func() int {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultDelay, Delay: 10 * time.Second, Path: addNet})
			sim := w.sim
			time.AfterFunc(300*time.Millisecond, func() { sim.Close() })
			return func() int {
				for _, c := range sim.Calls() {
					if c.Path == addNet {
						return c.Fds
					}
				}
				return 0
			}
		}, "add NIC eth0"},
		{"not-a-vmm-closes", func(t *testing.T, w *world) func() int {
			w.sim.Close()
			return listenNotAVMM(t, w.sim.Socket(), "").received
		}, "closed the connection"},
		{"not-a-vmm-garbage", func(t *testing.T, w *world) func() int {
			w.sim.Close()
			return listenNotAVMM(t, w.sim.Socket(), "SSH-2.0-OpenSSH_9.2\r\n").received
		}, "not an HTTP response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := vmmWorld(t)
			before := audit(t, w.e)
			got := tc.fault(t, w)
			_, err := w.chain.Add(ctx(t), w.att)
			if err == nil {
				t.Fatalf("ADD succeeded although %s", tc.name)
			}
			if !strings.Contains(err.Error(), tc.saying) {
				t.Errorf("ADD error does not say what failed (want %q): %v", tc.saying, err)
			}
			if n := got(); n != 1 {
				t.Errorf("the peer received %d fds, want 1 (the handoff was attempted)", n)
			}
			rec := record(t, w.e, w.sid)
			if nicCount(rec) != 0 || tapIn(t, w.att.Netns, "tapeth0") {
				t.Errorf("failed ADD left the NIC: record %+v, TAP present %v", rec, tapIn(t, w.att.Netns, "tapeth0"))
			}
			must(t, "DEL", w.chain.Del(ctx(t), w.att))
			same(t, "fd handoff fault "+tc.name+" at ADD, then DEL", before, audit(t, w.e))
		})
	}
}

// TestFdHandoffRecorded: a NIC handed over as fds says so in the record,
// and the VMM got exactly one fd per queue pair.
func TestFdHandoffRecorded(t *testing.T) {
	w := vmmWorld(t)
	_, err := w.chain.Add(ctx(t), w.att)
	must(t, "ADD", err)
	rec := record(t, w.e, w.sid)
	n, ok := rec.NIC("eth0")
	if !ok || n.Handoff != netsetup.HandoffFd || n.State != netsetup.NICAttached {
		t.Fatalf("recorded NIC %+v: want attached with handoff fd", n)
	}
	if nets := w.sim.Net(); len(nets) != 1 || nets[0].Fds != 1 || nets[0].Tap != "tapeth0" {
		t.Fatalf("VMM has %+v: want tapeth0 from 1 fd", nets)
	}
	must(t, "DEL", w.chain.Del(ctx(t), w.att))
}

// TestHostileHandoffInput: tapHandoff values that are not auto/fd/name,
// and queue counts no TAP can have, are refused with CNI error 7 naming
// the field, before anything is set up.
func TestHostileHandoffInput(t *testing.T) {
	e := newEnv(t)
	d := newDirect(t, e)
	before := audit(t, e)
	for _, extra := range []map[string]any{
		{"tapHandoff": "FD"}, {"tapHandoff": "fd;name"}, {"tapHandoff": "fds"}, {"tapHandoff": strings.Repeat("f", 5000)},
		{"tapHandoff": 1}, {"queues": 257}, {"queues": -1},
	} {
		r := d.call(t, "ADD", "eth0", extra)
		if r.Err == nil || (r.Err.Code != types.ErrInvalidNetworkConfig && r.Err.Code != types.ErrDecodingFailure) {
			t.Errorf("ADD with %v: want CNI error 6 or 7, got %+v", extra, r.Err)
			continue
		}
		field := "tapHandoff"
		if _, ok := extra["queues"]; ok {
			field = "queues"
		}
		if !strings.Contains(r.Err.Msg+r.Err.Details, field) {
			t.Errorf("ADD with %v: error does not name %s: %+v", extra, field, r.Err)
		}
	}
	same(t, "refused hostile handoff input", before, audit(t, e))
}
