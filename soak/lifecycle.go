package soak

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/vmnic/vmnic/internal/failpoint"
	"github.com/vmnic/vmnic/internal/testkit/faultenv"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
)

// The VM-lifecycle cycles (issue 12): quiesce/resume, and snapshot →
// teardown → restore into a new sandbox → ADD with the snapshot's MAC →
// restore-vmm into a Cloud Hypervisor simulator → DEL/teardown, each with
// crashes at the transitions' failpoints now and then, followed by the
// repair a VM manager or runtime would run.

// ctlCrash runs vmnicctl with a crash armed at point and checks it was
// killed there.
func (r *runner) ctlCrash(ctx context.Context, point string, args ...string) error {
	res, err := r.e.Vmnicctl(ctx, r.e.Arm(point, failpoint.Action{Kind: failpoint.Crash}), args...)
	if err == nil {
		return fmt.Errorf("vmnicctl %s with a crash armed at %s succeeded", args[0], point)
	}
	if !res.Crashed || res.ExitCode != 137 || !slices.Contains(r.e.FiredNames(), point) {
		return fmt.Errorf("vmnicctl %s with a crash armed at %s: want it killed there, got %v (fired %v)", args[0], point, err, r.e.FiredNames())
	}
	r.mu.Lock()
	r.rep.Crashes++
	r.mu.Unlock()
	r.fault("crash@" + point)
	r.e.ClearFired()
	return nil
}

// ctl runs vmnicctl, expecting success.
func (r *runner) ctl(ctx context.Context, args ...string) (string, error) {
	res, err := r.e.Vmnicctl(ctx, nil, args...)
	return res.Stdout, err
}

// nicState is the recorded state of the sandbox's NIC eth0 ("" when
// there is no such NIC or record).
func (r *runner) nicState(sid string) (netsetup.NICState, *netsetup.NetSetup, error) {
	st, err := netsetup.Open(r.e.StateDir)
	if err != nil {
		return "", nil, err
	}
	rec, err := st.Get(sid)
	if err != nil {
		return "", nil, err
	}
	n, ok := rec.NIC("eth0")
	if !ok {
		return "", rec, nil
	}
	return n.State, rec, nil
}

// quiesce: a prepared sandbox (owned netns), with a booted CH simulator
// half the time, and a NIC; vmnicctl quiesce, CHECK (healthy but
// quiesced), resume (the NIC back to attached or pending), CHECK. A third of the time that
// runs clean; else a crash is armed at quiesce-saved or resume-host and
// the repair is the retried quiesce/resume pair, the chain's DEL, or
// vmnicctl teardown.
func (r *runner) quiesce(ctx context.Context, sid string) error {
	out, err := r.ctl(ctx, "prepare", sid)
	if err != nil {
		return err
	}
	// Half the time the sandbox has a booted CH simulator (a paused VM:
	// the NIC goes back to attached); else none (the NIC goes back to
	// pending).
	back := netsetup.NICPending
	var sim *vmmsim.CH
	if r.rnd.Intn(2) == 0 {
		r.fault("quiesce-with-vmm")
		dir := filepath.Join(r.e.RuntimeDir, strings.TrimPrefix(sid, faultenv.NetnsPrefix))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if sim, err = vmmsim.StartCH(filepath.Join(dir, "api.sock"), vmmsim.CHConfig{}); err != nil {
			return err
		}
		defer sim.Close()
		if _, err := r.ctl(ctx, "attach-vmm", sid, "--kind", "ch", "--socket", sim.Socket()); err != nil {
			return err
		}
		back = netsetup.NICAttached
	}
	c := r.chains["bridge"]
	a := faultenv.Attachment{ContainerID: sid, Netns: strings.TrimSpace(out), IfName: "eth0", SandboxID: sid}
	if _, err := c.Add(ctx, a); err != nil {
		return fmt.Errorf("ADD: %w", err)
	}
	if err := r.quiesceResume(ctx, sid, c, a, back); err != nil {
		return err
	}
	if sim != nil {
		if n := sim.Net(); len(n) != 0 {
			return fmt.Errorf("the VMM still has NICs after DEL/teardown: %+v", n)
		}
		if v := sim.Violations(); len(v) > 0 {
			return fmt.Errorf("VMM: spec violations: %v", v)
		}
	}
	return nil
}

// quiesceResume is the quiesce cycle once the NIC is added; back is the
// state resume must put the NIC back in.
func (r *runner) quiesceResume(ctx context.Context, sid string, c *faultenv.Chain, a faultenv.Attachment, back netsetup.NICState) error {
	pts := r.points(failpoint.OpQuiesce, "cni", false)
	if r.rnd.Intn(3) == 0 {
		r.fault("quiesce-resume-clean")
		if _, err := r.ctl(ctx, "quiesce", sid); err != nil {
			return err
		}
		if s, _, err := r.nicState(sid); err != nil || s != netsetup.NICQuiesced {
			return fmt.Errorf("after quiesce the NIC is %q (%v), want quiesced", s, err)
		}
		if err := c.Check(ctx, a); err != nil {
			return fmt.Errorf("CHECK of a quiesced NIC: %w", err)
		}
		if _, err := r.ctl(ctx, "resume", sid); err != nil {
			return err
		}
		if s, _, err := r.nicState(sid); err != nil || s != back {
			return fmt.Errorf("after resume the NIC is %q (%v), want %s", s, err, back)
		}
		if err := c.Check(ctx, a); err != nil {
			return fmt.Errorf("CHECK after resume: %w", err)
		}
		if err := c.Del(ctx, a); err != nil {
			return fmt.Errorf("DEL: %w", err)
		}
		_, err := r.ctl(ctx, "teardown", sid)
		return err
	}
	p := pts[r.rnd.Intn(len(pts))]
	crashedIn := ""
	for _, cmd := range []string{"quiesce", "resume"} {
		res, err := r.e.Vmnicctl(ctx, r.e.Arm(p, failpoint.Action{Kind: failpoint.Crash}), cmd, sid)
		if err == nil {
			continue
		}
		if !res.Crashed || !slices.Contains(r.e.FiredNames(), p) {
			return fmt.Errorf("vmnicctl %s with a crash armed at %s: %v", cmd, p, err)
		}
		crashedIn = cmd
		break
	}
	if crashedIn == "" {
		return fmt.Errorf("neither quiesce nor resume reached %s", p)
	}
	r.mu.Lock()
	r.rep.Crashes++
	r.mu.Unlock()
	r.fault("crash@" + p)
	repair := []string{"retry", "del", "teardown"}[r.rnd.Intn(3)]
	r.fault("quiesce-repair-by-" + repair)
	switch repair {
	case "retry":
		for _, cmd := range []string{"quiesce", "resume", "resume"} {
			if _, err := r.ctl(ctx, cmd, sid); err != nil {
				return fmt.Errorf("%s after a crash at %s: %w", cmd, p, err)
			}
		}
		if s, _, err := r.nicState(sid); err != nil || s != back {
			return fmt.Errorf("after the retried quiesce/resume the NIC is %q (%v), want %s", s, err, back)
		}
		if err := c.Check(ctx, a); err != nil {
			return fmt.Errorf("CHECK after the repair: %w", err)
		}
		if err := c.Del(ctx, a); err != nil {
			return fmt.Errorf("DEL: %w", err)
		}
		_, err := r.ctl(ctx, "teardown", sid)
		return err
	case "del":
		if err := c.Del(ctx, a); err != nil {
			return fmt.Errorf("DEL after a crash at %s: %w", p, err)
		}
		_, err := r.ctl(ctx, "teardown", sid)
		return err
	default:
		if _, err := r.ctl(ctx, "teardown", sid); err != nil {
			return fmt.Errorf("teardown after a crash at %s: %w", p, err)
		}
		return c.Del(ctx, a)
	}
}

// snapshotRestore: the source sandbox sid (prepared, a booted CH
// simulator attached, a NIC hot-added) is snapshotted (vmnicctl snapshot),
// then torn down, DEL'd and its VMM stopped. vmnicctl restore prepares a
// new sandbox from the manifest (sometimes killed at prepare-netns-created
// first, repaired by vmnicctl gc); the chain's ADD brings the NIC back
// with the snapshot's MAC and IP (sometimes first with a wrong MAC, which
// must fail, then the runtime's DEL); restore-vmm restores the VM into a
// new CH simulator (the snapshot's config.json has the NIC on a TAP fd or
// by name), killed at restore-fds-opened or vm-restored half the time and
// repaired by a retry, a DEL or a teardown. A restored NIC must end
// attached with the snapshot's device id; the restored sandbox's record
// must be gone at the end.
func (r *runner) snapshotRestore(ctx context.Context, sid string) (err error) {
	short := strings.TrimPrefix(sid, faultenv.NetnsPrefix)
	rid := sid + "r"
	r.e.Track(rid, "eth0")
	defer func() {
		if err != nil {
			r.janitor(ctx, rid)
		}
	}()
	// The source sandbox and its VMM.
	srcDir := filepath.Join(r.e.RuntimeDir, short)
	if err := os.MkdirAll(srcDir, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(srcDir)
	src, err := vmmsim.StartCH(filepath.Join(srcDir, "api.sock"), vmmsim.CHConfig{})
	if err != nil {
		return err
	}
	defer src.Close()
	out, err := r.ctl(ctx, "prepare", sid)
	if err != nil {
		return err
	}
	if _, err := r.ctl(ctx, "attach-vmm", sid, "--kind", "ch", "--socket", src.Socket()); err != nil {
		return err
	}
	c := r.chains["bridge"]
	a := faultenv.Attachment{ContainerID: sid, Netns: strings.TrimSpace(out), IfName: "eth0", SandboxID: sid}
	if _, err := c.Add(ctx, a); err != nil {
		return fmt.Errorf("ADD to the source sandbox: %w", err)
	}
	man := filepath.Join(r.e.Root, "manifest-"+short+".json")
	defer os.Remove(man)
	if _, err := r.ctl(ctx, "snapshot", sid, "--out", man); err != nil {
		return err
	}
	m, err := netsetup.ReadManifest(man)
	if err != nil {
		return err
	}
	if len(m.NICs) != 1 || len(m.NICs[0].IPs) != 1 {
		return fmt.Errorf("manifest NICs %+v, want one with one IP", m.NICs)
	}
	snap := m.NICs[0]
	if _, err := r.ctl(ctx, "teardown", sid); err != nil {
		return fmt.Errorf("teardown of the source sandbox: %w", err)
	}
	if err := c.Del(ctx, a); err != nil {
		return fmt.Errorf("DEL of the source sandbox: %w", err)
	}
	if n := src.Net(); len(n) != 0 {
		return fmt.Errorf("the source VMM still has NICs after the teardown: %+v", n)
	}
	if v := src.Violations(); len(v) > 0 {
		return fmt.Errorf("source VMM: spec violations: %v", v)
	}
	src.Close()
	if err := r.noRecord(sid); err != nil {
		return err
	}

	// The restored sandbox.
	if r.rnd.Intn(6) == 0 {
		if err := r.ctlCrash(ctx, "prepare-netns-created", "restore", rid, "--from", man); err != nil {
			return err
		}
		r.fault("restore-repair-by-gc")
		if _, err := r.ctl(ctx, "gc"); err != nil {
			return err
		}
	}
	out, err = r.ctl(ctx, "restore", rid, "--from", man)
	if err != nil {
		return err
	}
	ip, _, _ := strings.Cut(snap.IPs[0], "/")
	ra := faultenv.Attachment{ContainerID: rid, Netns: strings.TrimSpace(out), IfName: "eth0", SandboxID: rid,
		Args: [][2]string{{"MAC", snap.MAC}, {"IP", ip}}}
	if r.rnd.Intn(4) == 0 {
		r.fault("restore-add-wrong-mac")
		wrong := ra
		wrong.Args = [][2]string{{"MAC", "02:00:00:5e:00:01"}, {"IP", ip}}
		if _, err := c.Add(ctx, wrong); err == nil || !strings.Contains(err.Error(), "MAC") {
			return fmt.Errorf("ADD of the restored NIC with a wrong MAC: %v, want a MAC mismatch", err)
		}
		if err := c.Del(ctx, wrong); err != nil {
			return fmt.Errorf("DEL after the refused ADD: %w", err)
		}
	}
	if _, err := c.Add(ctx, ra); err != nil {
		return fmt.Errorf("ADD of the restored NIC: %w", err)
	}

	// The VMM: a CH started without a VM restores the snapshot.
	ridDir := filepath.Join(r.e.RuntimeDir, strings.TrimPrefix(rid, faultenv.NetnsPrefix))
	if err := os.MkdirAll(ridDir, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(ridDir)
	sim, err := vmmsim.StartCH(filepath.Join(ridDir, "api.sock"), vmmsim.CHConfig{State: vmmsim.CHNotCreated})
	if err != nil {
		return err
	}
	defer sim.Close()
	fds := r.rnd.Intn(2)
	r.fault(fmt.Sprintf("restore-snapshot-fds=%d", fds))
	snapDir := filepath.Join(r.e.Root, "chsnap-"+short)
	if err := os.MkdirAll(snapDir, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(snapDir)
	nq := max(2, 2*fds)
	if err := vmmsim.WriteCHSnapshotConfig(snapDir, []vmmsim.CHNet{{ID: snap.VMMDeviceID, Tap: snap.Tap, MAC: snap.MAC, NumQueues: nq, QueueSize: 256, Fds: fds}}); err != nil {
		return err
	}
	args := []string{"restore-vmm", rid, "--kind", "cloud-hypervisor", "--socket", sim.Socket(), "--source-url", "file://" + snapDir, "--resume"}
	repair := "none"
	if r.rnd.Intn(2) == 0 {
		pts := r.points(failpoint.OpRestore, "cni", true)
		p := pts[r.rnd.Intn(len(pts))]
		if err := r.ctlCrash(ctx, p, args...); err != nil {
			return err
		}
		repair = []string{"retry", "del", "teardown"}[r.rnd.Intn(3)]
		r.fault("restore-vmm-repair-by-" + repair)
	}
	if repair == "none" || repair == "retry" {
		if _, err := r.ctl(ctx, args...); err != nil {
			return err
		}
		s, rec, err := r.nicState(rid)
		if err != nil {
			return err
		}
		n, _ := rec.NIC("eth0")
		if s != netsetup.NICAttached || n.VMMDeviceID != snap.VMMDeviceID || rec.VMM == nil {
			return fmt.Errorf("after restore-vmm: NIC %s device %q, VMM %+v; want attached, %s", s, n.VMMDeviceID, rec.VMM, snap.VMMDeviceID)
		}
		if got := sim.CountCalls(http.MethodPut, "/api/v1/vm.restore"); got != 1 || len(sim.Net()) != 1 || sim.Net()[0].Fds != fds {
			return fmt.Errorf("after restore-vmm: %d vm.restore, VM net %+v; want 1, one NIC on %d fds", got, sim.Net(), fds)
		}
		if err := c.Check(ctx, ra); err != nil {
			return fmt.Errorf("CHECK of the restored NIC: %w", err)
		}
	}
	if repair == "teardown" || (repair == "none" && r.rnd.Intn(2) == 0) {
		if _, err := r.ctl(ctx, "teardown", rid); err != nil {
			return err
		}
		if err := c.Del(ctx, ra); err != nil {
			return fmt.Errorf("DEL after the teardown: %w", err)
		}
	} else {
		if err := c.Del(ctx, ra); err != nil {
			return fmt.Errorf("DEL of the restored NIC: %w", err)
		}
		if _, err := r.ctl(ctx, "teardown", rid); err != nil {
			return err
		}
	}
	// The VMM unplugged a NIC vmnic had recorded on it; after a crash at
	// vm-restored without a retry, the VM manager stops the VMM instead.
	if n := sim.Net(); len(n) != 0 && (repair == "none" || repair == "retry") {
		return fmt.Errorf("the restored VMM still has NICs after DEL/teardown: %+v", n)
	}
	if dead, why := sim.Dead(); dead {
		return fmt.Errorf("the restored VMM died: %s", why)
	}
	if v := sim.Violations(); len(v) > 0 {
		return fmt.Errorf("restored VMM: spec violations: %v", v)
	}
	sim.Close()
	if err := r.noRecord(rid); err != nil {
		return err
	}
	if ns := ra.Netns; fileExists(ns) {
		return errors.New("the restored sandbox's owned netns is still there: " + ns)
	}
	return nil
}
