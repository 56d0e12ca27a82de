package reliability

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/failpoint"
	"github.com/vmnic/vmnic/internal/testkit/faultenv"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
)

var crash = failpoint.Action{Kind: failpoint.Crash}

// world is one crash case's setup: an env, a chain and one attachment.
type world struct {
	e      *faultenv.Env
	chain  *faultenv.Chain
	att    faultenv.Attachment
	sid    string
	sim    *vmmsim.CH // the sandbox's VMM, when it has one
	simDir string
}

// stopVMM stops the simulator and removes its socket directory.
func (w *world) stopVMM() {
	if w.sim != nil {
		w.sim.Close()
		os.RemoveAll(w.simDir)
		w.sim = nil
	}
}

func newWorld(t *testing.T, backend string) *world {
	t.Helper()
	e := newEnv(t)
	conf := map[string]any{}
	if backend == "bridge" {
		conf["backend"], conf["bridge"] = "bridge", e.Bridge
	}
	chain, err := e.BridgeChain("vmnr-net", conf)
	must(t, "chain", err)
	sid := id("c")
	e.Track(sid, "eth0")
	return &world{e: e, chain: chain, sid: sid, att: faultenv.Attachment{ContainerID: sid, IfName: "eth0"}}
}

// runtimeNetns gives the attachment a netns "made by the runtime".
func (w *world) runtimeNetns(t *testing.T) {
	t.Helper()
	ns, err := w.e.NewNetns(strings.TrimPrefix(w.sid, faultenv.NetnsPrefix))
	must(t, "netns", err)
	w.att.Netns = ns
}

// prepare makes the sandbox with vmnicctl: adopting the attachment's netns
// when it has one, else creating (and owning) one; CNI calls then name the
// sandbox with VMNIC_SANDBOX_ID.
func (w *world) prepare(t *testing.T) {
	t.Helper()
	args := []string{"prepare", w.sid}
	if w.att.Netns != "" {
		args = append(args, "--netns", w.att.Netns)
	}
	r, err := w.e.Vmnicctl(ctx(t), nil, args...)
	must(t, "vmnicctl prepare", err)
	if w.att.Netns == "" {
		w.att.Netns = strings.TrimSpace(r.Stdout)
	}
	w.att.SandboxID = w.sid
}

// attachVMM starts a Cloud Hypervisor simulator (booted) in the sandbox's
// runtime dir and attaches it with vmnicctl.
func (w *world) attachVMM(t *testing.T) {
	t.Helper()
	sock := filepath.Join(w.e.RuntimeDir, strings.TrimPrefix(w.sid, faultenv.NetnsPrefix), "api.sock")
	must(t, "socket dir", os.MkdirAll(filepath.Dir(sock), 0o700))
	sim, err := vmmsim.StartCH(sock, vmmsim.CHConfig{})
	must(t, "CH simulator", err)
	t.Cleanup(func() { sim.Close() })
	w.sim = sim
	w.simDir = filepath.Dir(sock)
	_, err = w.e.Vmnicctl(ctx(t), nil, "attach-vmm", w.sid, "--kind", "ch", "--socket", sock)
	must(t, "vmnicctl attach-vmm", err)
}

// crashed checks that err is the injected crash at point.
func (w *world) crashed(t *testing.T, point, what string, err error, crashedCtl bool) {
	t.Helper()
	if !faultenv.IsCrash(err) && !crashedCtl {
		t.Fatalf("%s with a crash armed at %s: want the process killed, got %v", what, point, err)
	}
	if fired := w.e.FiredNames(); !slices.Contains(fired, point) {
		t.Fatalf("%s: failpoint %s did not fire (fired: %v)", what, point, fired)
	}
}

func (w *world) noVMMNICs(t *testing.T) {
	t.Helper()
	if w.sim == nil {
		return
	}
	if nets := w.sim.Net(); len(nets) > 0 {
		t.Errorf("the VMM still has NICs after the repair: %+v", nets)
	}
	if dead, why := w.sim.Dead(); dead {
		t.Errorf("the VMM died: %s", why)
	}
}

// TestCrashEveryFailpoint kills vmnic at every engine failpoint (the list
// in internal/failpoint) during the operation that reaches it, then runs
// the repair a runtime or an operator would (CNI DEL of the chain, GC,
// vmnicctl teardown or gc) and compares a full audit of the host (links,
// TAPs, qdiscs, filters, netns and their mounts, state files and locks,
// host-local leases, iptables rules, leftover processes) with the one taken
// before the operation: they must be equal.
func TestCrashEveryFailpoint(t *testing.T) {
	cases := 0
	for _, p := range failpoint.Points {
		if p.Component != failpoint.Engine {
			continue
		}
		backends := []string{"cni", "bridge"}
		if p.Backend != "" {
			backends = []string{p.Backend}
		}
		if p.VMM {
			backends = []string{"cni"}
		}
		switch p.Op {
		case failpoint.OpAdd:
			for _, be := range backends {
				repairs := []string{"del", "gc"}
				if p.VMM {
					repairs = []string{"del", "teardown"}
				}
				for _, rep := range repairs {
					cases++
					t.Run(p.Name+"/add/"+be+"/"+rep, func(t *testing.T) { crashAdd(t, p, be, rep) })
				}
			}
		case failpoint.OpDel:
			for _, be := range backends {
				repairs := []string{"del", "teardown"}
				if !p.VMM {
					repairs = append(repairs, "gc")
				}
				for _, rep := range repairs {
					cases++
					t.Run(p.Name+"/del/"+be+"/"+rep, func(t *testing.T) { crashDel(t, p, be, rep) })
				}
				cases++
				t.Run(p.Name+"/teardown/"+be, func(t *testing.T) { crashTeardown(t, p, be) })
			}
		case failpoint.OpTeardown:
			for _, be := range backends {
				cases++
				t.Run(p.Name+"/teardown/"+be, func(t *testing.T) { crashTeardown(t, p, be) })
			}
		case failpoint.OpPrepare:
			cases++
			t.Run(p.Name+"/prepare", func(t *testing.T) { crashPrepare(t, p) })
		case failpoint.OpQuiesce:
			for _, rep := range []string{"retry", "del", "teardown"} {
				cases++
				t.Run(p.Name+"/quiesce/"+rep, func(t *testing.T) { crashQuiesce(t, p, rep) })
			}
		case failpoint.OpRestore:
			for _, rep := range []string{"retry", "del", "teardown"} {
				cases++
				t.Run(p.Name+"/restore-vmm/"+rep, func(t *testing.T) { crashRestore(t, p, rep) })
			}
		default:
			t.Errorf("failpoint %s: no crash scenario for op %s", p.Name, p.Op)
		}
	}
	t.Logf("%d crash cases over %d engine failpoints", cases, len(failpoint.Points)-len(failpoint.Select(failpoint.NRI, failpoint.OpNRIRun))-len(failpoint.Select(failpoint.NRI, failpoint.OpNRIStop)))
}

// crashAdd: ADD crashes at p; the repair must undo everything.
func crashAdd(t *testing.T, p failpoint.Point, backend, repair string) {
	w := newWorld(t, backend)
	base := audit(t, w.e)
	w.runtimeNetns(t)
	if p.VMM {
		w.prepare(t)
		w.attachVMM(t)
	}
	before := audit(t, w.e)

	w.chain.Exec.SetEnv(w.e.Arm(p.Name, crash)...)
	_, err := w.chain.Add(ctx(t), w.att)
	w.chain.Exec.SetEnv()
	w.crashed(t, p.Name, "ADD", err, false)

	switch repair {
	case "del":
		must(t, "DEL after the crash", w.chain.Del(ctx(t), w.att))
		same(t, "crash in ADD at "+p.Name+", then DEL", before, audit(t, w.e))
		// A second DEL, and an ADD/DEL cycle, still work.
		must(t, "second DEL", w.chain.Del(ctx(t), w.att))
		_, err := w.chain.Add(ctx(t), w.att)
		must(t, "ADD after the repair", err)
		must(t, "DEL", w.chain.Del(ctx(t), w.att))
		same(t, "ADD/DEL after the repair", before, audit(t, w.e))
	case "gc":
		// The runtime gives up on the sandbox: its netns goes, then GC.
		must(t, "remove netns", w.e.RemoveNetns(w.att.Netns))
		must(t, "GC after the crash", w.chain.GC(ctx(t)))
		gcThenDel(t, w, "crash in ADD at "+p.Name+", netns removed, then GC", base)
	case "teardown":
		teardownRepair(t, w, "crash in ADD at "+p.Name, base)
	}
	w.noVMMNICs(t)
}

// teardownRepair repairs a crash with vmnicctl teardown, the chain's DEL
// and the runtime's removal of the netns, then checks the host is as at base.
func teardownRepair(t *testing.T, w *world, what string, base hostaudit.Snapshot) {
	t.Helper()
	_, err := w.e.Vmnicctl(ctx(t), nil, "teardown", w.sid)
	must(t, "vmnicctl teardown after the crash", err)
	must(t, "DEL after the teardown", w.chain.Del(ctx(t), w.att))
	w.noVMMNICs(t)
	w.stopVMM()
	must(t, "remove netns", w.e.RemoveNetns(w.att.Netns))
	same(t, what+", then teardown, DEL and netns removal", base, audit(t, w.e))
}

// gcThenDel checks the host after a GC: everything but the IPAM lease must
// be as before (host-local, as of plugins v1.9.1, implements no GC: its
// leases go with the chain's DEL, which the runtime still runs for a
// sandbox it removes); then the DEL must release the lease too.
func gcThenDel(t *testing.T, w *world, what string, base hostaudit.Snapshot) {
	t.Helper()
	same(t, what+" (all but the IPAM lease)", base, audit(t, w.e), allKindsBut("lease")...)
	must(t, "DEL after GC", w.chain.Del(ctx(t), w.att))
	same(t, what+", then DEL", base, audit(t, w.e))
}

// crashDel: a NIC is set up; DEL (or GC) crashes at p; the repair must
// finish the removal.
func crashDel(t *testing.T, p failpoint.Point, backend, repair string) {
	w := newWorld(t, backend)
	base := audit(t, w.e)
	w.runtimeNetns(t)
	if p.VMM {
		w.prepare(t)
		w.attachVMM(t)
	}
	before := audit(t, w.e)
	_, err := w.chain.Add(ctx(t), w.att)
	must(t, "ADD", err)
	if p.VMM && len(w.sim.Net()) != 1 {
		t.Fatalf("the NIC was not hot-added: VMM has %+v", w.sim.Net())
	}

	w.chain.Exec.SetEnv(w.e.Arm(p.Name, crash)...)
	if repair == "gc" {
		must(t, "remove netns", w.e.RemoveNetns(w.att.Netns))
		err = w.chain.GC(ctx(t))
	} else {
		err = w.chain.Del(ctx(t), w.att)
	}
	w.chain.Exec.SetEnv()
	w.crashed(t, p.Name, "DEL", err, false)

	switch repair {
	case "del":
		must(t, "DEL after the crash", w.chain.Del(ctx(t), w.att))
		same(t, "crash in DEL at "+p.Name+", then DEL", before, audit(t, w.e))
	case "gc":
		must(t, "GC after the crash", w.chain.GC(ctx(t)))
		gcThenDel(t, w, "crash in GC at "+p.Name+", then GC", base)
	case "teardown":
		teardownRepair(t, w, "crash in DEL at "+p.Name, base)
	}
	w.noVMMNICs(t)
}

// crashTeardown: a prepared sandbox (owned netns) with a NIC; vmnicctl
// teardown crashes at p; a second teardown and the chain's DEL (which
// releases the IPAM lease) must leave the host as before the prepare.
func crashTeardown(t *testing.T, p failpoint.Point, backend string) {
	w := newWorld(t, backend)
	before := audit(t, w.e)
	w.prepare(t)
	if p.VMM {
		w.attachVMM(t)
	}
	_, err := w.chain.Add(ctx(t), w.att)
	must(t, "ADD", err)

	r, err := w.e.Vmnicctl(ctx(t), w.e.Arm(p.Name, crash), "teardown", w.sid)
	if err == nil {
		t.Fatalf("teardown with a crash armed at %s succeeded", p.Name)
	}
	w.crashed(t, p.Name, "vmnicctl teardown", nil, r.Crashed)
	if r.ExitCode != 137 {
		t.Errorf("vmnicctl teardown ended with exit status %d, want 137 (SIGKILL)", r.ExitCode)
	}

	_, err = w.e.Vmnicctl(ctx(t), nil, "teardown", w.sid)
	must(t, "vmnicctl teardown after the crash", err)
	w.noVMMNICs(t)
	must(t, "DEL after the teardown", w.chain.Del(ctx(t), w.att))
	w.stopVMM()
	same(t, "crash in teardown at "+p.Name+", then teardown and DEL", before, audit(t, w.e))
}

// crashPrepare: vmnicctl prepare crashes at p; vmnicctl gc must remove what
// it left (an owned netns without a record, a lock file).
func crashPrepare(t *testing.T, p failpoint.Point) {
	w := newWorld(t, "cni")
	before := audit(t, w.e)
	r, err := w.e.Vmnicctl(ctx(t), w.e.Arm(p.Name, crash), "prepare", w.sid)
	if err == nil {
		t.Fatalf("prepare with a crash armed at %s succeeded", p.Name)
	}
	w.crashed(t, p.Name, "vmnicctl prepare", nil, r.Crashed)
	_, err = w.e.Vmnicctl(ctx(t), nil, "gc")
	must(t, "vmnicctl gc after the crash", err)
	same(t, "crash in prepare at "+p.Name+", then gc", before, audit(t, w.e))
	// The sandbox can be prepared and torn down again.
	_, err = w.e.Vmnicctl(ctx(t), nil, "prepare", w.sid)
	must(t, "prepare after the repair", err)
	_, err = w.e.Vmnicctl(ctx(t), nil, "teardown", w.sid)
	must(t, "teardown", err)
	same(t, "prepare/teardown after the repair", before, audit(t, w.e))
}

// crashQuiesce: a prepared sandbox (cni backend) with a NIC; vmnicctl
// quiesce, then resume, with a crash armed at p (a point of one of them).
// The repair is the retried command pair (then DEL), the chain's DEL, or
// vmnicctl teardown and DEL: the host ends as it was.
func crashQuiesce(t *testing.T, p failpoint.Point, repair string) {
	w := newWorld(t, "cni")
	before := audit(t, w.e)
	w.prepare(t)
	_, err := w.chain.Add(ctx(t), w.att)
	must(t, "ADD", err)

	env := w.e.Arm(p.Name, crash)
	var crashedIn string
	for _, cmd := range []string{"quiesce", "resume"} {
		r, err := w.e.Vmnicctl(ctx(t), env, cmd, w.sid)
		if err == nil {
			continue
		}
		if r.ExitCode != 137 {
			t.Fatalf("vmnicctl %s with a crash armed at %s: %v (exit status %d, want 137)", cmd, p.Name, err, r.ExitCode)
		}
		w.crashed(t, p.Name, "vmnicctl "+cmd, nil, r.Crashed)
		crashedIn = cmd
		break
	}
	if crashedIn == "" {
		t.Fatalf("neither quiesce nor resume reached %s", p.Name)
	}
	switch repair {
	case "retry":
		for _, cmd := range []string{"quiesce", "resume", "resume"} {
			_, err := w.e.Vmnicctl(ctx(t), nil, cmd, w.sid)
			must(t, "vmnicctl "+cmd+" after the crash", err)
		}
		must(t, "CHECK after the repair", w.chain.Check(ctx(t), w.att))
		must(t, "DEL", w.chain.Del(ctx(t), w.att))
		_, err := w.e.Vmnicctl(ctx(t), nil, "teardown", w.sid)
		must(t, "teardown", err)
	case "del":
		must(t, "DEL after the crash", w.chain.Del(ctx(t), w.att))
		_, err := w.e.Vmnicctl(ctx(t), nil, "teardown", w.sid)
		must(t, "teardown", err)
	case "teardown":
		_, err := w.e.Vmnicctl(ctx(t), nil, "teardown", w.sid)
		must(t, "vmnicctl teardown after the crash", err)
		must(t, "DEL after the teardown", w.chain.Del(ctx(t), w.att))
	}
	same(t, "crash in "+crashedIn+" at "+p.Name+", then "+repair, before, audit(t, w.e))
}
