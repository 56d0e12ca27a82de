package hook

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/netsetup"
)

// TestProcStart: a process is known by pid and start time; a reused pid
// (another start time), an exited process and a zombie are all gone.
func TestProcStart(t *testing.T) {
	self := os.Getpid()
	start, err := procStart(self)
	if err != nil || start == 0 {
		t.Fatalf("procStart(self) = %d, %v", start, err)
	}
	ns, err := pidNamespace()
	if err != nil {
		t.Fatal(err)
	}
	other := netsetup.NetnsID{Dev: ns.Dev, Ino: ns.Ino + 1}
	if gone, why := processGone(self+1<<20, start, other); gone {
		t.Errorf("a pid recorded in another pid namespace judged from this one: gone (%s)", why)
	}
	if gone, why := processGone(self, start, ns); gone {
		t.Errorf("this process taken for gone: %s", why)
	}
	if gone, _ := processGone(self, start+1, ns); !gone {
		t.Error("a pid with another start time (a reused pid) not taken for gone")
	}

	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	cstart, err := procStart(pid)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Process.Kill()
	// Not reaped yet: a zombie is gone too.
	eventuallyTrue(t, "the killed child is a zombie", func() bool { g, _ := processGone(pid, cstart, ns); return g })
	cmd.Wait()
	if gone, why := processGone(pid, cstart, ns); !gone || !strings.Contains(why, "exited") {
		t.Errorf("reaped child: gone=%v (%s)", gone, why)
	}
	if _, err := procStart(0); err == nil {
		t.Error("pid 0 accepted")
	}
}

// TestPodProcess: a pid is used only when the process's cgroup names the
// sandbox (else it may be another process of another pid namespace).
func TestPodProcess(t *testing.T) {
	if proc, why := podProcess(0, "x"); proc.pid != 0 || why == "" {
		t.Errorf("pid 0: got %d (%q)", proc.pid, why)
	}
	if proc, why := podProcess(uint32(os.Getpid()), "vmnn-not-my-cgroup"); proc.pid != 0 || !strings.Contains(why, "cgroup") {
		t.Errorf("a process outside the sandbox's cgroup accepted: %d (%q)", proc.pid, why)
	}
}

// TestSweepEntryGone: how the sweep judges a record (without root: the
// test's own netns stands in for a pod's).
func TestSweepEntryGone(t *testing.T) {
	self, err := netsetup.IdentifyNetns("/proc/self/ns/net")
	if err != nil {
		t.Skipf("cannot identify this process's netns: %v", err)
	}
	other := netsetup.NetnsID{Dev: self.Dev, Ino: self.Ino + 1}
	plain := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	start, _ := procStart(os.Getpid())
	pidns, err := pidNamespace()
	if err != nil {
		t.Fatal(err)
	}
	otherNS := netsetup.NetnsID{Dev: pidns.Dev, Ino: pidns.Ino + 1}
	rec := func(f func(r *netsetup.NetSetup)) *netsetup.NetSetup {
		r := netsetup.New("vmnn-x")
		r.Origin, r.NetnsPath, r.NetnsID = OriginNRI, "/proc/self/ns/net", &self
		f(r)
		return r
	}
	for _, tc := range []struct {
		name  string
		rec   *netsetup.NetSetup
		watch bool
		gone  bool
	}{
		{"live netns", rec(func(*netsetup.NetSetup) {}), true, false},
		{"netns path gone", rec(func(r *netsetup.NetSetup) { r.NetnsPath = plain + ".missing" }), true, true},
		{"netns unmounted", rec(func(r *netsetup.NetSetup) { r.NetnsPath = plain }), true, true},
		{"another netns at the path", rec(func(r *netsetup.NetSetup) { r.NetnsID = &other }), true, true},
		{"not the hook's record", rec(func(r *netsetup.NetSetup) { r.Origin = ""; r.NetnsPath = plain + ".missing" }), false, false},
		{"owned, no pid", rec(func(r *netsetup.NetSetup) { r.NetnsOwned = true; r.NetnsPath = plain + ".missing" }), false, false},
		{"owned, live pid", rec(func(r *netsetup.NetSetup) {
			r.NetnsOwned, r.PodPID, r.PodPIDStart, r.PodPIDNS = true, os.Getpid(), start, &pidns
		}), true, false},
		{"owned, reused pid", rec(func(r *netsetup.NetSetup) {
			r.NetnsOwned, r.PodPID, r.PodPIDStart, r.PodPIDNS = true, os.Getpid(), start+1, &pidns
		}), true, true},
		{"owned, exited pid seen from another pid namespace", rec(func(r *netsetup.NetSetup) {
			r.NetnsOwned, r.PodPID, r.PodPIDStart, r.PodPIDNS = true, 1<<22+7, start, &otherNS
		}), true, false},
		{"owned, pid without its namespace (older record)", rec(func(r *netsetup.NetSetup) {
			r.NetnsOwned, r.PodPID, r.PodPIDStart = true, 1<<22+7, start
		}), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := sweepEntryFor(tc.rec)
			gone, why := e.gone()
			if e.watch != tc.watch || gone != tc.gone {
				t.Errorf("watch=%v gone=%v (%s), want watch=%v gone=%v", e.watch, gone, why, tc.watch, tc.gone)
			}
			if gone && why == "" {
				t.Error("gone without a reason")
			}
		})
	}
}

func eventuallyTrue(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		sleepBriefly()
	}
	t.Fatalf("timed out waiting for: %s", what)
}

func sleepBriefly() { <-time.After(10 * time.Millisecond) }
