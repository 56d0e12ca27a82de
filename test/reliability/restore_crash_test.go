package reliability

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/failpoint"
	"github.com/vmnic/vmnic/internal/testkit/faultenv"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
)

// restoreWorld is a sandbox restored from a snapshot manifest, its NIC
// added with the snapshot's MAC and IP, and a Cloud Hypervisor simulator
// started without a VM to restore the snapshot into.
type restoreWorld struct {
	*world
	rid  string              // the restored sandbox
	ratt faultenv.Attachment // its NIC's CNI attachment
	snap netsetup.SnapNIC    // the manifest's NIC
	url  string              // the CH snapshot directory, file:///dir
	args []string            // vmnicctl restore-vmm's arguments
	nets []vmmsim.CHNet      // the snapshot's VM config
	// before is the host before the source sandbox was prepared, tun0
	// this process's TUN fds then.
	before hostaudit.Snapshot
	tun0   int
}

// newRestoreWorld: a source sandbox (prepared, CH simulator attached, one
// NIC hot-added) is snapshotted with vmnicctl snapshot, then torn down
// (teardown, DEL, the VMM stopped); vmnicctl restore makes a new sandbox
// from the manifest, and the chain's ADD brings the NIC back with the
// snapshot's MAC and IP (CNI_ARGS MAC, IP). The CH snapshot directory's
// config.json has the NIC on TAP fds (fds > 0), as CH has a NIC it was
// handed by fd, so restore-vmm sends net_fds; or by name (fds 0).
func newRestoreWorld(t *testing.T, fds int) *restoreWorld {
	t.Helper()
	w := newWorld(t, "cni")
	before, tun0 := audit(t, w.e), tunFds(t)
	w.prepare(t)
	w.attachVMM(t)
	_, err := w.chain.Add(ctx(t), w.att)
	must(t, "ADD to the source sandbox", err)
	man := filepath.Join(t.TempDir(), "manifest.json")
	_, err = w.e.Vmnicctl(ctx(t), nil, "snapshot", w.sid, "--out", man)
	must(t, "vmnicctl snapshot", err)
	m, err := netsetup.ReadManifest(man)
	must(t, "read the manifest", err)
	if len(m.NICs) != 1 || len(m.NICs[0].IPs) != 1 {
		t.Fatalf("manifest NICs %+v, want one with one IP", m.NICs)
	}
	_, err = w.e.Vmnicctl(ctx(t), nil, "teardown", w.sid)
	must(t, "teardown of the source sandbox", err)
	must(t, "DEL of the source sandbox", w.chain.Del(ctx(t), w.att))
	w.stopVMM()

	rw := &restoreWorld{world: w, rid: id("r"), snap: m.NICs[0], before: before, tun0: tun0}
	w.e.Track(rw.rid, "eth0")
	r, err := w.e.Vmnicctl(ctx(t), nil, "restore", rw.rid, "--from", man)
	must(t, "vmnicctl restore", err)
	ip, _, _ := strings.Cut(rw.snap.IPs[0], "/")
	rw.ratt = faultenv.Attachment{ContainerID: rw.rid, Netns: strings.TrimSpace(r.Stdout), IfName: "eth0", SandboxID: rw.rid,
		Args: [][2]string{{"MAC", rw.snap.MAC}, {"IP", ip}}}
	_, err = w.chain.Add(ctx(t), rw.ratt)
	must(t, "ADD of the restored NIC with the snapshot's MAC and IP", err)

	sock := filepath.Join(w.e.RuntimeDir, strings.TrimPrefix(rw.rid, faultenv.NetnsPrefix), "api.sock")
	must(t, "socket dir", os.MkdirAll(filepath.Dir(sock), 0o700))
	sim, err := vmmsim.StartCH(sock, vmmsim.CHConfig{State: vmmsim.CHNotCreated})
	must(t, "CH simulator", err)
	t.Cleanup(func() { sim.Close() })
	w.sim, w.simDir = sim, filepath.Dir(sock)

	dir := t.TempDir()
	nq := 2
	if fds > 0 {
		nq = 2 * fds
	}
	rw.nets = []vmmsim.CHNet{{ID: rw.snap.VMMDeviceID, Tap: rw.snap.Tap, MAC: rw.snap.MAC, NumQueues: nq, QueueSize: 256, Fds: fds}}
	must(t, "CH snapshot config", vmmsim.WriteCHSnapshotConfig(dir, rw.nets))
	rw.url = "file://" + dir
	rw.args = []string{"restore-vmm", rw.rid, "--kind", "cloud-hypervisor", "--socket", sock, "--source-url", rw.url, "--resume"}
	return rw
}

// restores counts the vm.restore requests the simulator answered.
func (rw *restoreWorld) restores() int {
	return rw.sim.CountCalls(http.MethodPut, "/api/v1/vm.restore")
}

// tunFds counts this process's open /dev/net/tun fds (the simulator's,
// which runs here; vmnicctl's end with it).
func tunFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	must(t, "list fds", err)
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/net/tun" {
			n++
		}
	}
	return n
}

// crashRestore: vmnicctl restore-vmm of a restored sandbox crashes at p
// (the snapshot has the NIC on one TAP fd). What the crash leaves is
// checked (at restore-fds-opened: no VM, no request, the record as it
// was; at vm-restored: the VM restored on the sandbox's TAP, the record
// still without VMM and the NIC pending). Then the repair:
//   - retry: restore-vmm again ends with the NIC attached (handoff fd, the
//     snapshot's device id), one vm.restore in all, the VMM holding one
//     fd (none left over from the crashed process, none sent twice);
//     CHECK, DEL (the VMM unplugs the NIC), teardown;
//   - del: the chain's DEL, then teardown;
//   - teardown: vmnicctl teardown, then the chain's DEL.
//
// After a crash at vm-restored without a retry, the VMM keeps a VM vmnic
// never recorded: the VM manager, which saw restore-vmm fail, stops that
// VMM (here: the simulator is closed). The host ends as before the source
// sandbox was prepared, and the simulator holds no fd once closed.
func crashRestore(t *testing.T, p failpoint.Point, repair string) {
	rw := newRestoreWorld(t, 1)
	w, before, tun0 := rw.world, rw.before, rw.tun0

	r, err := w.e.Vmnicctl(ctx(t), w.e.Arm(p.Name, crash), rw.args...)
	if err == nil {
		t.Fatalf("restore-vmm with a crash armed at %s succeeded", p.Name)
	}
	if r.ExitCode != 137 {
		t.Fatalf("vmnicctl restore-vmm with a crash armed at %s: %v (exit status %d, want 137)", p.Name, err, r.ExitCode)
	}
	w.crashed(t, p.Name, "vmnicctl restore-vmm", nil, r.Crashed)

	rec := record(t, w.e, rw.rid)
	n, _ := rec.NIC("eth0")
	if rec.VMM != nil || n.State != netsetup.NICPending {
		t.Errorf("after a crash at %s: VMM %+v, NIC %s; want no VMM recorded and the NIC pending", p.Name, rec.VMM, n.State)
	}
	switch p.Name {
	case "restore-fds-opened":
		if got := rw.restores(); got != 0 || rw.sim.State() != vmmsim.CHNotCreated || tunFds(t) != tun0 {
			t.Errorf("after a crash at %s: %d vm.restore sent, VM %s, %d TUN fds (want 0, not created, %d)", p.Name, got, rw.sim.State(), tunFds(t), tun0)
		}
	case "vm-restored":
		if nets := rw.sim.Net(); rw.restores() != 1 || len(nets) != 1 || nets[0].Fds != 1 || nets[0].Tap != n.Tap || tunFds(t) != tun0+1 {
			t.Errorf("after a crash at %s: %d vm.restore, VM net %+v, %d TUN fds (want 1, one on TAP %s by 1 fd, %d)", p.Name, rw.restores(), nets, tunFds(t), n.Tap, tun0+1)
		}
	}

	switch repair {
	case "retry":
		_, err := w.e.Vmnicctl(ctx(t), nil, rw.args...)
		must(t, "restore-vmm after the crash", err)
		rec := record(t, w.e, rw.rid)
		n, _ := rec.NIC("eth0")
		if n.State != netsetup.NICAttached || n.VMMDeviceID != rw.snap.VMMDeviceID || n.Handoff != netsetup.HandoffFd || rec.VMM == nil || rec.VMM.APISocket != rw.sim.Socket() {
			t.Errorf("after the retried restore-vmm: NIC %s device %q handoff %q, VMM %+v; want attached, %s, fd, the socket", n.State, n.VMMDeviceID, n.Handoff, rec.VMM, rw.snap.VMMDeviceID)
		}
		if nets := rw.sim.Net(); rw.restores() != 1 || len(nets) != 1 || nets[0].Fds != 1 || tunFds(t) != tun0+1 {
			t.Errorf("after the retry: %d vm.restore in all, VM net %+v, %d TUN fds; want 1, one NIC on 1 fd, %d", rw.restores(), nets, tunFds(t), tun0+1)
		}
		must(t, "CHECK after the repair", w.chain.Check(ctx(t), rw.ratt))
		must(t, "DEL", w.chain.Del(ctx(t), rw.ratt))
		w.noVMMNICs(t)
		_, err = w.e.Vmnicctl(ctx(t), nil, "teardown", rw.rid)
		must(t, "teardown", err)
	case "del":
		must(t, "DEL after the crash", w.chain.Del(ctx(t), rw.ratt))
		_, err := w.e.Vmnicctl(ctx(t), nil, "teardown", rw.rid)
		must(t, "teardown", err)
	case "teardown":
		_, err := w.e.Vmnicctl(ctx(t), nil, "teardown", rw.rid)
		must(t, "vmnicctl teardown after the crash", err)
		must(t, "DEL after the teardown", w.chain.Del(ctx(t), rw.ratt))
	}
	if v := rw.sim.Violations(); len(v) > 0 {
		t.Errorf("spec violations: %v", v)
	}
	w.stopVMM()
	if got := tunFds(t); got != tun0 {
		t.Errorf("%d TUN fds open once the VMM is stopped, %d before", got, tun0)
	}
	if rec := record(t, w.e, rw.rid); rec != nil {
		t.Errorf("the restored sandbox's record is still there: %+v", rec)
	}
	same(t, "crash in restore-vmm at "+p.Name+", then "+repair, before, audit(t, w.e))
}
