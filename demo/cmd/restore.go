package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/netsetup"
)

// snapshotRestore is the snapshot-and-restore act (issue 12): a real QEMU
// guest with a NIC is paused (its NICs quiesced, then resumed), saved to a
// file and its network to a manifest; QEMU goes and the sandbox is torn
// down; the manifest is restored into a new sandbox, the NIC added again
// with the snapshot's MAC and IPs through CNI_ARGS, QEMU started from
// vmnicctl restore-args with -incoming, and the guest answers both ways
// without anyone touching its network configuration.
func (d *demo) snapshotRestore() {
	const orig, restored = "demo-snap", "demo-restored"
	n := d.nets[0]

	d.header("Snapshot and restore: boot a guest in sandbox " + orig + ", add eth0, configure it in the guest")
	rec := d.prepare(orig)
	ns := rec.ResolvedNetnsPath()
	bootCtx, cancel := context.WithTimeout(d.ctx, 3*time.Minute)
	defer cancel()
	g, err := qemuguest.Boot(bootCtx, qemuguest.Config{Netns: ns, Logf: func(format string, args ...any) { d.note("qemu: "+format, args...) }})
	d.check(err, "boot QEMU")
	d.guest, d.qemuPID = g, g.PID()
	d.mustExec(nil, d.vmnicctl, d.ctl("attach-vmm", orig, "--kind", "qemu", "--socket", g.QMPSocket())...)
	d.cniAdd(n, ns, "eth0")
	nic, ok := d.record(orig).NIC("eth0")
	if !ok || nic.State != netsetup.NICAttached {
		d.fail("eth0 not attached: %+v", nic)
	}
	ctx, cancel2 := context.WithTimeout(d.ctx, 3*time.Minute)
	defer cancel2()
	ifname, err := g.WaitForMAC(ctx, nic.MAC)
	d.check(err, "NIC with MAC %s in the guest", nic.MAC)
	v4, gw4 := nic.IPsOf(netsetup.IPv4), nic.GatewayFor(netsetup.IPv4)
	if len(v4) == 0 || gw4 == "" {
		d.fail("eth0 has no IPv4 address or gateway: %+v", nic)
	}
	ip := strings.Split(v4[0], "/")[0]
	if out := d.guestRun(fmt.Sprintf("ip addr add %s dev %s && ip link set %s up && ping -c 2 -W 3 %s", v4[0], ifname, ifname, gw4)); received(out) < 2 {
		d.fail("guest → gateway %s before the snapshot", gw4)
	}
	d.ok("the guest configured %s as %s and reaches %s", ifname, v4[0], gw4)

	d.header("Pause the VM: vmnicctl quiesce drops its traffic at the veth (no mirred into a TAP nobody reads), resume puts it back")
	_, err = g.QMP(ctx, "stop", nil)
	d.check(err, "QMP stop")
	d.mustExec(nil, d.vmnicctl, d.ctl("quiesce", orig, "--reason", "VM paused for a snapshot")...)
	if q, _ := d.record(orig).NIC("eth0"); q.State != netsetup.NICQuiesced {
		d.fail("eth0 is %s after quiesce", q.State)
	}
	d.ok("eth0 is quiesced (it resumes to attached)")
	d.mustExec(nil, d.vmnicctl, d.ctl("resume", orig)...)
	d.ok("eth0 is %s again", func() netsetup.NICState { q, _ := d.record(orig).NIC("eth0"); return q.State }())

	d.header("Snapshot: the guest's state to a file (QMP stop + migrate exec:), its network to a manifest (vmnicctl snapshot)")
	state := filepath.Join(d.work, "vm.state")
	manifest := filepath.Join(d.work, "vm.net.json")
	d.check(g.SaveTo(ctx, state), "save the guest")
	d.mustExec(nil, d.vmnicctl, d.ctl("snapshot", orig, "--out", manifest)...)
	data, err := os.ReadFile(manifest)
	d.check(err, "manifest")
	fmt.Print(indent(string(data)))
	d.check(g.Close(), "stop QEMU")
	d.guest = nil
	d.cniDel(n, ns, "eth0")
	d.teardown(orig)
	d.ok("QEMU stopped, the sandbox torn down; the snapshot is %s + %s", state, manifest)

	d.header("Restore into sandbox " + restored + ": vmnicctl restore, then cnitool add asking for the snapshot's MAC and IPs (CNI mac and ips capabilities)")
	d.sandboxes = append(d.sandboxes, restored)
	out := d.mustExec(nil, d.vmnicctl, d.ctl("restore", restored, "--from", manifest)...)
	nsB := strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	capArgs, err := json.Marshal(map[string]any{"mac": nic.MAC, "ips": nic.IPs})
	d.check(err, "capability args")
	d.added = append(d.added, attachment{net: n, netns: nsB, ifname: "eth0"})
	d.mustExec(append(d.cniEnv("eth0"), "CAP_ARGS="+string(capArgs)), d.cnitool, "add", n.name, nsB)
	rn, _ := d.record(restored).NIC("eth0")
	if rn.MAC != nic.MAC {
		d.fail("restored eth0 has MAC %s, the snapshot's is %s", rn.MAC, nic.MAC)
	}
	d.ok("eth0 restored with MAC %s, IPs %v, TAP %s", rn.MAC, rn.IPs, rn.Tap)

	d.header("Start QEMU from vmnicctl restore-args (matching -netdev/-device ids, -incoming); the guest runs on, untouched")
	raw := d.mustExec(nil, d.vmnicctl, d.ctl("restore-args", restored, "--kind", "qemu", "--incoming", "exec:cat "+state, "--json")...)
	var args []string
	d.check(json.Unmarshal([]byte(raw), &args), "restore-args")
	g2, err := qemuguest.Boot(bootCtx, qemuguest.Config{Netns: nsB, Prelaunch: true, ExtraArgs: args,
		Logf: func(format string, args ...any) { d.note("qemu: "+format, args...) }})
	d.check(err, "start QEMU with -incoming")
	d.guest, d.qemuPID = g2, g2.PID()
	d.check(g2.StartRestored(ctx), "restored guest")
	d.mustExec(nil, d.vmnicctl, d.ctl("attach-vmm", restored, "--kind", "qemu", "--socket", g2.QMPSocket())...)
	if an, _ := d.record(restored).NIC("eth0"); an.State != netsetup.NICAttached {
		d.fail("restored eth0 is %s after attach-vmm", an.State)
	}
	if out := d.guestRun(fmt.Sprintf("ping -c 3 -W 3 %s", gw4)); received(out) < 3 {
		d.fail("restored guest → gateway %s lost packets", gw4)
	}
	if out := d.mustExec(nil, "ping", "-n", "-c", "3", "-i", "0.3", "-W", "3", "-w", "15", ip); received(out) < 3 {
		d.fail("host → restored guest lost packets")
	}
	d.ok("the restored guest answers at %s and reaches %s: its network configuration was never touched", ip, gw4)

	d.header("Tear down the restored sandbox and stop QEMU")
	d.check(g2.Close(), "stop QEMU")
	d.guest = nil
	d.cniDel(n, nsB, "eth0")
	d.teardown(restored)
	d.ok("done")
}
