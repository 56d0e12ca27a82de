package hostaudit

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// TestExact: what only an exact snapshot sees (a MAC change, a new state
// directory) and what both see (a qdisc someone added, a TAP's owner).
func TestExact(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	p, err := netns.Create(filepath.Join(dir, "netns"), "vmnha-exact")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Remove(p) })
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	nl, err := HandleAt(p)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 1}}}
	must(t, nl.LinkAdd(br))
	must(t, nl.LinkSetUp(br))

	take := func(exact bool) Snapshot {
		t.Helper()
		s, err := Take(Scope{Netns: []string{p}, StateDirs: []string{state}, Exact: exact})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	steps := []struct {
		name         string
		do           func(t *testing.T)
		exact, loose bool // seen by an exact / a loose snapshot
	}{
		{"mac changed", func(t *testing.T) {
			must(t, nl.LinkSetHardwareAddr(br, net.HardwareAddr{2, 0, 0, 0, 0, 2}))
		}, true, false},
		{"state subdirectory", func(t *testing.T) { must(t, os.Mkdir(filepath.Join(state, "locks"), 0o700)) }, true, false},
		{"lock file", func(t *testing.T) {
			must(t, os.WriteFile(filepath.Join(state, "locks", "x.lock"), nil, 0o600))
		}, true, true},
		{"file mode", func(t *testing.T) { must(t, os.Chmod(filepath.Join(state, "locks", "x.lock"), 0o644)) }, true, true},
		{"clsact qdisc", func(t *testing.T) {
			l, err := nl.LinkByName("br0")
			must(t, err)
			must(t, nl.QdiscAdd(&netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}))
		}, true, true},
		{"netns removed", func(t *testing.T) { must(t, netns.Remove(p)) }, true, true},
	}
	prevExact, prevLoose := take(true), take(false)
	if !prevExact.Contains("link br0 type bridge up mtu") || !prevExact.Contains(" mac 02:00:00:00:00:01 on netns vmnha-exact") {
		t.Fatalf("exact snapshot lacks the bridge or its MAC:\n%s", strings.Join(prevExact, "\n"))
	}
	if prevLoose.Contains(" mac ") {
		t.Errorf("loose snapshot has a MAC:\n%s", strings.Join(prevLoose, "\n"))
	}
	for _, s := range steps {
		s.do(t)
		nowExact, nowLoose := take(true), take(false)
		if got := prevExact.Diff(nowExact) != ""; got != s.exact {
			t.Errorf("%s: exact snapshot saw it: %v, want %v\n%s", s.name, got, s.exact, prevExact.Diff(nowExact))
		}
		if got := prevLoose.Diff(nowLoose) != ""; got != s.loose {
			t.Errorf("%s: loose snapshot saw it: %v, want %v\n%s", s.name, got, s.loose, prevLoose.Diff(nowLoose))
		}
		prevExact, prevLoose = nowExact, nowLoose
	}
	if !prevExact.Contains("netns " + p + " absent") {
		t.Errorf("a removed netns is not listed as absent:\n%s", strings.Join(prevExact, "\n"))
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
