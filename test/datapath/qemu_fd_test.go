package datapath

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// nobody is the unprivileged user QEMU runs as.
var nobody = qemuguest.User{UID: 65534, GID: 65534}

// procStatus returns the fields of /proc/<pid>/status.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

func nsIno(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

// TestQEMUUnprivilegedFdHandoff is issue 13's proof that the VMM needs no
// network privilege: QEMU runs as nobody, with no capability, no
// /dev/net/tun and outside the sandbox netns. NICs hot-added by cnitool
// add (1 and 2 queue pairs) reach it as TAP fds over QMP, come up in the
// guest and ping both ways; cnitool del removes them. The same ADD with
// tapHandoff name fails there (QEMU cannot open the TAP) and rolls back.
func TestQEMUUnprivilegedFdHandoff(t *testing.T) {
	testenv.RequireRoot(t)
	if err := qemuguest.Available(); err != nil {
		testenv.Unavailable(t, "QEMU guest: %v", err)
	}
	testenv.Command(t, "ping")
	testenv.Command(t, "setpriv")
	testenv.Command(t, "unshare")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	id := "vmnd-u-" + randHex(t, 3)
	stateDir := filepath.Join(t.TempDir(), "state")
	var nsPath string
	t.Cleanup(func() {
		if _, err := runCtl(t, stateDir, "teardown", id); err != nil {
			t.Logf("cleanup teardown: %v", err)
		}
		if _, err := os.Stat(nsPath); nsPath != "" && err == nil {
			unix.Unmount(nsPath, unix.MNT_DETACH)
			os.Remove(nsPath)
		}
	})
	mustCtl(t, stateDir, "prepare", id)
	nsPath = record(t, stateDir, id).ResolvedNetnsPath()

	// QEMU in this (the test's) netns, not the sandbox's.
	g, err := qemuguest.Boot(ctx, qemuguest.Config{RunAs: &nobody, CPUs: 2, BootTimeout: 3 * time.Minute, Logf: t.Logf})
	if err != nil {
		t.Fatalf("boot unprivileged QEMU: %v", err)
	}
	t.Cleanup(func() { g.Close() })
	pid := g.PID()
	st := procStatus(t, pid)
	if !strings.HasPrefix(st["Uid"], "65534") || !strings.HasPrefix(st["Gid"], "65534") || st["CapEff"] != "0000000000000000" ||
		st["CapBnd"] != "0000000000000000" || st["NoNewPrivs"] != "1" {
		t.Fatalf("QEMU pid %d is not unprivileged: Uid %s Gid %s CapEff %s CapBnd %s NoNewPrivs %s",
			pid, st["Uid"], st["Gid"], st["CapEff"], st["CapBnd"], st["NoNewPrivs"])
	}
	if nsIno(t, fmt.Sprintf("/proc/%d/ns/net", pid)) == nsIno(t, nsPath) {
		t.Fatal("QEMU runs in the sandbox netns; it must be outside")
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/root/dev/net/tun", pid)); err == nil {
		t.Fatal("QEMU can see /dev/net/tun")
	}
	t.Logf("QEMU pid %d: uid %s, no capabilities, no /dev/net/tun, outside netns %s", pid, st["Uid"], nsPath)
	mustCtl(t, stateDir, "attach-vmm", id, "--kind", "qemu", "--socket", g.QMPSocket())

	type nicCase struct {
		ifname, bridge, subnet string
		queues                 int
	}
	cases := []nicCase{
		{"eth0", "vmnbrfd1", "10.206.21.0/24", 1},
		{"eth1", "vmnbrfd2", "10.206.22.0/24", 2},
	}
	var nets []*network
	var guestIfs []string
	for _, c := range cases {
		deleteHostLinkAtCleanup(t, c.bridge)
		chain := bridgeChain(c.bridge, c.subnet, t.TempDir(), stateDir, c.queues)
		chain[1]["tapHandoff"] = "fd"
		nw := writeNetwork(t, "vmnd-u"+c.ifname, "1.0.0", stateDir, chain)
		nets = append(nets, nw)
		t.Cleanup(func() { nw.cnitool(t, "del", nsPath, c.ifname, "") })
		nw.mustCNI(t, "add", nsPath, c.ifname, "")
		nic, ok := record(t, stateDir, id).NIC(c.ifname)
		if !ok || nic.State != netsetup.NICAttached || nic.Handoff != netsetup.HandoffFd || nic.QueuePairs() != c.queues {
			t.Fatalf("record after ADD of %s: %+v; want attached, handoff fd, %d queue pairs", c.ifname, nic, c.queues)
		}
		ifname, err := g.WaitForMAC(ctx, nic.MAC)
		if err != nil {
			t.Fatalf("NIC %s (MAC %s) never appeared in the guest: %v", c.ifname, nic.MAC, err)
		}
		guestIfs = append(guestIfs, ifname)
		if c.queues > 1 {
			out, err := g.Run(ctx, "ls /sys/class/net/"+ifname+"/queues")
			if err != nil || !strings.Contains(out, "rx-1") || !strings.Contains(out, "tx-1") {
				t.Errorf("guest %s queues: %q %v; want 2 rx and 2 tx queues", ifname, out, err)
			}
		}
		out, err := g.Run(ctx, fmt.Sprintf("ip addr add %s dev %s && ip link set %s up && ping -c 2 -W 3 %s", nic.IPs[0], ifname, ifname, nic.Gateway))
		if err != nil || received(out) < 2 {
			t.Fatalf("guest → gateway ping over %s (%d queue pairs, fd handoff): %v\n%s", c.ifname, c.queues, err, out)
		}
		hostPing(t, mustAddr(t, nic.IPs[0]))
		t.Logf("%s: %d queue pair(s) handed to QEMU as fds, guest %s pings %s and answers the host", c.ifname, c.queues, ifname, nic.Gateway)
	}

	// Name handoff cannot work for this QEMU: the ADD fails and leaves
	// nothing behind.
	deleteHostLinkAtCleanup(t, "vmnbrfd3")
	chain := bridgeChain("vmnbrfd3", "10.206.23.0/24", t.TempDir(), stateDir, 1)
	chain[1]["tapHandoff"] = "name"
	named := writeNetwork(t, "vmnd-uname", "1.0.0", stateDir, chain)
	out, err := named.cnitool(t, "add", nsPath, "eth2", "")
	if err == nil {
		t.Fatalf("ADD with tapHandoff name into an unprivileged QEMU succeeded: %s", out)
	}
	// QEMU's own reason: net/tap-linux.c tap_open cannot open /dev/net/tun.
	if !strings.Contains(err.Error(), "/dev/net/tun") {
		t.Fatalf("ADD with tapHandoff name failed, but not because QEMU cannot open /dev/net/tun: %v", err)
	}
	t.Logf("name handoff refused as it must be: %v", err)
	if _, ok := record(t, stateDir, id).NIC("eth2"); ok {
		t.Error("the failed name-handoff ADD left eth2 in the record")
	}
	if linkExists(t, nsPath, "tapeth2") {
		t.Error("the failed name-handoff ADD left its TAP")
	}
	named.cnitool(t, "del", nsPath, "eth2", "")

	for i, c := range cases {
		nic, _ := record(t, stateDir, id).NIC(c.ifname)
		nets[i].mustCNI(t, "del", nsPath, c.ifname, "")
		if err := g.WaitForLinkGone(ctx, guestIfs[i]); err != nil {
			t.Fatalf("guest still has %s after DEL: %v", guestIfs[i], err)
		}
		if linkExists(t, nsPath, nic.Tap) {
			t.Errorf("TAP %s still in the netns after DEL", nic.Tap)
		}
	}
	if n := len(record(t, stateDir, id).NetworkConfigs); n != 0 {
		t.Errorf("%d NICs recorded after the DELs", n)
	}
	// QEMU let go of every TAP fd with the devices.
	if n := tunFds(t, pid); n != 0 {
		t.Errorf("QEMU still holds %d TUN fds after the DELs", n)
	}
	mustCtl(t, stateDir, "teardown", id)
	if err := g.Close(); err != nil {
		t.Errorf("stop QEMU: %v", err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("QEMU pid %d still running", pid)
	}
}

// tunFds counts the fds of process pid that are TUN/TAP queues.
func tunFds(t *testing.T, pid int) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && target == "/dev/net/tun" {
			n++
		}
	}
	return n
}

// TestQEMUExecVMMBootFds: the pre-boot form. A NIC set up before the VMM
// exists is handed to QEMU at launch: vmnicctl exec-vmm opens its TAP
// queues in the sandbox netns and runs QEMU (as nobody, no capabilities,
// no /dev/net/tun, outside the netns) with them as fd 3… and the
// "-netdev tap,fds=…" arguments. The guest has the NIC at boot and pings
// both ways; vmnicctl keeps no copy of the fds; attach-vmm finds the NIC
// in QEMU, and cnitool del removes it.
func TestQEMUExecVMMBootFds(t *testing.T) {
	testenv.RequireRoot(t)
	if err := qemuguest.Available(); err != nil {
		testenv.Unavailable(t, "QEMU guest: %v", err)
	}
	testenv.Command(t, "ping")
	testenv.Command(t, "setpriv")
	testenv.Command(t, "unshare")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	id := "vmnd-x-" + randHex(t, 3)
	stateDir := filepath.Join(t.TempDir(), "state")
	var nsPath string
	t.Cleanup(func() {
		if _, err := runCtl(t, stateDir, "teardown", id); err != nil {
			t.Logf("cleanup teardown: %v", err)
		}
		if _, err := os.Stat(nsPath); nsPath != "" && err == nil {
			unix.Unmount(nsPath, unix.MNT_DETACH)
			os.Remove(nsPath)
		}
	})
	mustCtl(t, stateDir, "prepare", id)
	nsPath = record(t, stateDir, id).ResolvedNetnsPath()
	deleteHostLinkAtCleanup(t, "vmnbrfd4")
	nw := writeNetwork(t, "vmnd-xeth0", "1.0.0", stateDir, bridgeChain("vmnbrfd4", "10.206.24.0/24", t.TempDir(), stateDir, 2))
	t.Cleanup(func() { nw.cnitool(t, "del", nsPath, "eth0", "") })
	nw.mustCNI(t, "add", nsPath, "eth0", "")
	nic, ok := record(t, stateDir, id).NIC("eth0")
	if !ok || nic.State != netsetup.NICPending || !nic.HostReady {
		t.Fatalf("NIC before the VMM: %+v; want pending, host-ready", nic)
	}

	g, err := qemuguest.Boot(ctx, qemuguest.Config{
		RunAs: &nobody, CPUs: 2, BootTimeout: 3 * time.Minute, Logf: t.Logf,
		Launcher: []string{vmnicctl(t), "--state-dir", stateDir, "exec-vmm", id, "--kind", "qemu", "--"},
	})
	if err != nil {
		t.Fatalf("boot QEMU through exec-vmm: %v", err)
	}
	t.Cleanup(func() { g.Close() })
	if n := tunFds(t, g.PID()); n != 0 {
		t.Errorf("vmnicctl exec-vmm (pid %d) still holds %d TAP fds after starting QEMU", g.PID(), n)
	}
	ifname, err := g.WaitForMAC(ctx, nic.MAC)
	if err != nil {
		t.Fatalf("the NIC passed at launch (MAC %s) is not in the guest: %v", nic.MAC, err)
	}
	out, err := g.Run(ctx, "ls /sys/class/net/"+ifname+"/queues")
	if err != nil || !strings.Contains(out, "rx-1") {
		t.Errorf("guest %s queues: %q %v; want 2 queue pairs", ifname, out, err)
	}
	out, err = g.Run(ctx, fmt.Sprintf("ip addr add %s dev %s && ip link set %s up && ping -c 2 -W 3 %s", nic.IPs[0], ifname, ifname, nic.Gateway))
	if err != nil || received(out) < 2 {
		t.Fatalf("guest → gateway ping over the NIC passed at launch: %v\n%s", err, out)
	}
	hostPing(t, mustAddr(t, nic.IPs[0]))

	mustCtl(t, stateDir, "attach-vmm", id, "--kind", "qemu", "--socket", g.QMPSocket())
	if n, _ := record(t, stateDir, id).NIC("eth0"); n == nil || n.State != netsetup.NICAttached {
		t.Fatalf("NIC after attach-vmm: %+v; want attached (QEMU has it)", n)
	}
	nw.mustCNI(t, "del", nsPath, "eth0", "")
	if err := g.WaitForLinkGone(ctx, ifname); err != nil {
		t.Fatalf("guest still has %s after DEL: %v", ifname, err)
	}
	if linkExists(t, nsPath, nic.Tap) {
		t.Errorf("TAP %s still in the netns after DEL", nic.Tap)
	}
}
