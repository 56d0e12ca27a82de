package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
)

type ctl struct {
	t               *testing.T
	state, netnsDir string
}

func newCtl(t *testing.T) *ctl {
	// The tests' VMM simulators keep their API sockets in temp dirs.
	t.Setenv("VMNIC_VMM_SOCKET_DIRS", os.TempDir())
	return &ctl{t: t, state: t.TempDir(), netnsDir: t.TempDir()}
}

// run runs vmnicctl with the test's dirs; globals go after the command to
// check that they are taken there too.
func (c *ctl) run(args ...string) (int, string, string) {
	c.t.Helper()
	var so, se bytes.Buffer
	full := append([]string{"--state-dir", c.state}, args...)
	full = append(full, "--netns-dir", c.netnsDir)
	code := run(full, &so, &se)
	return code, so.String(), se.String()
}

func (c *ctl) ok(args ...string) string {
	c.t.Helper()
	code, out, errOut := c.run(args...)
	if code != 0 {
		c.t.Fatalf("vmnicctl %v: exit %d\n%s%s", args, code, out, errOut)
	}
	return out
}

func TestUsageAndErrors(t *testing.T) {
	c := newCtl(t)
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{nil, 2, "usage"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"show"}, 2, "want 1 argument"},
		{[]string{"show", "a", "b"}, 2, "want 1 argument"},
		{[]string{"show", "nosuch"}, 1, "no NetSetup record"},
		{[]string{"show", "../x"}, 1, "only letters"},
		{[]string{"vmm-args", "x", "--kind", "bochs"}, 1, "unknown VMM kind"},
		{[]string{"attach-vmm", "x", "--kind", "qemu"}, 1, "--socket is required"},
		{[]string{"restore-vmm", "x", "--kind", "cloud-hypervisor"}, 1, "--socket is required"},
		{[]string{"restore-vmm", "x", "--kind", "cloud-hypervisor", "--socket", "/s"}, 1, "--source-url file:///DIR is required"},
		{[]string{"restore-vmm", "x", "--kind", "qemu", "--socket", "/s", "--source-url", "file:///d"}, 1, "cloud-hypervisor only"},
	} {
		var so, se bytes.Buffer
		args := tc.args
		if len(args) > 0 {
			args = append([]string{"--state-dir", c.state}, args...)
		}
		code := run(args, &so, &se)
		if code != tc.code || !strings.Contains(so.String()+se.String(), tc.out) {
			t.Errorf("vmnicctl %v: exit %d %q %q, want %d with %q", tc.args, code, so.String(), se.String(), tc.code, tc.out)
		}
	}
	var so, se bytes.Buffer
	if code := run([]string{"help"}, &so, &se); code != 0 || !strings.Contains(so.String(), "vmm-args") {
		t.Errorf("help: %d %q", code, so.String())
	}
}

// writeRecord stores a record with one host-ready NIC (no root needed).
func writeRecord(t *testing.T, state, id string) { writeRecordQ(t, state, id, 4) }

func writeRecordQ(t *testing.T, state, id string, net1Queues int) {
	t.Helper()
	writeRecordQS(t, state, id, net1Queues, 512)
}

// writeRecordQS writes a record whose NIC net1 has net1Queues queues of
// size net1QSize (Firecracker takes only 256).
func writeRecordQS(t *testing.T, state, id string, net1Queues, net1QSize int) {
	t.Helper()
	st, err := netsetup.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	rec := netsetup.New(id)
	rec.NetnsPath = "/var/run/netns/" + id
	rec.PutNIC(netsetup.NIC{ID: "net1", IfName: "net1", Tap: "tapnet1", MAC: "02:00:00:00:00:02", MTU: 1400, NumQueues: net1Queues, QueueSize: net1QSize,
		IPs: []string{"10.211.0.5/24"}, Gateway: "10.211.0.1", State: netsetup.NICPending, HostReady: true, Network: "b",
		TapHandoff: netsetup.HandoffName, DataPath: "bpf"}) // no real TAP behind these records: the VMM gets the name
	rec.PutNIC(netsetup.NIC{ID: "eth0", IfName: "eth0", Tap: "tapeth0", MAC: "02:00:00:00:00:01", MTU: 1500, NumQueues: 2, QueueSize: 256,
		IPs: []string{"10.201.0.5/24"}, Gateway: "10.201.0.1", State: netsetup.NICPending, HostReady: true, Network: "a",
		TapHandoff: netsetup.HandoffName})
	if err := st.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
}

func TestShowListJSON(t *testing.T) {
	c := newCtl(t)
	writeRecord(t, c.state, "vmnict-show")
	out := c.ok("show", "vmnict-show")
	for _, want := range []string{"vmnict-show", "configured", "tapeth0", "tapnet1", "10.201.0.5/24", "02:00:00:00:00:02"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "tapeth0") > strings.Index(out, "tapnet1") {
		t.Errorf("eth0 not listed first:\n%s", out)
	}
	// The data path column: eth0's record has none (u32), net1's says bpf.
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 5 && (f[0] == "eth0" && f[5] != "u32" || f[0] == "net1" && f[5] != "bpf") {
			t.Errorf("data path column of %s: %q\n%s", f[0], f[5], out)
		}
	}
	var rec netsetup.NetSetup
	if err := json.Unmarshal([]byte(c.ok("show", "vmnict-show", "--json")), &rec); err != nil || len(rec.NetworkConfigs) != 2 {
		t.Errorf("show --json: %v %+v", err, rec)
	}
	list := c.ok("list")
	if !strings.Contains(list, "SANDBOX") || !strings.Contains(list, "vmnict-show") || !strings.Contains(list, "configured") {
		t.Errorf("list:\n%s", list)
	}
	var recs []netsetup.NetSetup
	if err := json.Unmarshal([]byte(c.ok("list", "--json")), &recs); err != nil || len(recs) != 1 {
		t.Errorf("list --json: %v %+v", err, recs)
	}
	empty := newCtl(t)
	if out := empty.ok("list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("empty list --json = %q", out)
	}
}

func TestVMMArgs(t *testing.T) {
	c := newCtl(t)
	writeRecord(t, c.state, "vmnict-args")
	ch := c.ok("vmm-args", "vmnict-args", "--kind", "ch")
	if !strings.HasPrefix(ch, "--net ") || !strings.Contains(ch, "tap=tapeth0") || !strings.Contains(ch, "num_queues=4") ||
		strings.Index(ch, "tapeth0") > strings.Index(ch, "tapnet1") {
		t.Errorf("cloud-hypervisor args: %s", ch)
	}
	q := c.ok("vmm-args", "vmnict-args", "--kind", "qemu", "--json")
	var qa []string
	if err := json.Unmarshal([]byte(q), &qa); err != nil || len(qa) != 8 || qa[0] != "-netdev" || !strings.Contains(qa[1], "ifname=tapeth0") {
		t.Errorf("qemu args: %v %q", err, q)
	}
	rp := c.ok("vmm-args", "vmnict-args", "--kind", "qemu", "--root-ports", "2", "--json")
	var rpa []string
	if err := json.Unmarshal([]byte(rp), &rpa); err != nil || len(rpa) != 12 || rpa[9] != "pcie-root-port,id=vmnic-rp0,bus=pcie.0,chassis=64,slot=0" {
		t.Errorf("qemu args with root ports: %v %q", err, rp)
	}
	// Firecracker opens TAPs single-queue: a multiqueue NIC is refused.
	if code, _, errOut := c.run("vmm-args", "vmnict-args", "--kind", "fc"); code != 1 || !strings.Contains(errOut, "single-queue") {
		t.Errorf("firecracker with a multiqueue NIC: %d %s", code, errOut)
	}
	writeRecordQ(t, c.state, "vmnict-fcq", 2)
	if code, _, errOut := c.run("vmm-args", "vmnict-fcq", "--kind", "firecracker", "--fc-version", "1.16.1"); code != 1 || !strings.Contains(errOut, "queueSize 512") {
		t.Errorf("firecracker with queueSize 512: %d %s", code, errOut)
	}
	writeRecordQS(t, c.state, "vmnict-fc", 2, 256)
	fc := c.ok("vmm-args", "vmnict-fc", "--kind", "firecracker", "--fc-version", "1.16.1")
	var ifaces []map[string]any
	if err := json.Unmarshal([]byte(fc), &ifaces); err != nil || len(ifaces) != 2 || ifaces[0]["host_dev_name"] != "tapeth0" || ifaces[0]["guest_mac"] != "02:00:00:00:00:01" {
		t.Errorf("firecracker JSON: %v %s", err, fc)
	}
}

func TestAttachVMM(t *testing.T) {
	c := newCtl(t)
	writeRecord(t, c.state, "vmnict-att")
	sim := vmmsim.NewCH(t, vmmsim.CHConfig{State: vmmsim.CHRunning})
	out := c.ok("attach-vmm", "vmnict-att", "--kind", "cloud-hypervisor", "--socket", sim.Socket(), "--json")
	var rec netsetup.NetSetup
	if err := json.Unmarshal([]byte(out), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.VMM == nil || rec.VMM.Kind != "cloud-hypervisor" || !rec.VMM.Booted || rec.VMM.APISocket != sim.Socket() {
		t.Errorf("VMM %+v", rec.VMM)
	}
	for _, n := range rec.NetworkConfigs {
		if n.State != netsetup.NICAttached || n.VMMDeviceID == "" {
			t.Errorf("NIC %+v not attached", n)
		}
	}
	if nets := sim.Net(); len(nets) != 2 {
		t.Errorf("VMM nets %+v", nets)
	}
	// A VMM that is not there: the error says so, the record keeps its VMM.
	code, _, errOut := c.run("attach-vmm", "vmnict-att", "--kind", "qemu", "--socket", t.TempDir()+"/none.sock")
	if code != 1 || !strings.Contains(errOut, "qemu") {
		t.Errorf("attach to a missing VMM: %d %s", code, errOut)
	}
}

func TestPrepareTeardownGC(t *testing.T) {
	testenv.RequireRoot(t)
	c := newCtl(t)
	path := strings.TrimSpace(c.ok("prepare", "vmnict-p1", "--pod-name", "web", "--pod-namespace", "default"))
	if path != c.netnsDir+"/vmnic-vmnict-p1" {
		t.Fatalf("prepare printed %q", path)
	}
	if again := strings.TrimSpace(c.ok("prepare", "vmnict-p1")); again != path {
		t.Errorf("second prepare printed %q", again)
	}
	if _, err := netsetup.IdentifyNetns(path); err != nil {
		t.Fatal(err)
	}
	show := c.ok("show", "vmnict-p1")
	for _, want := range []string{"prepared", "(owned)", "default/web"} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %q:\n%s", want, show)
		}
	}
	// An orphan netns, and a sandbox whose adopted netns is gone.
	orphan, err := netns.Create(c.netnsDir, "vmnic-vmnict-orphan")
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := netns.Create(t.TempDir(), "adopted")
	if err != nil {
		t.Fatal(err)
	}
	c.ok("prepare", "vmnict-p2", "--netns", adopted)
	if err := netns.Remove(adopted); err != nil {
		t.Fatal(err)
	}
	dry := c.ok("gc", "--dry-run")
	if !strings.Contains(dry, orphan) || !strings.Contains(dry, "vmnict-p2") || strings.Contains(dry, "vmnict-p1") {
		t.Errorf("gc --dry-run:\n%s", dry)
	}
	if _, err := os.Lstat(orphan); err != nil {
		t.Errorf("dry run removed the orphan: %v", err)
	}
	c.ok("gc")
	if _, err := os.Lstat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphan netns after gc: %v", err)
	}
	if code, _, _ := c.run("show", "vmnict-p2"); code != 1 {
		t.Error("record with a gone netns kept by gc")
	}
	c.ok("show", "vmnict-p1")
	c.ok("teardown", "vmnict-p1")
	c.ok("teardown", "vmnict-p1")
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("netns after teardown: %v", err)
	}
	if out := c.ok("list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("records left: %s", out)
	}
}

// TestFirecrackerGuestNotes: a NIC hot-added into Firecracker is recorded
// with the step the guest must take, show prints it, and guest-acked
// records the guest's release of a NIC.
func TestFirecrackerGuestNotes(t *testing.T) {
	c := newCtl(t)
	writeRecordQS(t, c.state, "vmnict-fcn", 2, 256)
	sim := vmmsim.NewFC(t, vmmsim.FCConfig{Version: "1.16.1", PCI: true, State: vmmsim.FCRunning})
	c.ok("attach-vmm", "vmnict-fcn", "--kind", "fc", "--socket", sim.Socket())
	show := c.ok("show", "vmnict-fcn")
	if !strings.Contains(show, "eth0: Firecracker sends the guest no hot-plug notification: the guest must rescan its PCI bus") {
		t.Errorf("show does not print the rescan note:\n%s", show)
	}
	if code, _, errOut := c.run("guest-acked", "vmnict-fcn", "nosuch"); code != 1 || !strings.Contains(errOut, "no NIC nosuch") {
		t.Errorf("guest-acked for a missing NIC: %d %s", code, errOut)
	}
	var rec netsetup.NetSetup
	if err := json.Unmarshal([]byte(c.ok("guest-acked", "vmnict-fcn", "eth0", "--json")), &rec); err != nil {
		t.Fatal(err)
	}
	if n, ok := rec.NIC("eth0"); !ok || !n.GuestAcked {
		t.Errorf("guest-acked not recorded: %+v", rec.NetworkConfigs)
	}
	c.ok("guest-acked", "vmnict-fcn", "eth0") // idempotent
}

// TestListShowQuarantined: an unreadable record is quarantined by list
// (one line for it, a warning, exit 0) and show says what became of it.
func TestListShowQuarantined(t *testing.T) {
	c := newCtl(t)
	writeRecord(t, c.state, "good")
	if err := os.WriteFile(c.state+"/sandboxes/bad.json", []byte(`{"schema": 2, "sandbox_id": "ba`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := c.run("list")
	if code != 0 || !strings.Contains(out, "good") || !strings.Contains(out, "bad") || !strings.Contains(out, "quarantined") || !strings.Contains(errOut, "warning") {
		t.Fatalf("list: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = c.run("list", "--json")
	var recs []netsetup.NetSetup
	if code != 0 || json.Unmarshal([]byte(out), &recs) != nil || len(recs) != 1 || !strings.Contains(errOut, "quarantined: sandbox bad") {
		t.Fatalf("list --json: exit %d\n%s%s", code, out, errOut)
	}
	code, _, errOut = c.run("show", "bad")
	if code != 0 || !strings.Contains(errOut, "quarantine") {
		t.Fatalf("show of a quarantined sandbox: exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(c.state + "/sandboxes/bad.json"); !os.IsNotExist(err) {
		t.Fatalf("the unreadable record is still in place: %v", err)
	}
}

// TestVMMArgsFds: vmm-args --fds prints the fd handoff form with the fd
// numbers exec-vmm gives (3 on, one per queue pair, in NIC order), and
// refuses it for Firecracker, which takes no fds.
func TestVMMArgsFds(t *testing.T) {
	c := newCtl(t)
	writeRecord(t, c.state, "vmnict-fds")
	var ch []string
	if err := json.Unmarshal([]byte(c.ok("vmm-args", "vmnict-fds", "--kind", "ch", "--fds", "--json")), &ch); err != nil {
		t.Fatal(err)
	}
	want := []string{"--net", "fd=[3],mac=02:00:00:00:00:01,num_queues=2,queue_size=256,id=eth0", "fd=[4,5],mac=02:00:00:00:00:02,num_queues=4,queue_size=512,id=net1"}
	if strings.Join(ch, " ") != strings.Join(want, " ") {
		t.Errorf("cloud-hypervisor --fds args:\n%q\nwant\n%q", ch, want)
	}
	var q []string
	if err := json.Unmarshal([]byte(c.ok("vmm-args", "vmnict-fds", "--kind", "qemu", "--fds", "--json")), &q); err != nil {
		t.Fatal(err)
	}
	if len(q) != 8 || q[1] != "tap,id=netdev-eth0,fd=3,vhost=off" || q[5] != "tap,id=netdev-net1,fds=4:5,vhost=off" {
		t.Errorf("qemu --fds args: %q", q)
	}
	writeRecordQS(t, c.state, "vmnict-fcfd", 2, 256)
	if code, _, errOut := c.run("vmm-args", "vmnict-fcfd", "--kind", "fc", "--fds"); code != 1 || !strings.Contains(errOut, "does not take TAP fds") {
		t.Errorf("firecracker --fds: %d %s", code, errOut)
	}
	if code, _, errOut := c.run("exec-vmm", "vmnict-fcfd", "--kind", "fc", "--", "true"); code != 1 || !strings.Contains(errOut, "does not take TAP fds") {
		t.Errorf("exec-vmm --kind fc: %d %s", code, errOut)
	}
	if code, _, errOut := c.run("exec-vmm", "vmnict-fds", "--kind", "ch"); code != 1 || !strings.Contains(errOut, "vmm command") {
		t.Errorf("exec-vmm without a command: %d %s", code, errOut)
	}
}
