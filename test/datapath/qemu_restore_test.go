package datapath

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// TestQEMUSnapshotRestore is issue 12's end-to-end case on a real QEMU
// guest (TCG): a NIC added by cnitool into a running guest, configured in
// the guest, pinged both ways; the guest saved (QMP stop + migrate to a
// file), the sandbox snapshotted (vmnicctl snapshot), QEMU killed and the
// sandbox torn down; the snapshot restored into a new sandbox whose
// snapshot TAP name is taken (so the override is used); an ADD with a
// wrong MAC fails clearly, changing nothing of vmnic's; the ADD with the
// snapshot's MAC and IP through CNI_ARGS; QEMU started from vmnicctl
// restore-args with -incoming; and the guest reachable both ways again
// without touching its network configuration.
func TestQEMUSnapshotRestore(t *testing.T) {
	testenv.RequireRoot(t)
	if err := qemuguest.Available(); err != nil {
		testenv.Unavailable(t, "QEMU guest: %v", err)
	}
	testenv.Command(t, "ping")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	stateDir := filepath.Join(t.TempDir(), "state")
	bridge := "vmnbrd12"
	deleteHostLinkAtCleanup(t, bridge)
	ipamDir := t.TempDir()
	nw := writeNetwork(t, "vmnd-r-"+randHex(t, 3), "1.0.0", stateDir, bridgeChain(bridge, "10.206.12.0/24", ipamDir, stateDir, 0))
	snapDir := t.TempDir()

	// 1. The original sandbox and guest.
	orig := "vmnd-ro-" + randHex(t, 3)
	t.Cleanup(func() { runCtl(t, stateDir, "teardown", orig) })
	mustCtl(t, stateDir, "prepare", orig)
	nsA := record(t, stateDir, orig).ResolvedNetnsPath()
	g, err := qemuguest.Boot(ctx, qemuguest.Config{Netns: nsA, BootTimeout: 3 * time.Minute, Logf: t.Logf, WorkDir: filepath.Join(t.TempDir(), "a")})
	if err != nil {
		t.Fatalf("boot QEMU: %v", err)
	}
	t.Cleanup(func() { g.Close() })
	mustCtl(t, stateDir, "attach-vmm", orig, "--kind", "qemu", "--socket", g.QMPSocket())
	nw.mustCNI(t, "add", nsA, "eth0", "")
	nic, _ := record(t, stateDir, orig).NIC("eth0")
	if nic == nil || nic.State != netsetup.NICAttached || len(nic.IPs) == 0 {
		t.Fatalf("original NIC: %+v", nic)
	}
	ifname, err := g.WaitForMAC(ctx, nic.MAC)
	if err != nil {
		t.Fatalf("NIC never appeared in the guest: %v", err)
	}
	ip, gw, mac := nic.IPs[0], nic.Gateway, nic.MAC
	out, err := g.Run(ctx, fmt.Sprintf("ip addr add %s dev %s && ip link set %s up && ping -c 2 -W 3 %s", ip, ifname, ifname, gw))
	if err != nil || received(out) < 2 {
		t.Fatalf("guest → gateway before the snapshot: %v\n%s", err, out)
	}
	hostPing(t, mustAddr(t, ip))

	// 2. Snapshot: the guest's state to a file, the network to a manifest;
	// then QEMU goes and the sandbox is torn down.
	state := filepath.Join(snapDir, "vm.state")
	if err := g.SaveTo(ctx, state); err != nil {
		t.Fatalf("save the guest: %v", err)
	}
	manifest := filepath.Join(snapDir, "net.json")
	mustCtl(t, stateDir, "snapshot", orig, "--out", manifest)
	g.Close()
	nw.mustCNI(t, "del", nsA, "eth0", "")
	mustCtl(t, stateDir, "teardown", orig)
	man, err := netsetup.ReadManifest(manifest)
	if err != nil || len(man.NICs) != 1 || man.NICs[0].MAC != mac {
		t.Fatalf("manifest: %+v %v", man, err)
	}

	// 3. Restore into a new sandbox, whose snapshot TAP name is taken.
	restored := "vmnd-rr-" + randHex(t, 3)
	t.Cleanup(func() { runCtl(t, stateDir, "teardown", restored) })
	nsB := strings.TrimSpace(strings.SplitN(mustCtl(t, stateDir, "restore", restored, "--from", manifest), "\n", 2)[0])
	if rec := record(t, stateDir, restored); rec.ResolvedNetnsPath() != nsB || rec.Restore == nil {
		t.Fatalf("restored record %+v (netns printed %q)", rec, nsB)
	}
	h := nsHandle(t, nsB)
	blocker := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: man.NICs[0].Tap}, PeerName: "vmnblk0"}
	if err := h.LinkAdd(blocker); err != nil {
		t.Fatalf("take the TAP name %s: %v", man.NICs[0].Tap, err)
	}

	// A wrong MAC: a clear failure, and vmnic made nothing.
	outB, err := nw.cnitool(t, "add", nsB, "eth0", "IgnoreUnknown=1;MAC=02:00:0a:ce:0c:99;IP="+mustAddr(t, ip).String())
	if err == nil || !strings.Contains(err.Error(), "MAC mismatch") || !strings.Contains(err.Error(), "MAC="+mac) {
		t.Fatalf("ADD with a wrong MAC: %v\n%s", err, outB)
	}
	if rec := record(t, stateDir, restored); len(rec.NetworkConfigs) != 0 {
		t.Errorf("a failed ADD left NICs recorded: %+v", rec.NetworkConfigs)
	}
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.Type() == "tuntap" {
			t.Errorf("the failed ADD left TAP %s in the netns", l.Attrs().Name)
		}
	}
	nw.mustCNI(t, "del", nsB, "eth0", "")

	// The ADD with the snapshot's MAC and IP.
	nw.mustCNI(t, "add", nsB, "eth0", "IgnoreUnknown=1;MAC="+mac+";IP="+mustAddr(t, ip).String())
	t.Cleanup(func() { nw.cnitool(t, "del", nsB, "eth0", "") })
	rn, _ := record(t, stateDir, restored).NIC("eth0")
	if rn == nil || rn.MAC != mac || rn.Tap == man.NICs[0].Tap || rn.SnapshotTap != man.NICs[0].Tap {
		t.Fatalf("restored NIC %+v: want MAC %s and a TAP override of %s", rn, mac, man.NICs[0].Tap)
	}

	// 4. QEMU from restore-args, with -incoming.
	var args []string
	raw := mustCtl(t, stateDir, "restore-args", restored, "--kind", "qemu", "--incoming", "exec:cat "+state, "--json")
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		t.Fatalf("restore-args: %v\n%s", err, raw)
	}
	t.Logf("restore-args: %q", args)
	g2, err := qemuguest.Boot(ctx, qemuguest.Config{Netns: nsB, BootTimeout: 3 * time.Minute, Logf: t.Logf, Prelaunch: true,
		ExtraArgs: args, WorkDir: filepath.Join(t.TempDir(), "b")})
	if err != nil {
		t.Fatalf("start QEMU for the restore: %v", err)
	}
	t.Cleanup(func() { g2.Close() })
	if err := g2.StartRestored(ctx); err != nil {
		t.Fatalf("restored guest: %v", err)
	}
	mustCtl(t, stateDir, "attach-vmm", restored, "--kind", "qemu", "--socket", g2.QMPSocket())
	if rn, _ := record(t, stateDir, restored).NIC("eth0"); rn.State != netsetup.NICAttached || rn.VMMDeviceID != man.NICs[0].VMMDeviceID {
		t.Errorf("after attach-vmm the restored NIC is %s with device %q, want attached with %q", rn.State, rn.VMMDeviceID, man.NICs[0].VMMDeviceID)
	}

	// 5. Both ways again, the guest's network configuration untouched.
	out, err = g2.Run(ctx, fmt.Sprintf("ping -c 2 -W 3 %s", gw))
	if err != nil || received(out) < 2 {
		t.Fatalf("restored guest → gateway: %v\n%s", err, out)
	}
	hostPing(t, mustAddr(t, ip))
	t.Logf("restored guest %s (MAC %s, TAP %s for the snapshot's %s) answers and reaches %s", ip, mac, rn.Tap, man.NICs[0].Tap, gw)
	_ = os.Remove(state)
}
