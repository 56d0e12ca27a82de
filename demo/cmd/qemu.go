package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/netsetup"
)

// realGuest: a QEMU guest (TCG) boots in a prepared sandbox with zero NICs;
// vmnic hot-adds a NIC on cnitool add; the guest brings it up and pings the
// gateway; cnitool del hot-removes it; teardown leaves nothing.
func (d *demo) realGuest() {
	const id = "demo-vm"

	d.header("Real QEMU guest: prepare sandbox " + id + " and boot QEMU in its netns with zero NICs")
	rec := d.prepare(id)
	ns := rec.ResolvedNetnsPath()
	bootCtx, cancel := context.WithTimeout(d.ctx, 3*time.Minute)
	defer cancel()
	d.note("booting QEMU (TCG, Debian kernel, busybox initramfs, -nic none) inside %s …", ns)
	g, err := qemuguest.Boot(bootCtx, qemuguest.Config{
		Netns: ns,
		Logf:  func(format string, args ...any) { d.note("qemu: "+format, args...) },
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

	d.header("Inside the guest: the hot-added NIC comes up and pings the gateway")
	ctx, cancel2 := context.WithTimeout(d.ctx, 2*time.Minute)
	defer cancel2()
	ifname, err := g.WaitForMAC(ctx, nic.MAC)
	d.check(err, "hot-added NIC with MAC %s in the guest", nic.MAC)
	d.ok("guest sees %s with MAC %s", ifname, nic.MAC)
	ip, gw := nic.IPs[0], nic.Gateway
	d.guestRun(fmt.Sprintf("ip addr add %s dev %s && ip link set %s up && ip route add default via %s && ip -4 addr show dev %s", ip, ifname, ifname, gw, ifname))
	out := d.guestRun(fmt.Sprintf("ping -c 3 -W 3 %s", gw))
	if received(out) < 3 {
		d.fail("guest → gateway ping lost packets")
	}
	d.ok("guest → gateway: 3 of 3 answered")
	hostOut := d.mustExec(nil, "ping", "-n", "-c", "3", "-i", "0.3", "-W", "3", "-w", "15", strings.Split(ip, "/")[0])
	if received(hostOut) < 3 {
		d.fail("host → guest ping lost packets")
	}
	d.ok("host → guest: 3 of 3 answered by the guest kernel")

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
