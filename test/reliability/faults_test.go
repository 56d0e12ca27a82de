package reliability

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmnic/vmnic/internal/testkit/faultenv"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
)

// vmmWorld is a prepared sandbox (the runtime's netns adopted) with a
// booted Cloud Hypervisor simulator attached, and the chain to add NICs.
func vmmWorld(t *testing.T) *world {
	t.Helper()
	w := newWorld(t, "cni")
	w.runtimeNetns(t)
	w.prepare(t)
	w.attachVMM(t)
	return w
}

// record reads the sandbox's record; it must decode and validate (a
// missing record is fine, a corrupt one never).
func record(t *testing.T, e *faultenv.Env, sid string) *netsetup.NetSetup {
	t.Helper()
	st, err := netsetup.Open(e.StateDir)
	must(t, "open store", err)
	rec, err := st.Get(sid)
	if errors.Is(err, netsetup.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("record of %s is unreadable: %v", sid, err)
	}
	if err := rec.Validate(); err != nil {
		t.Fatalf("record of %s does not validate: %v", sid, err)
	}
	return rec
}

func nicCount(rec *netsetup.NetSetup) int {
	if rec == nil {
		return 0
	}
	return len(rec.NetworkConfigs)
}

// tapIn reports whether the netns has the TAP.
func tapIn(t *testing.T, ns, name string) bool {
	t.Helper()
	l, err := faultenv.LinkInNetns(ns, name)
	if err != nil && !os.IsNotExist(err) {
		t.Fatalf("look up %s: %v", name, err)
	}
	return l != nil
}

// refusingSocket leaves a unix socket file nobody listens on (a VMM that
// died): connecting is refused.
func refusingSocket(t *testing.T, path string) {
	t.Helper()
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	must(t, "listen", err)
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func errCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// TestVMMFaultsAtAdd: the VMM misbehaves while ADD hot-adds the NIC. A
// VMM that answers late but in time gives a working NIC; every other fault
// gives a clear CNI error, the ADD is rolled back (no TAP, no NIC in the
// record or in the VMM), and the runtime's DEL leaves the host as before.
func TestVMMFaultsAtAdd(t *testing.T) {
	addNet := "/api/v1/vm.add-net"
	cases := []struct {
		name   string
		fault  func(t *testing.T, w *world)
		ok     bool
		saying string // in the error
	}{
		{name: "socket-missing", fault: func(t *testing.T, w *world) { w.sim.Close() }, saying: "not reachable"},
		{name: "socket-refusing", fault: func(t *testing.T, w *world) { w.sim.Close(); refusingSocket(t, w.sim.Socket()) }, saying: "not reachable"},
		{name: "slow-in-time", ok: true, fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultDelay, Delay: 500 * time.Millisecond, Path: addNet})
		}},
		{name: "never-answers", saying: "no answer within", fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultNeverAnswer, Path: addNet})
		}},
		{name: "garbage", saying: "not an HTTP response", fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultGarbage, Path: addNet})
		}},
		{name: "close-mid-call", saying: "closed the connection", fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultCloseMidCall, Path: addNet})
		}},
		{name: "applied-answer-lost", saying: "closed the connection", fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultLoseAnswer, Path: addNet, Times: 1})
		}},
		{name: "bad-body", saying: "not valid PciDeviceInfo", fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultBadBody, Path: addNet})
		}},
		{name: "refused", saying: "device busy", fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultReply, Path: addNet, Status: 500,
				Body: `["Error from API","The network device could not be added to the VM","device busy"]`})
		}},
		{name: "dies-mid-call", saying: "", fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultDelay, Delay: 10 * time.Second, Path: addNet})
			sim := w.sim
			time.AfterFunc(300*time.Millisecond, func() { sim.Close() })
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := vmmWorld(t)
			before := audit(t, w.e)
			tc.fault(t, w)
			_, err := w.chain.Add(ctx(t), w.att)
			rec := record(t, w.e, w.sid)
			if tc.ok {
				must(t, "ADD with a slow VMM", err)
				if n, _ := rec.NIC("eth0"); n == nil || n.State != netsetup.NICAttached || len(w.sim.Net()) != 1 {
					t.Fatalf("NIC not attached after a slow but timely VMM: %+v, VMM %+v", n, w.sim.Net())
				}
			} else {
				if err == nil {
					t.Fatalf("ADD succeeded although the VMM %s", tc.name)
				}
				if !strings.Contains(err.Error(), tc.saying) || !strings.Contains(err.Error(), "add NIC eth0") {
					t.Errorf("ADD error does not say what failed (want %q): %v", tc.saying, err)
				}
				if c := errCode(err); c != 11 && c != 999 {
					t.Errorf("ADD error code %d, want 11 (try again) or 999", c)
				}
				if nicCount(rec) != 0 || tapIn(t, w.att.Netns, "tapeth0") {
					t.Errorf("failed ADD left the NIC: record %+v, TAP present %v", rec, tapIn(t, w.att.Netns, "tapeth0"))
				}
				if dead, _ := w.sim.Dead(); !dead {
					time.Sleep(50 * time.Millisecond)
					if nets := w.sim.Net(); len(nets) > 0 {
						t.Errorf("failed ADD left the NIC in the VMM: %+v", nets)
					}
				}
			}
			w.sim.ClearFault()
			must(t, "DEL", w.chain.Del(ctx(t), w.att))
			if nets := w.sim.Net(); len(nets) > 0 {
				t.Errorf("NIC left in the VMM after DEL: %+v", nets)
			}
			same(t, "VMM fault "+tc.name+" at ADD, then DEL", before, audit(t, w.e))
		})
	}
}

// TestVMMFaultsAtDel: the VMM misbehaves while DEL hot-removes an
// attached NIC. A VMM that is gone lets DEL clean up the host side; one
// that does not answer, garbles or never ejects makes DEL fail with a clear
// error while nothing is lost (the NIC stays recorded, detaching or
// attached, its TAP in place); the next DEL, once the VMM is well, finishes.
func TestVMMFaultsAtDel(t *testing.T) {
	rm := "/api/v1/vm.remove-device"
	cases := []struct {
		name   string
		fault  func(t *testing.T, w *world)
		ok     bool
		saying string
	}{
		{name: "socket-missing", ok: true, fault: func(t *testing.T, w *world) { w.sim.Close() }},
		{name: "socket-refusing", ok: true, fault: func(t *testing.T, w *world) { w.sim.Close(); refusingSocket(t, w.sim.Socket()) }},
		{name: "slow-in-time", ok: true, fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultDelay, Delay: 500 * time.Millisecond, Path: rm})
		}},
		{name: "never-answers", saying: "answer", fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultNeverAnswer, Path: rm})
		}},
		{name: "garbage", saying: "not an HTTP response", fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultGarbage, Path: "/api/v1/vm.info"})
		}},
		{name: "close-mid-call", saying: "closed the connection", fault: func(t *testing.T, w *world) {
			w.sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultCloseMidCall, Path: rm})
		}},
		{name: "guest-never-ejects", saying: "guest did not release", fault: func(t *testing.T, w *world) {
			w.sim.SetEjectDelay(-1)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := vmmWorld(t)
			before := audit(t, w.e)
			_, err := w.chain.Add(ctx(t), w.att)
			must(t, "ADD", err)
			tc.fault(t, w)
			err = w.chain.Del(ctx(t), w.att)
			rec := record(t, w.e, w.sid)
			if tc.ok {
				must(t, "DEL with the VMM "+tc.name, err)
				if nicCount(rec) != 0 || tapIn(t, w.att.Netns, "tapeth0") {
					t.Errorf("DEL left the NIC: %+v", rec)
				}
				same(t, "VMM fault "+tc.name+" at DEL", before, audit(t, w.e))
				return
			}
			if err == nil {
				t.Fatalf("DEL succeeded although the VMM %s", tc.name)
			}
			if !strings.Contains(err.Error(), tc.saying) || !strings.Contains(err.Error(), "NIC eth0") {
				t.Errorf("DEL error does not say what failed (want %q): %v", tc.saying, err)
			}
			n, _ := rec.NIC("eth0")
			if n == nil || !tapIn(t, w.att.Netns, "tapeth0") {
				t.Fatalf("failed DEL lost the NIC: record %+v, TAP present %v", rec, tapIn(t, w.att.Netns, "tapeth0"))
			}
			w.sim.ClearFault()
			w.sim.SetEjectDelay(0)
			for _, id := range w.sim.Devices() {
				w.sim.Eject(id)
			}
			must(t, "DEL once the VMM is well", w.chain.Del(ctx(t), w.att))
			if nets := w.sim.Net(); len(nets) > 0 {
				t.Errorf("NIC left in the VMM: %+v", nets)
			}
			if dead, why := w.sim.Dead(); dead {
				t.Errorf("the VMM died: %s", why)
			}
			same(t, "VMM fault "+tc.name+" at DEL, then DEL", before, audit(t, w.e))
		})
	}
}

// TestNetnsDeletedUnderSandbox: the sandbox's netns disappears (the runtime
// removed it) while a NIC is recorded. CHECK reports it; DEL and GC still
// succeed and leave nothing; an ADD naming the gone netns is refused.
func TestNetnsDeletedUnderSandbox(t *testing.T) {
	for _, repair := range []string{"del", "gc"} {
		t.Run(repair, func(t *testing.T) {
			w := newWorld(t, "cni")
			base := audit(t, w.e)
			w.runtimeNetns(t)
			_, err := w.chain.Add(ctx(t), w.att)
			must(t, "ADD", err)
			must(t, "remove netns", w.e.RemoveNetns(w.att.Netns))
			if err := w.chain.Check(ctx(t), w.att); err == nil {
				t.Error("CHECK passed although the netns is gone")
			}
			if repair == "gc" {
				must(t, "GC", w.chain.GC(ctx(t)))
				if rec := record(t, w.e, w.sid); rec != nil {
					t.Errorf("GC left the record of a sandbox whose netns is gone: %+v", rec)
				}
			}
			must(t, "DEL", w.chain.Del(ctx(t), w.att))
			if rec := record(t, w.e, w.sid); rec != nil {
				t.Errorf("DEL left the record: %+v", rec)
			}
			same(t, "netns deleted, then "+repair, base, audit(t, w.e))

			// ADD into the gone netns path.
			r, err := faultenv.RunPlugin(ctx(t), w.e.Bins.Plugin, faultenv.PluginCall{Command: "ADD", ContainerID: w.sid,
				Netns: w.att.Netns, IfName: "eth0", Path: w.e.RefCNI, Stdin: faultenv.VmnicStdin("vmnr-net", "1.1.0", w.e.VmnicConf(nil), "eth0", "", w.att.Netns, "10.207.0.5/24", "10.207.0.1")})
			must(t, "run plugin", err)
			if r.Err == nil || r.Err.Code != types.ErrInvalidNetNS {
				t.Errorf("ADD into a gone netns: want CNI error 4, got %+v (stdout %s)", r.Err, r.Stdout)
			}
			same(t, "ADD into a gone netns", base, audit(t, w.e))
		})
	}
}

// stateTmpfs mounts a small tmpfs as the env's state dir (unmounted at
// cleanup) and returns a function that remounts it read-only or back.
func stateTmpfs(t *testing.T, e *faultenv.Env, size string) (readonly func(bool)) {
	t.Helper()
	must(t, "mkdir", os.MkdirAll(e.StateDir, 0o700))
	must(t, "mount tmpfs", mount("tmpfs", e.StateDir, "tmpfs", 0, "size="+size+",mode=0700"))
	t.Cleanup(func() { unmount(e.StateDir) })
	return func(ro bool) {
		t.Helper()
		flags := uintptr(msRemount)
		if ro {
			flags |= msRdonly
		}
		must(t, fmt.Sprintf("remount read-only=%v", ro), mount("", e.StateDir, "", flags, ""))
	}
}

// directWorld is a sandbox netns with a veth eth0 (no IPAM), for runs of
// the plugin binary alone.
type directWorld struct {
	e   *faultenv.Env
	ns  string
	sid string
}

func newDirect(t *testing.T, e *faultenv.Env, ifnames ...string) *directWorld {
	t.Helper()
	d := &directWorld{e: e, sid: id("d")}
	ns, err := e.NewNetns(strings.TrimPrefix(d.sid, faultenv.NetnsPrefix))
	must(t, "netns", err)
	d.ns = ns
	if len(ifnames) == 0 {
		ifnames = []string{"eth0"}
	}
	for _, ifn := range ifnames {
		must(t, "veth", e.Veth(ns, ifn, ""))
	}
	return d
}

func (d *directWorld) call(t *testing.T, cmd, ifname string, extra map[string]any) faultenv.PluginResult {
	t.Helper()
	stdin := faultenv.VmnicStdin("vmnr-net", "1.1.0", d.e.VmnicConf(extra), ifname, "", d.ns, "10.207.9.5/24", "10.207.9.1")
	if cmd == "DEL" {
		stdin = faultenv.VmnicStdin("vmnr-net", "1.1.0", d.e.VmnicConf(extra), "", "", "", "", "")
	}
	r, err := faultenv.RunPlugin(ctx(t), d.e.Bins.Plugin, faultenv.PluginCall{Command: cmd, ContainerID: d.sid, Netns: d.ns, IfName: ifname, Path: d.e.RefCNI, Stdin: stdin})
	must(t, "run plugin", err)
	if r.Crashed {
		t.Fatalf("plugin %s crashed: %s", cmd, r.Stderr)
	}
	return r
}

// TestStateDirReadOnly: with the state dir read-only, ADD and DEL fail
// with an error that says so, and change nothing on the host; once it is
// writable again DEL finishes.
func TestStateDirReadOnly(t *testing.T) {
	e := newEnv(t)
	readonly := stateTmpfs(t, e, "1m")
	d := newDirect(t, e)
	if r := d.call(t, "ADD", "eth0", nil); r.Err != nil {
		t.Fatalf("ADD: %+v", r.Err)
	}
	must(t, "DEL", errOf(d.call(t, "DEL", "eth0", nil)))
	before := audit(t, e)

	readonly(true)
	r := d.call(t, "ADD", "eth0", nil)
	if r.Err == nil || !strings.Contains(r.Err.Error(), "read-only file system") {
		t.Fatalf("ADD on a read-only state dir: want an error naming it, got %+v", r.Err)
	}
	same(t, "ADD on a read-only state dir", before, audit(t, e))

	readonly(false)
	if r := d.call(t, "ADD", "eth0", nil); r.Err != nil {
		t.Fatalf("ADD: %+v", r.Err)
	}
	withNIC := audit(t, e)
	readonly(true)
	r = d.call(t, "DEL", "eth0", nil)
	if r.Err == nil || !strings.Contains(r.Err.Error(), "read-only file system") {
		t.Fatalf("DEL on a read-only state dir: want an error naming it, got %+v", r.Err)
	}
	same(t, "DEL on a read-only state dir changes nothing", withNIC, audit(t, e))
	readonly(false)
	must(t, "DEL", errOf(d.call(t, "DEL", "eth0", nil)))
	same(t, "DEL once writable", before, audit(t, e))
}

// TestStateDirFull: with no space left in the state dir, ADD fails with an
// error that says so and leaves no TAP or record; a DEL that cannot write
// the record fails without losing it; with space again everything works.
func TestStateDirFull(t *testing.T) {
	e := newEnv(t)
	stateTmpfs(t, e, "256k")
	d := newDirect(t, e, "eth0", "net1")
	if r := d.call(t, "ADD", "eth0", nil); r.Err != nil { // prepared-like: keeps the record with net1
		t.Fatalf("ADD eth0: %+v", r.Err)
	}
	before := audit(t, e)
	filler := filepath.Join(e.StateDir, "filler")
	fill(t, filler)

	r := d.call(t, "ADD", "net1", nil)
	if r.Err == nil || !strings.Contains(r.Err.Error(), "no space left") {
		t.Fatalf("ADD on a full state dir: want an error naming it, got %+v", r.Err)
	}
	if tapIn(t, d.ns, "tapnet1") {
		t.Error("failed ADD left the TAP")
	}
	rec := record(t, e, d.sid)
	if nicCount(rec) != 1 {
		t.Errorf("record changed by a failed ADD: %+v", rec)
	}
	os.Remove(filler)
	same(t, "ADD on a full state dir", before, audit(t, e))

	fill(t, filler)
	r = d.call(t, "DEL", "eth0", nil)
	rec = record(t, e, d.sid)
	if r.Err != nil && nicCount(rec) != 1 {
		t.Errorf("a DEL that failed (%v) lost the record", r.Err)
	}
	os.Remove(filler)
	must(t, "DEL with space", errOf(d.call(t, "DEL", "eth0", nil)))
	if rec := record(t, e, d.sid); rec != nil || tapIn(t, d.ns, "tapeth0") {
		t.Errorf("DEL left the NIC: %+v", rec)
	}
}

func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	must(t, "filler", err)
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			return
		}
	}
}

func errOf(r faultenv.PluginResult) error {
	if r.Err != nil {
		return r.Err
	}
	return nil
}

// TestRacingAdds: ADDs racing on one sandbox. Different interfaces both
// succeed and both are recorded (no lost update); the same interface
// twice gives exactly one NIC and a clear error for the other call.
func TestRacingAdds(t *testing.T) {
	e := newEnv(t)
	before := audit(t, e)
	for round := 0; round < 5; round++ {
		d := newDirect(t, e, "eth0", "net1")
		var wg sync.WaitGroup
		res := make([]faultenv.PluginResult, 2)
		for i, ifn := range []string{"eth0", "net1"} {
			wg.Add(1)
			go func() { defer wg.Done(); res[i] = d.call(t, "ADD", ifn, nil) }()
		}
		wg.Wait()
		for i, r := range res {
			if r.Err != nil {
				t.Fatalf("round %d: racing ADD %d: %+v", round, i, r.Err)
			}
		}
		if rec := record(t, e, d.sid); nicCount(rec) != 2 || !tapIn(t, d.ns, "tapeth0") || !tapIn(t, d.ns, "tapnet1") {
			t.Fatalf("round %d: racing ADDs of two NICs: record %+v", round, rec)
		}

		// The same interface twice.
		for i := range res {
			wg.Add(1)
			go func() { defer wg.Done(); res[i] = d.call(t, "DEL", []string{"eth0", "net1"}[i], nil) }()
		}
		wg.Wait()
		for i := range res {
			wg.Add(1)
			go func() { defer wg.Done(); res[i] = d.call(t, "ADD", "eth0", nil) }()
		}
		wg.Wait()
		ok := 0
		for _, r := range res {
			if r.Err == nil {
				ok++
			} else if !strings.Contains(r.Err.Error(), "already has this NIC") {
				t.Errorf("round %d: the losing ADD says %q, want \"already has this NIC\"", round, r.Err.Error())
			}
		}
		if rec := record(t, e, d.sid); ok != 1 || nicCount(rec) != 1 || !tapIn(t, d.ns, "tapeth0") {
			t.Fatalf("round %d: two ADDs of eth0: %d succeeded, record %+v", round, ok, rec)
		}
		must(t, "DEL", errOf(d.call(t, "DEL", "eth0", nil)))
		if rec := record(t, e, d.sid); rec != nil {
			t.Fatalf("round %d: record left: %+v", round, rec)
		}
		for _, p := range []string{d.ns} {
			must(t, "remove netns", e.RemoveNetns(p))
		}
		removePeers(t, e)
	}
	same(t, "racing ADDs", before, audit(t, e))
}

// removePeers removes the peer namespaces of the env's veths.
func removePeers(t *testing.T, e *faultenv.Env) {
	t.Helper()
	ents, _ := os.ReadDir(e.NetnsDir)
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), faultenv.NetnsPrefix+"peer-") {
			must(t, "remove peer netns", e.RemoveNetns(filepath.Join(e.NetnsDir, ent.Name())))
		}
	}
}

// TestGCRacingAdd: GC runs while ADDs run. With the attachment listed as
// valid, GC never touches it: every ADD ends with a working NIC. With an
// empty list, GC may remove a NIC that was already added, but never half
// of one: the record and the host always agree, and DEL leaves nothing.
func TestGCRacingAdd(t *testing.T) {
	for _, validListed := range []bool{true, false} {
		t.Run(fmt.Sprintf("valid=%v", validListed), func(t *testing.T) {
			w := newWorld(t, "cni")
			base := audit(t, w.e)
			for round := 0; round < 8; round++ {
				w.sid = id("g")
				w.att = faultenv.Attachment{ContainerID: w.sid, IfName: "eth0"}
				w.runtimeNetns(t)
				var wg sync.WaitGroup
				var addErr, gcErr error
				wg.Add(2)
				go func() { defer wg.Done(); _, addErr = w.chain.Add(context.Background(), w.att) }()
				go func() {
					defer wg.Done()
					time.Sleep(time.Duration(round) * 15 * time.Millisecond)
					if validListed {
						gcErr = w.chain.GC(context.Background(), w.att)
					} else {
						gcErr = w.chain.GC(context.Background())
					}
				}()
				wg.Wait()
				must(t, "ADD racing GC", addErr)
				must(t, "GC racing ADD", gcErr)
				rec := record(t, w.e, w.sid)
				hasTap := tapIn(t, w.att.Netns, "tapeth0")
				if (nicCount(rec) == 1) != hasTap {
					t.Fatalf("round %d: record and host disagree: record %+v, TAP %v", round, rec, hasTap)
				}
				if validListed {
					if !hasTap {
						t.Fatalf("round %d: GC removed a valid attachment", round)
					}
					must(t, "CHECK", w.chain.Check(ctx(t), w.att))
				}
				must(t, "DEL", w.chain.Del(ctx(t), w.att))
				must(t, "remove netns", w.e.RemoveNetns(w.att.Netns))
			}
			same(t, "GC racing ADD", base, audit(t, w.e))
		})
	}
}
