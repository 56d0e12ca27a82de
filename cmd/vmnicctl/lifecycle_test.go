package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/netsetup"
)

// TestLifecycleCommandErrors: the new commands' refusals say what is wrong.
func TestLifecycleCommandErrors(t *testing.T) {
	c := newCtl(t)
	st, err := netsetup.Open(c.state)
	if err != nil {
		t.Fatal(err)
	}
	rec := netsetup.New("sb-lc")
	rec.PutNIC(netsetup.NIC{ID: "eth0", IfName: "eth0", Tap: "tapeth0", MAC: "02:00:00:00:00:05", State: netsetup.NICPending, HostReady: true, Network: "n"})
	if err := st.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte(`{"kind":"vmnic-snapshot","schema":7}`), 0o600)
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"quiesce", "nosuch"}, 1, "no record"},
		{[]string{"resume", "nosuch"}, 1, "no record"},
		{[]string{"snapshot", "sb-lc"}, 1, "--out FILE is required"},
		{[]string{"snapshot", "nosuch", "--out", "-"}, 1, "no NetSetup record"},
		{[]string{"restore", "sb-new"}, 1, "--from FILE is required"},
		{[]string{"restore", "sb-new", "--from", bad}, 1, "newer than this vmnic reads"},
		{[]string{"restore-args", "sb-lc", "--kind", "qemu"}, 1, "was not prepared for a restore"},
		{[]string{"restore-args", "sb-lc", "--kind", "nope"}, 1, "--kind"},
	} {
		code, out, errOut := c.run(tc.args...)
		if code != tc.code || !strings.Contains(out+errOut, tc.out) {
			t.Errorf("vmnicctl %v: exit %d, %q; want exit %d and %q", tc.args, code, out+errOut, tc.code, tc.out)
		}
	}
	// snapshot to stdout and to a file, read back.
	out := c.ok("snapshot", "sb-lc", "--out", "-")
	if m, err := netsetup.ParseManifest([]byte(out)); err != nil || m.NICs[0].MAC != "02:00:00:00:00:05" {
		t.Errorf("snapshot --out -: %v\n%s", err, out)
	}
	f := filepath.Join(t.TempDir(), "m.json")
	c.ok("snapshot", "sb-lc", "--out", f)
	if m, err := netsetup.ReadManifest(f); err != nil || m.SandboxID != "sb-lc" || m.NICs[0].VMMDeviceID != "eth0" {
		t.Errorf("snapshot --out %s: %+v %v", f, m, err)
	}
}
