package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/netns"
)

// TestSweepGonePods: containerd sends no StopPodSandbox/RemovePodSandbox for
// pods that existed before it restarted. The plugin's sweep tears down VM
// pods that went without an event — the pod's netns was removed or
// replaced, or (host-network pod, netns owned by vmnic) the pod process
// exited — and leaves live pods, and host-network pods whose process it
// does not know, alone.
func TestSweepGonePods(t *testing.T) {
	for _, m := range modes {
		t.Run(string(m), func(t *testing.T) {
			e := newEnv(t)
			e.sweep = "100ms"
			rt := startRuntime(t, e, runtimeOptions{mode: m})
			sfx := string(m)[:3]

			gone := vmPod("vmnn-sw-gone-"+sfx, e.fixture("sw-gone-"+sfx))
			repl := vmPod("vmnn-sw-repl-"+sfx, e.fixture("sw-repl-"+sfx))
			live := vmPod("vmnn-sw-live-"+sfx, e.fixture("sw-live-"+sfx))
			hostGone := pod{id: "vmnn-sw-hgone-" + sfx, handler: testVMHandler}
			hostGoneProc := podProcessFixture(t, hostGone.id)
			hostGone.pid = hostGoneProc.Process.Pid
			hostLive := pod{id: "vmnn-sw-hlive-" + sfx, handler: testVMHandler}
			hostLive.pid = podProcessFixture(t, hostLive.id).Process.Pid
			hostNoPid := pod{id: "vmnn-sw-hnopid-" + sfx, handler: testVMHandler}
			all := []pod{gone, repl, live, hostGone, hostLive, hostNoPid}
			for _, p := range all {
				mustOK(t, "RunPodSandbox "+p.id, rt.run(p))
				_, err := rt.create(p, "vmm")
				mustOK(t, "CreateContainer "+p.id, err)
			}
			t.Cleanup(func() {
				for _, p := range all {
					rt.remove(p)
				}
			})
			for _, p := range []pod{hostGone, hostLive} {
				if rec := e.record(p.id); rec.PodPID != p.pid || rec.PodPIDStart == 0 {
					t.Fatalf("%s: pod process %d (start %d) recorded, want %d with its start time", p.id, rec.PodPID, rec.PodPIDStart, p.pid)
				}
			}
			if rec := e.record(hostNoPid.id); rec.PodPID != 0 {
				t.Fatalf("%s: pod process %d recorded; the runtime reported none", hostNoPid.id, rec.PodPID)
			}
			ownedGone := e.record(hostGone.id).NetnsPath

			// The pods go without a word to the plugin.
			mustOK(t, "remove netns", netns.Remove(gone.netns))
			mustOK(t, "remove netns", netns.Remove(repl.netns))
			if _, err := netns.Create(filepath.Dir(repl.netns), filepath.Base(repl.netns)); err != nil {
				t.Fatalf("a new netns at the old path: %v", err)
			}
			hostGoneProc.Process.Kill()
			hostGoneProc.Wait()

			for _, p := range []pod{gone, repl, hostGone} {
				// The sweep deletes the record, then the runtime dir: wait
				// for the whole teardown, not just its first half.
				eventually(t, "the sweep tears down "+p.id+" (record and runtime dir)", func() bool {
					_, err := e.store.Get(p.id)
					_, dirErr := os.Stat(filepath.Join(e.runtimeDir, p.id))
					return err != nil && os.IsNotExist(dirErr)
				})
			}
			if _, err := os.Lstat(ownedGone); !os.IsNotExist(err) {
				t.Errorf("owned netns %s of the gone host-network pod left (%v)", ownedGone, err)
			}
			if !isNetns(repl.netns) {
				t.Errorf("the netns now at %s was removed: vmnic never owned it", repl.netns)
			}
			if idx, _ := os.ReadDir(filepath.Join(e.stateDir, "netns")); len(idx) != 3 {
				t.Errorf("netns index entries %v, want the 3 live pods'", names(idx))
			}

			// Live pods stay, sweep after sweep.
			sweeps := strings.Count(readLog(e), "msg=sweep ")
			eventually(t, "two more sweeps", func() bool { return strings.Count(readLog(e), "msg=sweep ") >= sweeps+2 })
			for _, p := range []pod{live, hostLive, hostNoPid} {
				rec := e.record(p.id)
				if !isNetns(rec.NetnsPath) {
					t.Errorf("%s: netns %s removed", p.id, rec.NetnsPath)
				}
				if _, err := os.Stat(filepath.Join(e.runtimeDir, p.id, "netsetup", "netsetup.json")); err != nil {
					t.Errorf("%s: record copy in the runtime dir: %v", p.id, err)
				}
			}

			// Their events still work.
			for _, p := range []pod{live, hostLive, hostNoPid} {
				mustOK(t, "StopPodSandbox "+p.id, rt.stop(p))
				mustOK(t, "RemovePodSandbox "+p.id, rt.remove(p))
				e.noRecord(p.id)
			}
			if ents, _ := os.ReadDir(e.netnsDir); len(ents) != 0 {
				t.Errorf("owned netns left: %v", names(ents))
			}
		})
	}
}

func readLog(e *env) string {
	data, _ := os.ReadFile(e.logFile)
	return string(data)
}

func names(ents []os.DirEntry) []string {
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// podProcessFixture starts a process standing in for a pod's sandbox
// process: in a cgroup named after the sandbox, as containerd and CRI-O
// place it. It is killed and its cgroup removed at the end of the test.
func podProcessFixture(t *testing.T, sandboxID string) *exec.Cmd {
	t.Helper()
	root := cgroupRoot(t)
	dir := filepath.Join(root, sandboxID)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		t.Fatalf("cgroup: %v", err)
	}
	cmd := exec.Command("sleep", "600")
	if err := cmd.Start(); err != nil {
		os.Remove(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill() // a no-op when the test killed it already
		cmd.Wait()
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatalf("move the pod process into %s: %v", dir, err)
	}
	return cmd
}

// cgroupRoot is a cgroup hierarchy the test can make a cgroup in: the
// unified (v2) one, or the v1 pids controller.
func cgroupRoot(t *testing.T) string {
	t.Helper()
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var sfs unix.Statfs_t
		if unix.Statfs(dir, &sfs) == nil && sfs.Type == unix.CGROUP2_SUPER_MAGIC {
			return dir
		}
	}
	for _, dir := range []string{"/sys/fs/cgroup/pids", "/sys/fs/cgroup/systemd"} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err == nil {
			return dir
		}
	}
	// A private mount namespace (the isolation wrapper mounts a fresh
	// /sys) may have no cgroup hierarchy mounted: mount the v2 one, or the
	// v1 pids controller, there.
	if dir, err := mountCgroup(); err == nil {
		return dir
	} else {
		t.Fatalf("no cgroup hierarchy to put a pod process fixture in: %v", err)
	}
	return ""
}

var cgroupMount struct {
	sync.Once
	dir string
	err error
}

func mountCgroup() (string, error) {
	cgroupMount.Do(func() {
		base := "/sys/fs/cgroup"
		if err := unix.Mount("cgroup2", base, "cgroup2", 0, ""); err == nil {
			cgroupMount.dir = base
			return
		}
		if err := unix.Mount("tmpfs", base, "tmpfs", 0, "mode=0755"); err != nil {
			cgroupMount.err = fmt.Errorf("mount a tmpfs on %s: %w", base, err)
			return
		}
		dir := filepath.Join(base, "pids")
		if err := os.Mkdir(dir, 0o755); err != nil {
			cgroupMount.err = err
			return
		}
		if err := unix.Mount("cgroup", dir, "cgroup", 0, "pids"); err != nil {
			cgroupMount.err = fmt.Errorf("mount the cgroup v1 pids controller: %w", err)
			return
		}
		cgroupMount.dir = dir
	})
	return cgroupMount.dir, cgroupMount.err
}
