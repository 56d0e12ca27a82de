package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
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

// TestRestoreVMMCommand: restore-vmm restores a Cloud Hypervisor simulator
// (spec-validated) from a snapshot directory whose config.json has the
// NIC by its TAP name, and records the VMM and the NIC attached with the
// snapshot's device id (handoff name); restore-args with --source-url then
// has no note about fds. (The fd case, which needs TAPs, is
// internal/sandbox TestRestoreVMMCloudHypervisor.)
func TestRestoreVMMCommand(t *testing.T) {
	c := newCtl(t)
	st, err := netsetup.Open(c.state)
	if err != nil {
		t.Fatal(err)
	}
	const mac = "02:00:00:00:00:05"
	rec := netsetup.New("sb-rs")
	rec.Restore = &netsetup.Restore{From: "sb-old", Expected: []netsetup.SnapNIC{{ID: "eth0", IfName: "eth0", MAC: mac, VMMDeviceID: "eth0", Tap: "tapeth0", NumQueues: 2}}}
	rec.PutNIC(netsetup.NIC{ID: "eth0", IfName: "eth0", Tap: "tapeth0", MAC: mac, State: netsetup.NICPending, HostReady: true, NumQueues: 2})
	if err := st.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := vmmsim.WriteCHSnapshotConfig(dir, []vmmsim.CHNet{{ID: "eth0", Tap: "tapeth0", MAC: mac, NumQueues: 2, QueueSize: 256}}); err != nil {
		t.Fatal(err)
	}
	sim := vmmsim.NewCH(t, vmmsim.CHConfig{State: vmmsim.CHNotCreated})
	code, args, errOut := c.run("restore-args", "sb-rs", "--kind", "cloud-hypervisor", "--source-url", "file://"+dir)
	if code != 0 || strings.Contains(errOut, "note") || strings.Contains(errOut, "missing") || !strings.Contains(args, "vm.restore") || strings.Contains(args, "net_fds") {
		t.Errorf("restore-args for a NIC CH reopens by name: exit %d\n%s%s", code, args, errOut)
	}
	out := c.ok("restore-vmm", "sb-rs", "--kind", "cloud-hypervisor", "--socket", sim.Socket(), "--source-url", "file://"+dir, "--resume", "--json")
	var got netsetup.NetSetup
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	n, _ := got.NIC("eth0")
	if n.State != netsetup.NICAttached || n.VMMDeviceID != "eth0" || n.Handoff != netsetup.HandoffName || got.VMM == nil || got.VMM.APISocket != sim.Socket() {
		t.Errorf("after restore-vmm: NIC %+v, VMM %+v", n, got.VMM)
	}
	if sim.State() != vmmsim.CHRunning || len(sim.Net()) != 1 || sim.Net()[0].Tap != "tapeth0" {
		t.Errorf("simulated VM %s, net %+v", sim.State(), sim.Net())
	}
	if v := sim.Violations(); len(v) > 0 {
		t.Errorf("spec violations: %v", v)
	}
}
