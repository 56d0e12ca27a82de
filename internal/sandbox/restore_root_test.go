package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

const hostNetns = "/proc/self/ns/net"

// restoreWorld is a store and engine, and a snapshot manifest taken of a
// sandbox with one NIC eth0 (MAC snapMAC, IP 10.204.0.5/24).
type restoreWorld struct {
	m     *Manager
	state string
	man   *netsetup.Manifest
	pairs int // the NICs' queue pairs (0: the default, 1)
}

const snapMAC = "02:00:0a:cc:00:05"

func newRestoreWorld(t *testing.T) *restoreWorld {
	t.Helper()
	return newRestoreWorldPairs(t, 0)
}

// newRestoreWorldPairs is newRestoreWorld with NICs of pairs queue pairs.
func newRestoreWorldPairs(t *testing.T, pairs int) *restoreWorld {
	t.Helper()
	testenv.RequireRoot(t)
	st, err := netsetup.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w := &restoreWorld{m: New(Config{Store: st, NetnsDir: t.TempDir()}), state: st.Dir(), pairs: pairs}
	ns := netfixture.Netns(t, netfixture.Name("vmnicr-o"))
	peer := netfixture.Netns(t, netfixture.Name("vmnicr-p"))
	netfixture.Veth(t, ns, "eth0", peer, "peer0", 1500, snapMAC)
	if _, err := w.m.AddNIC(ctx(t), w.spec("vmnicr-orig", ns, "10.204.0.5/24")); err != nil {
		t.Fatalf("AddNIC: %v", err)
	}
	man, err := st.Snapshot("vmnicr-orig")
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	w.man = man
	// The VM is gone: its sandbox is torn down.
	if err := w.m.Teardown(ctx(t), "vmnicr-orig", TeardownOptions{}); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *restoreWorld) spec(id, ns, ip string) NICSpec {
	return NICSpec{SandboxID: id, ContainerID: id, Network: "vmnicr-net", IfName: "eth0", NetnsPath: ns,
		TapOwner: -1, TapGroup: -1, IPs: []string{ip}, Gateway: "10.204.0.1", QueuePairs: w.pairs}
}

// restoreSandbox prepares sandbox id for the restore in a fresh netns
// whose eth0 has mac, its peer named peer in peerNS.
func (w *restoreWorld) restoreSandbox(t *testing.T, id, mac, peerNS, peer string, keepIPs bool) string {
	t.Helper()
	ns := netfixture.Netns(t, netfixture.Name("vmnicr-r"))
	netfixture.Veth(t, ns, "eth0", peerNS, peer, 1500, mac)
	rec, err := w.m.PrepareRestore(ctx(t), id, w.man, RestoreOptions{Prepare: PrepareOptions{NetnsPath: ns}, KeepIPs: keepIPs})
	if err != nil {
		t.Fatalf("PrepareRestore: %v", err)
	}
	if rec.Restore == nil || rec.Restore.From != "vmnicr-orig" || len(rec.Restore.Expected) != 1 || len(rec.NetworkConfigs) != 0 {
		t.Fatalf("restored record %+v", rec)
	}
	// Idempotent for the same manifest.
	if _, err := w.m.PrepareRestore(ctx(t), id, w.man, RestoreOptions{Prepare: PrepareOptions{NetnsPath: ns}, KeepIPs: keepIPs}); err != nil {
		t.Fatalf("second PrepareRestore: %v", err)
	}
	return ns
}

// TestRestoreMatchesADD: an ADD with the snapshot's MAC and IP is matched
// to the expected NIC and its TAP gets the snapshot's name; a wrong MAC or
// IP fails naming the value and how to request it, changing nothing.
func TestRestoreMatchesADD(t *testing.T) {
	w := newRestoreWorld(t)
	peer := netfixture.Netns(t, netfixture.Name("vmnicr-p"))

	ns := w.restoreSandbox(t, "vmnicr-ok", snapMAC, peer, "peer1", true)
	netfixture.In(t, ns, func() error { return addAddr("eth0", "10.204.0.5/24") })
	added, err := w.m.AddNIC(ctx(t), w.spec("vmnicr-ok", ns, "10.204.0.5/24"))
	if err != nil {
		t.Fatalf("AddNIC with the snapshot's MAC and IP: %v", err)
	}
	if added.NIC.Tap != w.man.NICs[0].Tap || added.NIC.SnapshotTap != "" || added.NIC.ID != w.man.NICs[0].ID || added.NIC.L2Bridge != "" {
		t.Errorf("restored NIC %+v, want TAP %s, no override", added.NIC, w.man.NICs[0].Tap)
	}
	if err := w.m.CheckNIC(ctx(t), "vmnicr-ok", "eth0"); err != nil {
		t.Errorf("CHECK: %v", err)
	}

	for _, tc := range []struct {
		name, mac, ip string
		want          []string
	}{
		{"wrong MAC", "02:00:0a:cc:00:99", "10.204.0.5/24", []string{"MAC mismatch", "02:00:0a:cc:00:99", snapMAC, `"mac" capability`, "MAC=" + snapMAC}},
		{"wrong IP", snapMAC, "10.204.0.77/24", []string{"IP mismatch", "10.204.0.77", `"ips" capability`, "IP=10.204.0.5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			peer := netfixture.Netns(t, netfixture.Name("vmnicr-p"))
			id := "vmnicr-" + strings.ReplaceAll(tc.name, " ", "-")
			ns := w.restoreSandbox(t, id, tc.mac, peer, "peer2", true)
			scope := hostaudit.Scope{Netns: []string{ns}, StateDirs: []string{w.state}}
			before := netfixture.Take(t, scope)
			_, err := w.m.AddNIC(ctx(t), w.spec(id, ns, tc.ip))
			if err == nil {
				t.Fatal("AddNIC succeeded")
			}
			for _, s := range tc.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			var e *Error
			if !asError(err, &e) || e.Code != CodeInvalidConfig {
				t.Errorf("error %v: want a CNI error with code %d", err, CodeInvalidConfig)
			}
			if d := before.Diff(netfixture.Take(t, scope)); d != "" {
				t.Errorf("failed ADD changed the host:\n%s", d)
			}
		})
	}
}

func asError(err error, e **Error) bool {
	for err != nil {
		if x, ok := err.(*Error); ok {
			*e = x
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// TestRestoreTapNameTaken: when the snapshot's TAP name is taken in the
// netns, the TAP gets another name and the override is recorded.
func TestRestoreTapNameTaken(t *testing.T) {
	w := newRestoreWorld(t)
	peer := netfixture.Netns(t, netfixture.Name("vmnicr-p"))
	ns := w.restoreSandbox(t, "vmnicr-taken", snapMAC, peer, "peer1", false)
	netfixture.Veth(t, ns, w.man.NICs[0].Tap, peer, "blocker", 1500, "")
	netfixture.In(t, ns, func() error { return addAddr("eth0", "10.204.0.9/24") })
	added, err := w.m.AddNIC(ctx(t), w.spec("vmnicr-taken", ns, "10.204.0.9/24"))
	if err != nil {
		t.Fatalf("AddNIC: %v", err)
	}
	if added.NIC.Tap == w.man.NICs[0].Tap || !strings.HasPrefix(added.NIC.Tap, "tapr") || added.NIC.SnapshotTap != w.man.NICs[0].Tap {
		t.Errorf("NIC %+v: want another TAP and the snapshot's name recorded as the override", added.NIC)
	}
	if netfixture.LinkIn(t, ns, added.NIC.Tap) == nil {
		t.Errorf("TAP %s not made", added.NIC.Tap)
	}
	if err := w.m.CheckNIC(ctx(t), "vmnicr-taken", "eth0"); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := w.m.DelNIC(ctx(t), DelSpec{SandboxID: "vmnicr-taken", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if netfixture.LinkIn(t, ns, added.NIC.Tap) != nil {
		t.Errorf("TAP %s left after DEL", added.NIC.Tap)
	}
}

// TestRestoreClones: two clones of one snapshot share the guest MAC: on
// one host bridge the second is refused; on point-to-point veths both work.
func TestRestoreClones(t *testing.T) {
	w := newRestoreWorld(t)
	br := netfixture.Name("vmnicrbr")
	netfixture.Bridge(t, br)
	for i, mode := range []string{"bridge", "bridge", "ptp", "ptp"} {
		id := "vmnicr-clone" + string(rune('a'+i))
		hostVeth := netfixture.Name("vmr")
		ns := w.restoreSandbox(t, id, snapMAC, hostNetns, hostVeth, false)
		if mode == "bridge" {
			l, err := netlink.LinkByName(hostVeth)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := netlink.LinkByName(br)
			if err := netlink.LinkSetMaster(l, b); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			if l, err := netlink.LinkByName(hostVeth); err == nil {
				netlink.LinkDel(l)
			}
		})
		_, err := w.m.AddNIC(ctx(t), w.spec(id, ns, "10.204.0."+string(rune('5'+i))+"/24"))
		switch {
		case i == 1:
			if err == nil || !strings.Contains(err.Error(), "bridge "+br) || !strings.Contains(err.Error(), "vmnicr-clonea") || !strings.Contains(err.Error(), "ptp") {
				t.Errorf("second clone on bridge %s: %v, want a refusal naming the bridge, the other clone and ptp", br, err)
			}
		case err != nil:
			t.Errorf("clone %d (%s): %v", i, mode, err)
		}
		if i == 0 {
			rec, _ := w.m.Store.Get(id)
			if n, _ := rec.NIC("eth0"); n.L2Bridge != br {
				t.Errorf("clone on the bridge records L2 bridge %q, want %s", n.L2Bridge, br)
			}
		}
	}
}

// TestRestoreClonesRace: clone ADDs of one snapshot race onto one host
// bridge, each held between its MAC check and its record write (a step
// hook at host-ready) so that unserialised checks would all pass: exactly
// one wins, every other fails with the clear error and is rolled back
// (no TAP left); clones on point-to-point veths racing with them all
// succeed; the clone MAC lock leaves no file behind.
func TestRestoreClonesRace(t *testing.T) {
	const onBridge, onPtp = 5, 3
	w := newRestoreWorld(t)
	hold := func(step string) error {
		if step == "host-ready" {
			time.Sleep(100 * time.Millisecond)
		}
		return nil
	}
	m := New(w.m.Config, withHook(hold))
	br := netfixture.Name("vmnicrbr")
	brLink := netfixture.Bridge(t, br)
	type clone struct {
		id, ns string
		bridge bool
	}
	var clones []clone
	for i := range onBridge + onPtp {
		c := clone{id: fmt.Sprintf("vmnicr-race%d", i), bridge: i < onBridge}
		hostVeth := netfixture.Name("vmr")
		c.ns = w.restoreSandbox(t, c.id, snapMAC, hostNetns, hostVeth, false)
		t.Cleanup(func() {
			if l, err := netlink.LinkByName(hostVeth); err == nil {
				netlink.LinkDel(l)
			}
		})
		if c.bridge {
			l, err := netlink.LinkByName(hostVeth)
			if err != nil {
				t.Fatal(err)
			}
			if err := netlink.LinkSetMaster(l, brLink); err != nil {
				t.Fatal(err)
			}
		}
		clones = append(clones, c)
	}
	errs := make([]error, len(clones))
	var wg sync.WaitGroup
	for i, c := range clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.AddNIC(ctx(t), w.spec(c.id, c.ns, fmt.Sprintf("10.204.0.%d/24", 10+i)))
		}()
	}
	wg.Wait()
	won := 0
	for i, c := range clones {
		err := errs[i]
		switch {
		case !c.bridge && err != nil:
			t.Errorf("ptp clone %s: %v", c.id, err)
		case c.bridge && err == nil:
			won++
		case c.bridge:
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeInvalidConfig || !strings.Contains(err.Error(), "already on bridge "+br) || !strings.Contains(err.Error(), "ptp") {
				t.Errorf("losing clone %s: %v, want the clear refusal (code %d) naming bridge %s and ptp", c.id, err, CodeInvalidConfig, br)
			}
			if l := netfixture.LinkIn(t, c.ns, w.man.NICs[0].Tap); l != nil {
				t.Errorf("losing clone %s left its TAP %s", c.id, w.man.NICs[0].Tap)
			}
		}
	}
	if won != 1 {
		t.Errorf("%d clones on bridge %s were added, want exactly 1 (errors: %v)", won, br, errs[:onBridge])
	}
	if _, err := os.Stat(filepath.Join(w.state, "clone-macs")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("clone MAC lock directory left in the state dir: %v", err)
	}
}
