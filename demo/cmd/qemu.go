package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/netsetup"
)

// agentHook is the guest's boot step: mount the record's live copy (shared
// read-only over virtio-9p, tag "vmnic") and run the guest agent on it.
const agentHook = `#!/bin/sh
mkdir -p /mnt/vmnic
mount -t 9p -o trans=virtio,version=9p2000.L,ro vmnic /mnt/vmnic || echo "vmnic-guest: mounting the record copy failed"
/bin/vmnic-guest-agent -config /mnt/vmnic/` + netsetup.MirrorFile + ` >/run/vmnic-agent.log 2>&1 &
`

// realGuest: a QEMU guest (TCG) boots in a prepared sandbox with zero NICs,
// the sandbox's runtime dir (with the record's live copy) shared into it;
// vmnic hot-adds a dual-stack NIC on cnitool add; vmnicctl guest-config
// shows what the guest gets; the guest's agent applies the json form from
// the live copy and the guest pings both gateways; cnitool del hot-removes
// the NIC; teardown leaves nothing.
func (d *demo) realGuest() {
	const id = "demo-vm"

	d.header("Real QEMU guest: prepare sandbox " + id + " (with a runtime dir) and boot QEMU in its netns with zero NICs")
	rt := filepath.Join(d.work, "runtime-"+id)
	d.check(os.Mkdir(rt, 0o700), "runtime dir")
	rec := d.prepare(id, "--runtime-dir", rt)
	ns := rec.ResolvedNetnsPath()
	copyDir := filepath.Join(rt, netsetup.MirrorDir)
	d.ok("the record's live copy is %s; QEMU shares %s read-only into the guest", rec.MirrorPath(), copyDir)
	agent, err := os.ReadFile(d.guestAgent)
	d.check(err, "guest agent (make build makes bin/vmnic-guest-agent)")
	bootCtx, cancel := context.WithTimeout(d.ctx, 3*time.Minute)
	defer cancel()
	d.note("booting QEMU (TCG, Debian kernel, busybox initramfs with vmnic-guest-agent, -nic none) inside %s …", ns)
	g, err := qemuguest.Boot(bootCtx, qemuguest.Config{
		Netns:     ns,
		Logf:      func(format string, args ...any) { d.note("qemu: "+format, args...) },
		ExtraArgs: []string{"-virtfs", "local,path=" + copyDir + ",mount_tag=vmnic,security_model=none,readonly=on"},
		ExtraFiles: []qemuguest.File{
			{Path: "bin/vmnic-guest-agent", Mode: 0o755, Data: agent},
			{Path: "etc/vmnic-init.d/50-vmnic-agent", Mode: 0o755, Data: []byte(agentHook)},
		},
	})
	d.check(err, "boot QEMU")
	d.guest, d.qemuPID = g, g.PID()
	d.ok("guest booted in %s (QEMU pid %d, QMP %s)", g.BootTime().Round(time.Millisecond), g.PID(), g.QMPSocket())
	links := d.guestRun("ls /sys/class/net")
	if strings.TrimSpace(links) != "lo" {
		d.fail("the guest should have no NIC yet, has: %s", links)
	}
	d.ok("the guest has no NIC: only lo")

	d.header("Attach the VMM to the sandbox (vmnicctl attach-vmm)")
	d.mustExec(nil, d.vmnicctl, d.ctl("attach-vmm", id, "--kind", "qemu", "--socket", g.QMPSocket())...)
	rec = d.record(id)
	if rec.VMM == nil || rec.VMM.Kind != "qemu" {
		d.fail("record has no qemu VMM after attach-vmm: %+v", rec.VMM)
	}
	d.ok("record: vmm %s at %s, booted %v", rec.VMM.Kind, rec.VMM.APISocket, rec.VMM.Booted)

	d.header("cnitool add eth0: vmnic hot-adds the NIC into the running guest")
	d.cniAdd(d.nets[0], ns, "eth0")
	d.show(id)
	rec = d.record(id)
	nic, ok := rec.NIC("eth0")
	if !ok || nic.State != netsetup.NICAttached || nic.VMMDeviceID == "" {
		d.fail("record after ADD with a running VMM: %+v; want eth0 attached with a device id", rec.NetworkConfigs)
	}
	d.ok("record: eth0 %s as device %s", nic.State, nic.VMMDeviceID)

	d.header("What the guest gets: vmnicctl guest-config " + id + " --format cloud-init | networkd | kernel | json")
	for _, f := range []string{"cloud-init", "networkd", "json"} {
		d.mustExec(nil, d.vmnicctl, d.ctl("guest-config", id, "--format", f)...)
	}
	if _, err := d.exec(nil, d.vmnicctl, d.ctl("guest-config", id, "--format", "kernel")...); err == nil {
		d.fail("the kernel form cannot carry IPv6: vmnicctl guest-config --format kernel should have refused")
	}
	d.ok("the kernel's ip= cannot carry IPv6: refused, and says why")
	d.mustExec(nil, d.vmnicctl, d.ctl("guest-config", id, "--format", "kernel", "--lossy")...)

	d.header("Inside the guest: its agent applies the json form from the live record copy; the guest pings both gateways")
	ctx, cancel2 := context.WithTimeout(d.ctx, 2*time.Minute)
	defer cancel2()
	ifname, err := g.WaitForMAC(ctx, nic.MAC)
	d.check(err, "hot-added NIC with MAC %s in the guest", nic.MAC)
	d.ok("guest sees %s with MAC %s", ifname, nic.MAC)
	v4, v6 := nic.IPsOf(netsetup.IPv4), nic.IPsOf(netsetup.IPv6)
	gw4, gw6 := nic.GatewayFor(netsetup.IPv4), nic.GatewayFor(netsetup.IPv6)
	if len(v4) == 0 || len(v6) == 0 || gw4 == "" || gw6 == "" {
		d.fail("record: eth0 should be dual-stack with both gateways: %+v", nic)
	}
	for {
		out, err := g.Run(ctx, fmt.Sprintf("ip -o addr show dev %s; ip route; ip -6 route", ifname))
		d.check(err, "guest state")
		if strings.Contains(out, v4[0]) && strings.Contains(out, v6[0]) && strings.Contains(out, "default via "+gw4) && strings.Contains(out, "default via "+gw6) {
			break
		}
		select {
		case <-ctx.Done():
			d.fail("the guest agent did not configure %s:\n%s", ifname, out)
		case <-time.After(time.Second):
		}
	}
	d.guestRun("cat /run/vmnic-agent.log")
	d.guestRun(fmt.Sprintf("ip addr show dev %s; ip route; ip -6 route show default", ifname))
	d.ok("the guest configured %s itself: %s and %s, default routes via %s and %s", ifname, v4[0], v6[0], gw4, gw6)
	for _, gw := range []string{gw4, gw6} {
		var out string
		for try := 0; try < 3; try++ { // the bridge's IPv6 address may still be in DAD
			if out = d.guestRun(fmt.Sprintf("ping -c 3 -W 3 %s || true", gw)); received(out) >= 3 {
				break
			}
		}
		if received(out) < 3 {
			d.fail("guest → gateway %s ping lost packets", gw)
		}
		d.ok("guest → gateway %s: 3 of 3 answered", gw)
	}
	for _, ip := range []string{v4[0], v6[0]} {
		hostOut := d.mustExec(nil, "ping", "-n", "-c", "3", "-i", "0.3", "-W", "3", "-w", "15", strings.Split(ip, "/")[0])
		if received(hostOut) < 3 {
			d.fail("host → guest ping lost packets")
		}
		d.ok("host → guest %s: 3 of 3 answered by the guest kernel", strings.Split(ip, "/")[0])
	}

	d.header("cnitool del eth0: vmnic hot-removes the NIC; the guest loses the device")
	d.cniDel(d.nets[0], ns, "eth0")
	err = g.WaitForLinkGone(ctx, ifname)
	d.check(err, "guest still has %s", ifname)
	d.guestRun("ls /sys/class/net")
	rec = d.record(id)
	if len(rec.NetworkConfigs) != 0 {
		d.fail("record still lists NICs: %+v", rec.NetworkConfigs)
	}
	d.ok("the guest no longer has %s; the record has 0 NICs (phase %s)", ifname, rec.Phase)

	d.header("Tear down the sandbox and stop QEMU")
	d.teardown(id)
	d.check(g.Close(), "stop QEMU")
	d.guest = nil
	if processAlive(d.qemuPID) {
		d.fail("QEMU (pid %d) is still running", d.qemuPID)
	}
	if netnsExists(ns) {
		d.fail("netns %s still exists", ns)
	}
	d.ok("QEMU pid %d has exited; netns %s is gone", d.qemuPID, ns)
}

// guestRun runs a command on the guest console and prints it and its output.
func (d *demo) guestRun(cmd string) string {
	ctx, cancel := context.WithTimeout(d.ctx, time.Minute)
	defer cancel()
	fmt.Printf("    guest$ %s\n", cmd)
	out, err := d.guest.Run(ctx, cmd)
	fmt.Print(indent(out))
	d.check(err, "guest command")
	return out
}
