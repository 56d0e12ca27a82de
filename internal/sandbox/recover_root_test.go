package sandbox

import (
	"context"
	"errors"
	"fmt"
	"github.com/vishvananda/netlink"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// twoNICs gives e's sandbox netns a second veth, net1, and returns the
// specs of eth0 and net1 for sandbox id.
func (e *env) twoNICs(t *testing.T, id string) []NICSpec {
	t.Helper()
	if netfixture.LinkIn(t, e.netns, "net1") == nil {
		netfixture.Veth(t, e.netns, "net1", e.peer, "peer1", 1400, "02:00:0a:c9:00:06")
		// The address a main plugin would give it (CHECK verifies it).
		netfixture.In(t, e.netns, func() error {
			l, err := netlink.LinkByName("net1")
			if err != nil {
				return err
			}
			a, err := netlink.ParseAddr("10.202.0.5/24")
			if err != nil {
				return err
			}
			return netlink.AddrAdd(l, a)
		})
	}
	s0 := e.spec(id)
	s1 := s0
	s1.IfName, s1.Network = "net1", "vmnict-net2"
	s1.IPs, s1.Gateway = []string{"10.202.0.5/24"}, "10.202.0.1"
	return []NICSpec{s0, s1}
}

// reopen is a Manager on a fresh Store of e's state dir, as every plugin
// run has (Open makes a deleted state dir again).
func (e *env) reopen(t *testing.T) *Manager {
	t.Helper()
	st, err := netsetup.Open(e.state)
	if err != nil {
		t.Fatal(err)
	}
	return New(Config{Store: st, NetnsDir: e.m.NetnsDir, VMMOptions: vmmadapter.Options{CallTimeout: 2 * time.Second, RemoveTimeout: 2 * time.Second}})
}

func TestTapsCarryTheirMarker(t *testing.T) {
	e := newEnv(t)
	for _, s := range e.twoNICs(t, "vmnict-mk1") {
		if _, err := e.m.AddNIC(ctx(t), s); err != nil {
			t.Fatal(err)
		}
	}
	netfixture.In(t, e.netns, func() error {
		taps, err := hostnet.MarkedTaps(hostnet.InstallID(e.m.Store.Dir()))
		if err != nil {
			return err
		}
		if len(taps) != 2 {
			t.Fatalf("marked TAPs: %+v", taps)
		}
		for _, tp := range taps {
			if tp.Sandbox != "vmnict-mk1" || tp.Backend != hostnet.MarkerCNI || !tp.QdiscOwned || tp.Link.Attrs().Name != "tap"+tp.IfName {
				t.Errorf("marker %+v on %s", tp.Marker, tp.Link.Attrs().Name)
			}
		}
		// Another installation sees none of them.
		if other, _ := hostnet.MarkedTaps(hostnet.InstallID("/elsewhere")); len(other) != 0 {
			t.Errorf("another install sees %+v", other)
		}
		return nil
	})
}

// TestTruncatedRecordAtEveryOffsetThenDel cuts a real two-NIC record at
// every byte offset and DELs both NICs: the host ends as before every time.
// It runs in-process through the engine (the same code the plugin binary
// runs; an exec per cut would take minutes), with the offsets shared out to
// a few sandboxes at once: most of a cut's time is the kernel's wait for
// RCU when a TAP is deleted, which sandboxes do not share.
func TestTruncatedRecordAtEveryOffsetThenDel(t *testing.T) {
	const workers = 6
	type worker struct {
		e      *env
		specs  []NICSpec
		scope  hostaudit.Scope
		before hostaudit.Snapshot
		full   []byte // the worker's own whole record (it names its netns)
	}
	ws := make([]*worker, workers)
	for i := range ws {
		e := newEnv(t)
		w := &worker{e: e, specs: e.twoNICs(t, "vmnict-cut"), scope: e.scope()}
		w.scope.Exact = true
		w.before = netfixture.Take(t, w.scope)
		ws[i] = w
	}
	add := func(w *worker) ([]byte, error) {
		for _, s := range w.specs {
			if _, err := w.e.m.AddNIC(context.Background(), s); err != nil {
				return nil, err
			}
		}
		return os.ReadFile(w.e.m.Store.Path("vmnict-cut"))
	}
	for _, w := range ws {
		full, err := add(w)
		if err != nil {
			t.Fatal(err)
		}
		w.full = full
	}
	full := ws[0].full
	cut := func(w *worker, n int, first bool) (quarantined int, err error) {
		if !first {
			if _, err := add(w); err != nil {
				return 0, err
			}
		}
		if err := os.WriteFile(w.e.m.Store.Path("vmnict-cut"), w.full[:n], 0o600); err != nil {
			return 0, err
		}
		for _, s := range w.specs {
			if err := w.e.m.DelNIC(context.Background(), DelSpec{SandboxID: s.SandboxID, ContainerID: s.ContainerID, IfName: s.IfName, NetnsPath: w.e.netns}); err != nil {
				return 0, fmt.Errorf("DEL %s: %w", s.IfName, err)
			}
		}
		qs, _ := w.e.m.Store.Quarantine()
		os.RemoveAll(w.e.m.Store.QuarantineDir())
		after, err := hostaudit.Take(w.scope)
		if err != nil {
			return 0, err
		}
		if d := w.before.Diff(after); d != "" {
			return 0, fmt.Errorf("the host is not as before:\n%s", d)
		}
		return len(qs), nil
	}
	var mu sync.Mutex
	var failures []string
	quarantined := 0
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := i; n <= len(w.full); n += workers {
				q, err := cut(w, n, n == i)
				mu.Lock()
				quarantined += q
				if err != nil {
					failures = append(failures, fmt.Sprintf("cut at %d of %d: %v", n, len(full), err))
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	if len(failures) == 0 && quarantined < len(full)-2 {
		t.Errorf("%d of %d cuts were quarantined", quarantined, len(full))
	}
	t.Logf("%d cuts of a %d-byte two-NIC record, %d quarantined, host clean after each DEL", len(full)+1, len(full), quarantined)
}

// TestUnreadableRecordEngine: each unreadable kind, then ADD of a second
// NIC (the record is rebuilt with the first), CHECK (fails, saying so) and
// DEL of both: host as before.
func TestUnreadableRecordEngine(t *testing.T) {
	for kind, mk := range unreadable() {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			specs := e.twoNICs(t, "vmnict-q")
			if err := os.Remove(e.m.Store.Path("vmnict-q")); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
			before := netfixture.Take(t, e.scope())
			if _, err := e.m.AddNIC(ctx(t), specs[0]); err != nil {
				t.Fatal(err)
			}
			mk(t, e.m.Store.Path("vmnict-q"))
			if _, err := e.m.AddNIC(ctx(t), specs[1]); err != nil {
				t.Fatalf("ADD after the record went bad: %v", err)
			}
			rec, err := e.m.Store.Get("vmnict-q")
			if err != nil || len(rec.NetworkConfigs) != 2 || rec.Quarantined == "" {
				t.Fatalf("record after the rebuild: %+v, %v", rec, err)
			}
			if n, _ := rec.NIC("eth0"); !n.Recovered || n.Tap != "tapeth0" || n.MAC != e.vethMAC || !n.VethQdiscOwned {
				t.Errorf("rebuilt NIC = %+v", n)
			}
			err = e.m.CheckNIC(ctx(t), "vmnict-q", "eth0")
			if err == nil || !strings.Contains(err.Error(), "quarantined") {
				t.Errorf("CHECK of the rebuilt NIC = %v, want a failure saying the record was quarantined", err)
			}
			if err := e.m.CheckNIC(ctx(t), "vmnict-q", "net1"); err != nil {
				t.Errorf("CHECK of the NIC added after the rebuild: %v", err)
			}
			for _, s := range specs {
				if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: s.SandboxID, ContainerID: s.ContainerID, IfName: s.IfName, NetnsPath: e.netns}); err != nil {
					t.Fatal(err)
				}
			}
			if qs, _ := e.m.Store.Quarantine(); len(qs) != 1 || qs[0].Reason == "" {
				t.Errorf("quarantine: %+v", qs)
			}
			os.RemoveAll(e.m.Store.QuarantineDir())
			if d := before.Diff(netfixture.Take(t, e.scope())); d != "" {
				t.Errorf("the host is not as before:\n%s", d)
			}
		})
	}
}

// unreadable makes each kind of unreadable record at path.
func unreadable() map[string]func(t *testing.T, path string) {
	write := func(data string) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return map[string]func(t *testing.T, path string){
		"empty":         write(""),
		"truncated":     func(t *testing.T, path string) { truncate(t, path, 100) },
		"not json":      write("this is not a record\n"),
		"future schema": write(`{"schema": 99, "sandbox_id": "vmnict-q"}`),
		"other id":      write(`{"schema": 2, "sandbox_id": "someone-else", "phase": "prepared", "network_configs": []}`),
		"symlink": func(t *testing.T, path string) {
			target := filepath.Join(t.TempDir(), "target.json")
			if err := os.Rename(path, target); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		},
		"directory": func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		},
	}
}

func truncate(t *testing.T, path string, n int64) {
	t.Helper()
	if err := os.Truncate(path, n); err != nil {
		t.Fatal(err)
	}
}

// TestStateDirLostEngine deletes the state dir under a live two-NIC
// sandbox: DEL still removes what the ADD made.
func TestStateDirLostEngine(t *testing.T) {
	e := newEnv(t)
	specs := e.twoNICs(t, "vmnict-lost")
	before := netfixture.Take(t, hostaudit.Scope{Netns: []string{e.netns}})
	for _, s := range specs {
		if _, err := e.m.AddNIC(ctx(t), s); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.RemoveAll(e.state); err != nil {
		t.Fatal(err)
	}
	m := e.reopen(t)
	for _, s := range specs {
		if err := m.DelNIC(ctx(t), DelSpec{SandboxID: s.SandboxID, ContainerID: s.ContainerID, IfName: s.IfName, NetnsPath: e.netns}); err != nil {
			t.Fatal(err)
		}
	}
	if d := before.Diff(netfixture.Take(t, hostaudit.Scope{Netns: []string{e.netns}})); d != "" {
		t.Errorf("DEL after the state dir was lost left:\n%s", d)
	}
	if ids, _ := m.Store.IDs(); len(ids) != 0 {
		t.Errorf("records left: %v", ids)
	}
}

// TestSweepMarked: GC finds marked TAPs with no record in a netns of the
// netns dir and removes them, and leaves another installation's alone.
func TestSweepMarked(t *testing.T) {
	testenv.RequireRoot(t)
	e := newEnv(t)
	// The sandbox netns must be in the manager's netns dir for the sweep.
	path := netfixture.Netns(t, netfixture.Name("vmnict-w"))
	e.m.NetnsDir = filepath.Dir(path)
	netfixture.Veth(t, path, "eth0", e.peer, "peerw0", 1400, "02:00:0a:c9:00:07")
	netfixture.Veth(t, path, "net1", e.peer, "peerw1", 1400, "02:00:0a:c9:00:08")
	before := netfixture.Take(t, hostaudit.Scope{Netns: []string{path}})

	mine := e.spec("vmnict-sw1")
	mine.NetnsPath = path
	if _, err := e.m.AddNIC(ctx(t), mine); err != nil {
		t.Fatal(err)
	}
	// A second installation (another state dir) in the same netns.
	other := New(Config{Store: mustOpen(t, t.TempDir()), NetnsDir: e.m.NetnsDir})
	theirs := mine
	theirs.SandboxID, theirs.ContainerID, theirs.IfName = "vmnict-sw2", "vmnict-sw2", "net1"
	if _, err := other.AddNIC(ctx(t), theirs); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(e.state); err != nil {
		t.Fatal(err)
	}
	m := e.reopen(t)
	m.NetnsDir = e.m.NetnsDir
	stray, err := m.SweepMarked(ctx(t), false)
	if err != nil || len(stray) != 1 || stray[0].Tap != "tapeth0" || stray[0].Sandbox != "vmnict-sw1" {
		t.Fatalf("SweepMarked = %v, %v", stray, err)
	}
	if netfixture.LinkIn(t, path, "tapeth0") != nil {
		t.Error("the sweep left the unrecorded TAP")
	}
	if netfixture.LinkIn(t, path, "tapnet1") == nil {
		t.Fatal("the sweep removed another installation's TAP")
	}
	if again, err := m.SweepMarked(ctx(t), false); err != nil || len(again) != 0 {
		t.Errorf("second sweep = %v, %v", again, err)
	}
	if err := other.DelNIC(ctx(t), DelSpec{SandboxID: "vmnict-sw2", ContainerID: "vmnict-sw2", IfName: "net1", NetnsPath: path}); err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(netfixture.Take(t, hostaudit.Scope{Netns: []string{path}})); d != "" {
		t.Errorf("the netns is not as before:\n%s", d)
	}
}

func mustOpen(t *testing.T, dir string) *netsetup.Store {
	t.Helper()
	st, err := netsetup.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestDelRemovesUnrecordedMarkedTap: the record lists one NIC, the host
// has a second marked TAP the record does not (an ADD killed before its
// save): DEL of that ifname removes it, and only it.
func TestDelRemovesUnrecordedMarkedTap(t *testing.T) {
	e := newEnv(t)
	specs := e.twoNICs(t, "vmnict-unrec")
	before := netfixture.Take(t, e.scope())
	for _, s := range specs {
		if _, err := e.m.AddNIC(ctx(t), s); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.m.Store.Update(ctx(t), "vmnict-unrec", func(r *netsetup.NetSetup) error {
		r.RemoveNIC("net1")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: "vmnict-unrec", IfName: "net1", NetnsPath: e.netns}); err != nil {
		t.Fatal(err)
	}
	if netfixture.LinkIn(t, e.netns, "tapnet1") != nil {
		t.Fatal("DEL left the unrecorded marked TAP")
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") == nil {
		t.Fatal("DEL of net1 removed eth0's TAP")
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: "vmnict-unrec", IfName: "eth0", NetnsPath: e.netns}); err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(netfixture.Take(t, e.scope())); d != "" {
		t.Errorf("the host is not as before:\n%s", d)
	}
}
