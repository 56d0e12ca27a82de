package main

// Reproductions of issue 16's hook items (3, 4, 5, 7, 11), each driving the
// real plugin binary from NRI's pkg/adaptation.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
)

// TestSynchronizeSkipsDeadPods (issue 16 item 3): containerd drops a pod's
// network namespace from the NRI pod once its path is gone
// (internal/cri/nri/nri_api_linux.go, criPodSandbox.GetLinuxNamespaces) and
// keeps listing stopped sandboxes (ListPodSandboxes skips only
// StateUnknown), with pid 0 (internal/cri/server/events.go,
// handleSandboxExit). Such a pod must not look like a host-network VM pod
// without a record: Synchronize prepares only pods that are running, and
// never makes an owned netns for a pod that had a CNI netns (it has IPs).
func TestSynchronizeSkipsDeadPods(t *testing.T) {
	e := newEnv(t)
	// Stopped VM pods as containerd lists them: no network namespace, no
	// pid; one still with the IPs its CNI netns had.
	stopped := pod{id: "vmnn-dead-stopped", handler: testVMHandler}
	stoppedCNI := pod{id: "vmnn-dead-cni", handler: testVMHandler, ips: []string{"10.203.0.9"}}
	// A pid whose process is gone (the runtime's view is stale).
	gonePid := pod{id: "vmnn-dead-gonepid", handler: testVMHandler}
	proc := podProcessFixture(t, gonePid.id)
	gonePid.pid = proc.Process.Pid
	proc.Process.Kill()
	proc.Wait()
	// A live pod with IPs but no netns path: it had a CNI netns.
	cniLive := pod{id: "vmnn-dead-cnilive", handler: testVMHandler, ips: []string{"10.203.0.10"}}
	cniLive.pid = podProcessFixture(t, cniLive.id).Process.Pid
	// Live ones: a host-network VM pod with its pod process, and a VM pod
	// on the runtime's netns.
	hostLive := pod{id: "vmnn-dead-hostlive", handler: testVMHandler}
	hostLive.pid = podProcessFixture(t, hostLive.id).Process.Pid
	netLive := vmPod("vmnn-dead-netlive", e.fixture("dead-netlive"))

	startRuntime(t, e, runtimeOptions{mode: preinstalled, pods: []pod{stopped, stoppedCNI, gonePid, cniLive, hostLive, netLive}})
	eventually(t, "the live VM pods prepared", func() bool {
		_, a := e.store.Get(hostLive.id)
		_, b := e.store.Get(netLive.id)
		return a == nil && b == nil
	})
	eventually(t, "the reconcile finished (or prepared a pod that is not running)", func() bool {
		for _, p := range []pod{stopped, stoppedCNI, gonePid, cniLive} {
			if _, err := e.store.Get(p.id); err == nil {
				return true
			}
		}
		return strings.Contains(readLog(e), "msg=\"reconcile: done\"")
	})
	for _, p := range []pod{stopped, stoppedCNI, gonePid, cniLive} {
		if _, err := e.store.Get(p.id); err == nil {
			t.Errorf("%s: a pod that is not running was prepared", p.id)
		}
		if _, err := os.Lstat(filepath.Join(e.netnsDir, "vmnic-"+p.id)); err == nil {
			t.Errorf("%s: an owned netns was made for a pod that is not running or had a CNI netns", p.id)
		}
		if _, err := os.Lstat(filepath.Join(e.runtimeDir, p.id)); err == nil {
			t.Errorf("%s: a runtime dir was made for it", p.id)
		}
	}
	if rec := e.record(hostLive.id); !rec.NetnsOwned || rec.PodPID != hostLive.pid {
		t.Errorf("live host-network VM pod: owned=%v pid=%d, want an owned netns and pid %d", rec.NetnsOwned, rec.PodPID, hostLive.pid)
	}
	if rec := e.record(netLive.id); rec.NetnsPath != netLive.netns {
		t.Errorf("live VM pod: netns %s, want %s", rec.NetnsPath, netLive.netns)
	}
}

// TestReconcileEventsWin (issue 16 item 4): the reconcile Synchronize
// starts goes on in the background; a RemovePodSandbox handled meanwhile
// wins over its plan: the pod is not prepared after its removal.
func TestReconcileEventsWin(t *testing.T) {
	e := newEnv(t)
	// A sandbox the runtime forgot: its teardown is queued.
	slow := netsetup.New("vmnn-rc-slow")
	slow.NetnsPath, slow.Origin = e.fixture("rc-slow"), "nri"
	mustOK(t, "record", e.store.Create(context.Background(), slow))
	missed := vmPod("vmnn-rc-missed", e.fixture("rc-missed"))
	// Hold both sandboxes' locks (another vmnic process at work): the
	// reconcile's work waits, whatever its order.
	ctx := context.Background()
	slowTx, err := e.store.Lock(ctx, slow.SandboxID)
	mustOK(t, "lock", err)
	missedTx, err := e.store.Lock(ctx, missed.id)
	mustOK(t, "lock", err)
	unlocked := false
	unlock := func() {
		if !unlocked {
			unlocked = true
			missedTx.Unlock()
			slowTx.Unlock()
		}
	}
	t.Cleanup(unlock)

	rt := startRuntime(t, e, runtimeOptions{mode: external, pods: []pod{missed}})
	// The runtime removes the pod while the reconcile waits.
	mustOK(t, "RemovePodSandbox during the reconcile", rt.remove(missed))
	unlock()
	eventually(t, "the reconcile finished (or resurrected the pod)", func() bool {
		_, err := e.store.Get(missed.id)
		return err == nil || strings.Contains(readLog(e), "msg=\"reconcile: done\"")
	})
	if _, err := e.store.Get(missed.id); err == nil {
		t.Errorf("the reconcile prepared %s after its RemovePodSandbox", missed.id)
	}
	if _, err := os.Lstat(filepath.Join(e.runtimeDir, missed.id)); err == nil {
		t.Errorf("runtime dir of the removed pod %s left", missed.id)
	}
	e.noRecord(slow.SandboxID)
}

// TestAdoptCNIRecord (issue 16 item 5): a VM pod whose RunPodSandbox was
// missed has the record its CNI ADD made (origin unset, created by the
// CNI plugin). Synchronize and CreateContainer adopt it as the hook's, so
// the sweep watches it and a CNI DEL of its last NIC keeps the record (the
// VM still runs).
func TestAdoptCNIRecord(t *testing.T) {
	for _, via := range []string{"synchronize", "createcontainer"} {
		t.Run(via, func(t *testing.T) {
			e := newEnv(t)
			p := vmPod("vmnn-adopt-"+via[:4], e.fixture("adopt-"+via[:4]))
			nsid, err := netsetup.IdentifyNetns(p.netns)
			mustOK(t, "identify netns", err)
			rec := netsetup.New(p.id)
			rec.NetnsPath, rec.NetnsID, rec.CreatedBy = p.netns, &nsid, netsetup.CreatedByCNI
			rec.PutNIC(netsetup.NIC{ID: "net0", IfName: "eth0", Tap: "vmnnt4", State: netsetup.NICPending})
			mustOK(t, "CNI ADD's record", e.store.Create(context.Background(), rec))

			var listed []pod
			if via == "synchronize" {
				listed = []pod{p}
			}
			rt := startRuntime(t, e, runtimeOptions{mode: preinstalled, pods: listed})
			if via == "createcontainer" {
				_, err := rt.create(p, "vmm")
				mustOK(t, "CreateContainer", err)
			}
			eventually(t, "the record adopted", func() bool {
				r, err := e.store.Get(p.id)
				return err == nil && r.Origin == "nri"
			})
			if r := e.record(p.id); r.CreatedBy != "" || r.PodUID != "uid-"+p.id || len(r.NetworkConfigs) != 1 {
				t.Errorf("adopted record: created_by %q, pod uid %q, %d NICs", r.CreatedBy, r.PodUID, len(r.NetworkConfigs))
			}
			// The CNI DEL of the last NIC.
			mgr := sandbox.New(sandbox.Config{Store: e.store, NetnsDir: e.netnsDir})
			mustOK(t, "CNI DEL", mgr.DelNIC(context.Background(), sandbox.DelSpec{SandboxID: p.id, IfName: "eth0"}))
			if r := e.record(p.id); len(r.NetworkConfigs) != 0 || r.Origin != "nri" {
				t.Errorf("after the DEL: %+v", r)
			}
			if _, err := os.Stat(filepath.Join(e.runtimeDir, p.id, "netsetup", "netsetup.json")); err != nil && via == "createcontainer" {
				t.Errorf("record copy gone after the DEL: %v", err)
			}
			mustOK(t, "RemovePodSandbox", rt.remove(p))
			e.noRecord(p.id)
		})
	}
}

// TestSweepPidNamespaceChange (issue 16 item 7): a plugin redeployed into
// another pid namespace (pre-installed → a DaemonSet without hostPID) no
// longer sees the pod processes it recorded. The sweep must not take a pid
// it cannot see from the recorded pid namespace for an exited one.
func TestSweepPidNamespaceChange(t *testing.T) {
	e := newEnv(t)
	p := pod{id: "vmnn-pidns", handler: testVMHandler}
	p.pid = podProcessFixture(t, p.id).Process.Pid
	rt := startRuntime(t, e, runtimeOptions{mode: external, pods: []pod{p}})
	mustOK(t, "RunPodSandbox", rt.run(p))
	rec := e.record(p.id)
	if rec.PodPID != p.pid {
		t.Fatalf("pod process %d not recorded (%d)", p.pid, rec.PodPID)
	}
	owned := rec.NetnsPath

	// The plugin goes; a new one, in a pid namespace of its own with its
	// own /proc, takes over with a fast sweep.
	rt.cmd.Process.Kill()
	rt.cmd.Wait()
	e.sweep = "100ms"
	cfg := filepath.Join(rt.dir, "vmnic-nri-pidns.yaml")
	mustOK(t, "config", os.WriteFile(cfg, []byte(e.config()), 0o644))
	startPluginInPidNamespace(t, "--socket", rt.socket, "--idx", "10", "--name", "vmnic", "--config", cfg)
	eventually(t, "three sweeps by the new plugin", func() bool {
		return strings.Count(readLog(e), "msg=sweep ") >= 3
	})
	if _, err := e.store.Get(p.id); err != nil {
		t.Fatalf("the live host-network VM pod was torn down by a plugin that cannot see its pid: %v", err)
	}
	if !isNetns(owned) {
		t.Errorf("its owned netns %s was removed", owned)
	}
	mustOK(t, "RemovePodSandbox", rt.remove(p))
}

// TestVMPodSelection (issue 16 item 11): VM pods are chosen by runtime
// handler; the annotation is honoured only when the configuration opts in.
func TestVMPodSelection(t *testing.T) {
	e := newEnv(t)
	e.vmAnnotation = "" // the default
	rt := startRuntime(t, e, runtimeOptions{mode: preinstalled})
	annotated := vmPod("vmnn-sel-annot", e.fixture("sel-annot"))
	mustOK(t, "RunPodSandbox", rt.run(annotated))
	adj, err := rt.create(annotated, "vmm")
	mustOK(t, "CreateContainer", err)
	if !emptyAdjustment(adj) {
		t.Errorf("an annotated pod got the VMM wiring without the opt-in: %+v", adj)
	}
	e.noRecord(annotated.id)
	byHandler := pod{id: "vmnn-sel-handler", handler: testVMHandler, netns: e.fixture("sel-handler")}
	mustOK(t, "RunPodSandbox", rt.run(byHandler))
	e.record(byHandler.id)
	mustOK(t, "RemovePodSandbox", rt.remove(byHandler))
	mustOK(t, "RemovePodSandbox", rt.remove(annotated))
}

// TestRuntimeDirBounded (issue 16 item 11): a VM pod's runtime dir is a
// tmpfs of its own with the configured size, so the VMM container cannot
// fill the host's /run; it is unmounted at removal, and a mount a crash
// left behind (no record) is found and removed by Synchronize and by the
// pod's RemovePodSandbox.
func TestRuntimeDirBounded(t *testing.T) {
	e := newEnv(t)
	e.extra = "runtimeDirSize: 256Ki"
	// Leftovers of a crash: a sandbox's runtime dir mount without a record,
	// one listed by the runtime (removed at its RemovePodSandbox), one not
	// (removed by the reconcile).
	leftListed := pod{id: "vmnn-rd-left1", handler: testVMHandler, ips: []string{"10.203.0.11"}}
	leftGone := "vmnn-rd-left2"
	for _, id := range []string{leftListed.id, leftGone} {
		dir := filepath.Join(e.runtimeDir, id)
		mustOK(t, "mkdir", os.MkdirAll(dir, 0o700))
		mustOK(t, "mount a leftover tmpfs", unix.Mount("tmpfs", dir, "tmpfs", 0, "size=64k,mode=0700"))
		t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	}
	rt := startRuntime(t, e, runtimeOptions{mode: preinstalled, pods: []pod{leftListed}})
	eventually(t, "the unlisted leftover mount removed", func() bool {
		_, err := os.Lstat(filepath.Join(e.runtimeDir, leftGone))
		return errors.Is(err, os.ErrNotExist)
	})
	mustOK(t, "RemovePodSandbox of the listed leftover", rt.remove(leftListed))
	if isMountPoint(t, filepath.Join(e.runtimeDir, leftListed.id)) {
		t.Errorf("leftover mount of %s still there after its RemovePodSandbox", leftListed.id)
	}

	p := pod{id: "vmnn-rd-pod", handler: testVMHandler, netns: e.fixture("rd-pod")}
	mustOK(t, "RunPodSandbox", rt.run(p))
	_, err := rt.create(p, "vmm")
	mustOK(t, "CreateContainer", err)
	dir := filepath.Join(e.runtimeDir, p.id)
	var st unix.Statfs_t
	mustOK(t, "statfs", unix.Statfs(dir, &st))
	if st.Type != unix.TMPFS_MAGIC || !isMountPoint(t, dir) {
		t.Fatalf("runtime dir %s is not a tmpfs mount of its own (fs type %#x)", dir, st.Type)
	}
	if size := st.Blocks * uint64(st.Bsize); size != 256<<10 {
		t.Errorf("runtime dir size %d bytes, want %d", size, 256<<10)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir mode: %v %v, want 0700", fi, err)
	}
	// The VMM container fills its dir: it stops at the bound.
	big := make([]byte, 512<<10)
	if err := os.WriteFile(filepath.Join(dir, "fill"), big, 0o600); !errors.Is(err, unix.ENOSPC) {
		t.Errorf("writing 512 KiB into a 256 KiB runtime dir: %v, want ENOSPC", err)
	}
	os.Remove(filepath.Join(dir, "fill"))
	if _, err := os.Stat(filepath.Join(dir, "netsetup", "netsetup.json")); err != nil {
		t.Errorf("record copy: %v", err)
	}
	mustOK(t, "RemovePodSandbox", rt.remove(p))
	if isMountPoint(t, dir) {
		t.Errorf("runtime dir %s still mounted after RemovePodSandbox", dir)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("runtime dir %s left: %v", dir, err)
	}
}

// isMountPoint says whether some mount of this mount namespace is at path.
func isMountPoint(t *testing.T, path string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	mustOK(t, "mountinfo", err)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// pidnsExecEnv makes the test binary, started in a new pid and mount
// namespace, mount a /proc of its own and exec the plugin binary it names.
const pidnsExecEnv = "VMNIC_NRI_TEST_PIDNS_EXEC"

// startPluginInPidNamespace runs vmnic-nri (external mode) in a pid
// namespace of its own, with its own /proc: a plugin that cannot see the
// runtime's processes. It is killed at the end of the test.
func startPluginInPidNamespace(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	stderr := &lockedBuffer{}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), pidnsExecEnv+"="+pluginBin)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("plugin (own pid namespace) stderr:\n%s", stderr.String())
		}
	})
	return cmd
}

// pidnsExecMain is the child side of startPluginInPidNamespace: pid 1 of a
// new pid namespace, in a mount namespace that still receives the host's
// mounts, with a /proc of the new pid namespace.
func pidnsExecMain(bin string) int {
	if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		fmt.Fprintln(os.Stderr, "pidns child: make / a slave:", err)
		return 1
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		fmt.Fprintln(os.Stderr, "pidns child: mount /proc:", err)
		return 1
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, pidnsExecEnv+"=") {
			env = append(env, kv)
		}
	}
	err := syscall.Exec(bin, append([]string{bin}, os.Args[1:]...), env)
	fmt.Fprintln(os.Stderr, "pidns child: exec:", err)
	return 1
}

// TestSweepRemovesStrayRuntimeDir (issue 16 item 11, crash safety): a
// runtime dir mount that no record names, made after the last Synchronize
// (a crash between the mount and the record while the plugin stayed
// connected), is unmounted and removed by the sweep once it has been so for
// a while; a live VM pod's is kept.
func TestSweepRemovesStrayRuntimeDir(t *testing.T) {
	e := newEnv(t)
	e.sweep = "200ms"
	rt := startRuntime(t, e, runtimeOptions{mode: preinstalled})
	live := pod{id: "vmnn-stray-live", handler: testVMHandler, netns: e.fixture("stray-live")}
	mustOK(t, "RunPodSandbox", rt.run(live))
	stray := filepath.Join(e.runtimeDir, "vmnn-stray")
	mustOK(t, "mkdir", os.MkdirAll(stray, 0o700))
	mustOK(t, "mount a stray tmpfs", unix.Mount("tmpfs", stray, "tmpfs", 0, "size=64k,mode=0700"))
	t.Cleanup(func() { unix.Unmount(stray, unix.MNT_DETACH) })
	eventually(t, "the sweep removes the stray runtime dir", func() bool {
		_, err := os.Lstat(stray)
		return errors.Is(err, os.ErrNotExist)
	})
	if isMountPoint(t, stray) {
		t.Errorf("stray runtime dir %s still mounted", stray)
	}
	liveDir := filepath.Join(e.runtimeDir, live.id)
	if !isMountPoint(t, liveDir) {
		t.Errorf("the live VM pod's runtime dir %s was removed", liveDir)
	}
	e.record(live.id)
	mustOK(t, "RemovePodSandbox", rt.remove(live))
}
