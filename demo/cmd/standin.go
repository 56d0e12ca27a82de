package main

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/tapguest"
	"github.com/vmnic/vmnic/netsetup"
)

// standIn: sandbox at zero NICs → two NICs → traffic → one NIC → gone.
func (d *demo) standIn() {
	const id = "demo-sandbox"

	d.header("Prepare sandbox " + id + " with zero NICs (vmnicctl prepare)")
	rec := d.prepare(id)
	ns := rec.ResolvedNetnsPath()
	if rec.Phase != netsetup.PhasePrepared || len(rec.NetworkConfigs) != 0 || ns == "" {
		d.fail("after prepare: phase %s, %d NICs, netns %q; want prepared, 0 NICs, a netns", rec.Phase, len(rec.NetworkConfigs), ns)
	}
	d.shell("ip netns list | grep " + prefix)
	d.ok("sandbox netns %s exists, record phase %s with 0 NICs", ns, rec.Phase)

	d.header("Add eth0 through " + d.nets[0].name + " (bridge → vmnic) with cnitool")
	d.checkResult(d.cniAdd(d.nets[0], ns, "eth0"), ns, "eth0")

	d.header("Add net1 through " + d.nets[1].name + " with cnitool")
	d.checkResult(d.cniAdd(d.nets[1], ns, "net1"), ns, "net1")

	d.header("The NetSetup record (vmnicctl show)")
	d.show(id)
	rec = d.record(id)
	if rec.Phase != netsetup.PhaseConfigured || len(rec.NetworkConfigs) != 2 ||
		rec.NetworkConfigs[0].IfName != "eth0" || rec.NetworkConfigs[1].IfName != "net1" {
		d.fail("record: phase %s, NICs %+v; want configured with eth0 and net1", rec.Phase, rec.NetworkConfigs)
	}
	for _, n := range rec.NetworkConfigs {
		d.ok("%s: TAP %s, MAC %s (the veth's), IP %s, gateway %s, state %s", n.IfName, n.Tap, n.MAC, strings.Join(n.IPs, ","), n.Gateway, n.State)
	}

	d.header("Inside the sandbox netns: TAPs joined to the veths by tc redirect")
	d.mustExec(nil, "ip", "-n", netnsName(ns), "-br", "link")
	d.mustExec(nil, "tc", "-n", netnsName(ns), "filter", "show", "dev", "eth0", "ingress")
	d.mustExec(nil, "tc", "-n", netnsName(ns), "filter", "show", "dev", rec.NetworkConfigs[0].Tap, "ingress")

	for _, nic := range rec.NetworkConfigs {
		d.header("Traffic both ways through " + nic.Tap + " (" + nic.IfName + "), guest stand-in")
		d.standInTraffic(ns, nic)
	}

	d.header("Remove net1 (cnitool del): the record keeps one NIC")
	net1Tap := rec.NetworkConfigs[1].Tap
	d.cniDel(d.nets[1], ns, "net1")
	d.show(id)
	rec = d.record(id)
	if rec.Phase != netsetup.PhaseConfigured || len(rec.NetworkConfigs) != 1 || rec.NetworkConfigs[0].IfName != "eth0" {
		d.fail("after DEL of net1: phase %s, NICs %+v; want configured with eth0 only", rec.Phase, rec.NetworkConfigs)
	}
	if linkIn(ns, net1Tap) {
		d.fail("TAP %s of net1 is still in the netns", net1Tap)
	}
	d.ok("record has 1 NIC (eth0); TAP %s is gone", net1Tap)

	d.header("Tear down: cnitool del eth0, then vmnicctl teardown")
	d.cniDel(d.nets[0], ns, "eth0")
	rec = d.record(id)
	if rec.Phase != netsetup.PhasePrepared || len(rec.NetworkConfigs) != 0 {
		d.fail("after the last DEL: phase %s, %d NICs; want prepared with 0 NICs", rec.Phase, len(rec.NetworkConfigs))
	}
	d.ok("back to phase %s with 0 NICs: the sandbox outlives its last NIC", rec.Phase)
	d.teardown(id)
	if netnsExists(ns) {
		d.fail("netns %s still exists after teardown", ns)
	}
	d.ok("netns %s and the record are gone", ns)
}

// standInTraffic opens the NIC's TAP as a VMM would and proves traffic in
// both directions: guest → gateway (ARP + ping) and host → guest (ping).
func (d *demo) standInTraffic(ns string, nic netsetup.NIC) {
	cfg := d.guestConfig(ns, nic)
	d.note("guest stand-in: opens %s in %s (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), MAC %s, IP %s, gateway %s",
		cfg.Tap, ns, cfg.MAC, cfg.IP, cfg.Gateway)
	g, err := tapguest.Open(cfg)
	d.check(err, "open the TAP")
	defer g.Close()

	ctx, cancel := context.WithTimeout(d.ctx, 20*time.Second)
	defer cancel()
	mac, err := g.ResolveGateway(ctx)
	d.check(err, "guest → gateway ARP")
	d.ok("guest → gateway: ARP who-has %s → %s is-at %s", cfg.Gateway, cfg.Gateway, mac)
	for i := 0; i < 3; i++ {
		rtt, err := g.Ping(ctx, cfg.Gateway)
		d.check(err, "guest → gateway ping")
		d.ok("guest → gateway: echo reply from %s in %s", cfg.Gateway, rtt.Round(time.Microsecond))
	}

	before := g.Stats().EchoAnswered
	out := d.mustExec(nil, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-w", "10", cfg.IP.Addr().String())
	if received(out) < 3 {
		d.fail("host → guest ping: not every echo was answered")
	}
	st := g.Stats()
	if st.EchoAnswered < before+3 {
		d.fail("host → guest: the stand-in answered %d echo requests, want 3", st.EchoAnswered-before)
	}
	d.ok("host → guest: the stand-in answered %d echo requests from %s", st.EchoAnswered-before, st.LastEchoSource)
	if cfg.IP6.IsValid() {
		mac6, err := g.ResolveGateway6(ctx)
		d.check(err, "guest → gateway neighbour discovery")
		d.ok("guest → gateway: neighbour solicitation for %s → advertised at %s", cfg.Gateway6, mac6)
		rtt, err := g.Ping(ctx, cfg.Gateway6)
		d.check(err, "guest → gateway ICMPv6 echo")
		d.ok("guest → gateway: ICMPv6 echo reply from %s in %s", cfg.Gateway6, rtt.Round(time.Microsecond))
		before6 := g.Stats().Echo6Answered
		out := d.mustExec(nil, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-w", "10", cfg.IP6.Addr().String())
		if received(out) < 3 || g.Stats().Echo6Answered < before6+3 {
			d.fail("host → guest ICMPv6 echo: not every echo was answered by the stand-in")
		}
		d.ok("host → guest: the stand-in answered 3 ICMPv6 echo requests from %s", g.Stats().LastEcho6From)
	}
	st = g.Stats()
	d.note("stand-in counters: %d frames in, %d out; ARP answered %d, replies %d; echo answered %d, replies %d; NS answered %d, NA received %d; ICMPv6 echo answered %d, replies %d",
		st.FramesIn, st.FramesOut, st.ARPAnswered, st.ARPReplies, st.EchoAnswered, st.EchoReplies, st.NSAnswered, st.NAReceived, st.Echo6Answered, st.Echo6Replies)
}

// checkResult checks a cnitool add result: the previous plugin's result is
// passed through (the IP stays on the veth's entry) and the TAP is added.
func (d *demo) checkResult(out, ns, ifname string) {
	var res struct {
		Interfaces []struct{ Name, Sandbox string }
		IPs        []struct {
			Address   string
			Interface *int
		}
	}
	d.check(json.Unmarshal([]byte(out), &res), "cnitool add printed no CNI result")
	tap := ""
	for _, itf := range res.Interfaces {
		if itf.Sandbox == ns && strings.HasPrefix(itf.Name, "tap") {
			tap = itf.Name
		}
	}
	if tap == "" {
		d.fail("the result lists no TAP in %s", ns)
	}
	if len(res.IPs) == 0 || res.IPs[0].Interface == nil || *res.IPs[0].Interface >= len(res.Interfaces) ||
		res.Interfaces[*res.IPs[0].Interface].Name != ifname {
		d.fail("the result's IP is not on the %s entry", ifname)
	}
	d.ok("result: IP %s stays on %s (the veth, so later plugins keep working); TAP %s added", res.IPs[0].Address, ifname, tap)
}
