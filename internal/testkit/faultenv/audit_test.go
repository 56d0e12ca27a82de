package faultenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// TestAuditSeesEveryKind proves the audit would notice a leak of each kind
// of resource the soak and the reliability tests count: one of each is
// made, and the audit must report exactly that kind more than before.
func TestAuditSeesEveryKind(t *testing.T) {
	testenv.RequireRoot(t)
	root := t.TempDir()
	bin := filepath.Join(root, "bin")
	must(t, os.MkdirAll(bin, 0o755))
	sleep, err := exec.LookPath("sleep")
	must(t, err)
	fakePlugin := filepath.Join(bin, "vmnic")
	data, err := os.ReadFile(sleep)
	must(t, err)
	must(t, os.WriteFile(fakePlugin, data, 0o755))
	e, err := NewEnv(filepath.Join(root, "env"), &Binaries{Dir: bin, Plugin: fakePlugin, Vmnicctl: "/nonexistent", NRI: "/nonexistent"}, "", 250)
	must(t, err)
	t.Cleanup(func() { e.Close() })
	for _, d := range []string{"sandboxes", "locks"} {
		must(t, os.MkdirAll(filepath.Join(e.StateDir, d), 0o700))
	}
	ns, err := e.NewNetns("audit")
	must(t, err)
	sc := e.Scope()
	sc.OwnFDs = true
	before, err := hostaudit.Take(sc)
	must(t, err)

	steps := []struct {
		kind string
		make func(t *testing.T)
	}{
		{"netns", func(t *testing.T) { _, err := e.NewNetns("audit2"); must(t, err) }}, // also a mount
		{"link", func(t *testing.T) {
			h, err := netnsHandle(ns)
			must(t, err)
			defer h.Close()
			must(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "dummy0"}})) // a bridge needs no extra module
		}},
		{"tap", func(t *testing.T) {
			must(t, cnins.WithNetNSPath(ns, func(cnins.NetNS) error {
				_, err := hostnet.CreateTap(hostnet.TapSpec{Name: "tapx", Owner: -1, Group: -1})
				return err
			}))
		}},
		{"qdisc", func(t *testing.T) {
			h, err := netnsHandle(ns)
			must(t, err)
			defer h.Close()
			l, err := h.LinkByName("dummy0")
			must(t, err)
			must(t, h.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}))
		}},
		{"filter", func(t *testing.T) {
			h, err := netnsHandle(ns)
			must(t, err)
			defer h.Close()
			l, err := h.LinkByName("dummy0")
			must(t, err)
			tap, err := h.LinkByName("tapx")
			must(t, err)
			must(t, h.FilterAdd(&netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Priority: 1, Protocol: unix.ETH_P_ALL},
				Actions: []netlink.Action{netlink.NewMirredAction(tap.Attrs().Index)}}))
		}},
		{"record", func(t *testing.T) {
			must(t, os.WriteFile(filepath.Join(e.StateDir, "sandboxes", "x.json"), []byte("{}"), 0o600))
		}},
		{"lock", func(t *testing.T) { must(t, os.WriteFile(filepath.Join(e.StateDir, "locks", "x.lock"), nil, 0o600)) }},
		{"file", func(t *testing.T) { must(t, os.WriteFile(filepath.Join(e.StateDir, "stray"), nil, 0o600)) }},
		{"dir", func(t *testing.T) { must(t, os.Mkdir(filepath.Join(e.RuntimeDir, "sb"), 0o700)) }},
		{"lease", func(t *testing.T) {
			must(t, os.MkdirAll(filepath.Join(e.IPAMDir, "net"), 0o755))
			must(t, os.WriteFile(filepath.Join(e.IPAMDir, "net", "10.207.250.9"), []byte("ctr\neth0"), 0o644))
		}},
		{"iptables", func(t *testing.T) {
			ipt, err := iptables.New()
			if err != nil {
				t.Skip("no iptables")
			}
			spec := []string{"-i", e.Bridge, "-o", e.Bridge, "-m", "comment", "--comment", "vmnic", "-j", "ACCEPT"}
			must(t, ipt.Append("filter", "FORWARD", spec...))
			t.Cleanup(func() { ipt.Delete("filter", "FORWARD", spec...) })
		}},
		{"proc", func(t *testing.T) {
			cmd := exec.Command(fakePlugin, "30")
			must(t, cmd.Start())
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		}},
		{"fd", func(t *testing.T) {
			f, err := os.Open(os.Args[0])
			must(t, err)
			t.Cleanup(func() { f.Close() })
		}},
	}
	prev := before
	for _, s := range steps {
		s.make(t)
		now, err := hostaudit.Take(sc)
		must(t, err)
		leaked := prev.Leaked(now)
		if leaked[s.kind] == 0 {
			t.Errorf("a leaked %s is not seen by the audit:\n%s", s.kind, prev.Diff(now))
		}
		for k, n := range leaked {
			if n > 0 && k != s.kind && !(s.kind == "netns" && (k == "mount" || k == "link")) && !(s.kind == "proc" && k == "fd") { // a child holds a pidfd
				t.Errorf("making a %s shows up as %d %s", s.kind, n, k)
			}
		}
		prev = now
	}
	if d := before.Diff(prev); !strings.Contains(d, "+ ") {
		t.Error("no difference at all")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
