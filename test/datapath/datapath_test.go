package datapath

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/testkit/tapguest"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// hostLinkWithAddr is the host link carrying ip (the gateway: the bridge,
// or ptp's host veth).
func hostLinkWithAddr(t *testing.T, ip netip.Addr) netlink.Link {
	t.Helper()
	addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if a.IP.Equal(ip.AsSlice()) {
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				t.Fatal(err)
			}
			return l
		}
	}
	t.Fatalf("no host link has the gateway address %s", ip)
	return nil
}

// nicCase is one NIC brought up through a chain and checked end to end.
type nicCase struct {
	name         string
	chain        string // bridge | ptp
	cniVersion   string
	octet        int    // subnet 10.206.<octet>.0/24
	queues       int    // vmnic "queues" (0 = default single queue)
	bySandboxArg bool   // name the sandbox with CNI_ARGS VMNIC_SANDBOX_ID (else cnitool's container id)
	dataPath     string // vmnic "dataPath" ("" = unset: $VMNIC_DATAPATH, else auto)
}

func TestNICDataPathThroughPlugin(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tc := range []nicCase{
		{name: "bridge chain, CNI 1.0.0", chain: "bridge", cniVersion: "1.0.0", octet: 0, bySandboxArg: true},
		{name: "ptp chain, CNI 1.0.0", chain: "ptp", cniVersion: "1.0.0", octet: 1},
		{name: "bridge chain, multiqueue TAP, CNI 1.1.0", chain: "bridge", cniVersion: "1.1.0", octet: 2, queues: 2, bySandboxArg: true},
		{name: "ptp chain, CNI 0.4.0", chain: "ptp", cniVersion: "0.4.0", octet: 3, bySandboxArg: true},
		{name: "ptp chain, dataPath bpf", chain: "ptp", cniVersion: "1.1.0", octet: 6, dataPath: "bpf"},
		{name: "bridge chain, dataPath u32", chain: "bridge", cniVersion: "1.1.0", octet: 7, dataPath: "u32"},
	} {
		t.Run(tc.name, func(t *testing.T) { runNICCase(t, tc) })
	}
}

func runNICCase(t *testing.T, tc nicCase) {
	id := randHex(t, 3)
	subnet := fmt.Sprintf("10.206.%d.0/24", tc.octet)
	gateway := netip.AddrFrom4([4]byte{10, 206, byte(tc.octet), 1})
	stateDir := filepath.Join(t.TempDir(), "state")
	ipamDir := t.TempDir()

	var plugins []map[string]any
	bridge := fmt.Sprintf("vmnbrd%d", tc.octet)
	switch tc.chain {
	case "bridge":
		deleteHostLinkAtCleanup(t, bridge)
		plugins = bridgeChain(bridge, subnet, ipamDir, stateDir, tc.queues)
	case "ptp":
		plugins = ptpChain(subnet, ipamDir, stateDir, tc.queues)
	default:
		t.Fatalf("unknown chain %s", tc.chain)
	}
	if tc.dataPath != "" {
		plugins[len(plugins)-1]["dataPath"] = tc.dataPath
	}
	nsPath := newNetns(t, "vmnd-dp-"+id)
	nw := writeNetwork(t, "vmnd-"+tc.chain+"-"+id, tc.cniVersion, stateDir, plugins)

	sandboxID, cniArgs := cnitoolContainerID(nsPath), ""
	if tc.bySandboxArg {
		sandboxID = "vmnd-sb-" + id
		cniArgs = "IgnoreUnknown=1;VMNIC_SANDBOX_ID=" + sandboxID
	}
	t.Cleanup(func() {
		if _, err := nw.cnitool(t, "del", nsPath, "eth0", cniArgs); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	// ADD through the chain.
	out := nw.mustCNI(t, "add", nsPath, "eth0", cniArgs)
	var res cniResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("cnitool add printed no CNI result: %v\n%s", err, out)
	}

	rec := record(t, stateDir, sandboxID)
	if rec.Phase != netsetup.PhaseConfigured || len(rec.NetworkConfigs) != 1 {
		t.Fatalf("record after ADD: phase %s, %d NICs; want configured with 1 NIC\n%+v", rec.Phase, len(rec.NetworkConfigs), rec)
	}
	nic := rec.NetworkConfigs[0]
	if nic.IfName != "eth0" || nic.Tap == "" || nic.Network != nw.Name {
		t.Fatalf("recorded NIC %+v: want ifname eth0, a TAP, network %s", nic, nw.Name)
	}
	if tc.dataPath != "" && nic.DataPath != tc.dataPath {
		t.Errorf("recorded data path %q, want the conf's %q", nic.DataPath, tc.dataPath)
	}
	if nic.State != netsetup.NICPending {
		t.Errorf("recorded NIC state %q without a VMM, want %q", nic.State, netsetup.NICPending)
	}
	if rec.ResolvedNetnsPath() != nsPath {
		t.Errorf("recorded netns %q, want %q", rec.ResolvedNetnsPath(), nsPath)
	}

	// The record matches the veth in the netns: the guest takes its MAC and MTU.
	h := nsHandle(t, nsPath)
	defer h.Close()
	veth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 in the sandbox netns: %v", err)
	}
	tap, err := h.LinkByName(nic.Tap)
	if err != nil {
		t.Fatalf("recorded TAP %s not in the sandbox netns: %v", nic.Tap, err)
	}
	if nic.MAC != veth.Attrs().HardwareAddr.String() {
		t.Errorf("recorded MAC %s, want the veth's %s", nic.MAC, veth.Attrs().HardwareAddr)
	}
	if tap.Attrs().MTU != veth.Attrs().MTU || (nic.MTU != 0 && nic.MTU != veth.Attrs().MTU) {
		t.Errorf("MTU: TAP %d, recorded %d, veth %d", tap.Attrs().MTU, nic.MTU, veth.Attrs().MTU)
	}
	if nic.Gateway != gateway.String() {
		t.Errorf("recorded gateway %q, want %s", nic.Gateway, gateway)
	}

	// The result passes prevResult through (IPs on the veth's entry) and
	// adds the TAP in the sandbox.
	if res.CNIVersion != tc.cniVersion {
		t.Errorf("result cniVersion %q, want %q", res.CNIVersion, tc.cniVersion)
	}
	tapInResult := false
	for _, itf := range res.Interfaces {
		if itf.Name == nic.Tap && itf.Sandbox == nsPath {
			tapInResult = true
		}
	}
	if !tapInResult {
		t.Errorf("result has no interface %s in sandbox %s: %s", nic.Tap, nsPath, out)
	}
	if len(res.IPs) == 0 || res.IPs[0].Interface == nil || *res.IPs[0].Interface >= len(res.Interfaces) ||
		res.Interfaces[*res.IPs[0].Interface].Name != "eth0" {
		t.Errorf("result IPs are not on eth0's entry: %s", out)
	}

	// The data path, through the TAP, as a guest sees it.
	cfg := guestConfig(t, nsPath, nic)
	if !netip.MustParsePrefix(subnet).Contains(cfg.IP.Addr()) {
		t.Fatalf("recorded IP %s not in %s", cfg.IP, subnet)
	}
	g, err := tapguest.Open(cfg)
	if err != nil {
		t.Fatalf("open the recorded TAP as a VMM would: %v", err)
	}
	defer g.Close()
	if g.Tap().MultiQueue() != (tc.queues > 1) {
		t.Errorf("TAP multiqueue = %v, want %v (queues %d)", g.Tap().MultiQueue(), tc.queues > 1, tc.queues)
	}
	checkGuestTraffic(t, g, cfg, gateway)

	// CHECK passes on a healthy NIC.
	if _, err := nw.cnitool(t, "check", nsPath, "eth0", cniArgs); err != nil {
		t.Errorf("CHECK of a healthy NIC: %v", err)
	}

	// DEL: the TAP and the NIC record go; a second DEL is still success.
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	nw.mustCNI(t, "del", nsPath, "eth0", cniArgs)
	if linkExists(t, nsPath, nic.Tap) {
		t.Errorf("TAP %s still in the sandbox netns after DEL", nic.Tap)
	}
	assertNoNIC(t, stateDir, sandboxID, "eth0")
	nw.mustCNI(t, "del", nsPath, "eth0", cniArgs)
}

// checkGuestTraffic proves both directions: guest → gateway (ARP + ICMP)
// and host → guest (ping answered by the stand-in).
func checkGuestTraffic(t *testing.T, g *tapguest.Guest, cfg tapguest.Config, gateway netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	gwMAC, err := g.ResolveGateway(ctx)
	if err != nil {
		t.Fatalf("guest → gateway ARP through TAP %s: %v (stats %+v)", cfg.Tap, err, g.Stats())
	}
	if want := hostLinkWithAddr(t, gateway).Attrs().HardwareAddr; gwMAC.String() != want.String() {
		t.Errorf("gateway answered with MAC %s, want the gateway link's %s", gwMAC, want)
	}
	if err := g.PingGateway(ctx); err != nil {
		t.Fatalf("guest → gateway ping through TAP %s: %v (stats %+v)", cfg.Tap, err, g.Stats())
	}
	before := g.Stats().EchoAnswered
	hostPing(t, cfg.IP.Addr())
	if st := g.Stats(); st.EchoAnswered < before+3 || st.LastEchoSource != gateway.String() {
		t.Errorf("host → guest ping not answered by the stand-in: %+v (from %s expected)", st, gateway)
	}
}

// assertNoNIC checks that the sandbox has no NIC ifname: its record is gone
// or lists no such NIC.
func assertNoNIC(t *testing.T, stateDir, sandboxID, ifname string) {
	t.Helper()
	st, err := netsetup.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := st.Get(sandboxID)
	if errors.Is(err, netsetup.ErrNotFound) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := rec.NIC(ifname); ok {
		t.Errorf("record of %s still lists %s after DEL: %+v", sandboxID, ifname, rec.NetworkConfigs)
	}
}

// TestTwoNICsOneSandbox: two networks (bridge as eth0, ptp as net1) in one
// sandbox; each NIC carries traffic on its own; removing net1 leaves eth0
// recorded and working.
func TestTwoNICsOneSandbox(t *testing.T) {
	testenv.RequireRoot(t)
	id := randHex(t, 3)
	stateDir := filepath.Join(t.TempDir(), "state")
	bridge := "vmnbrd4"
	deleteHostLinkAtCleanup(t, bridge)
	nsPath := newNetns(t, "vmnd-dp2-"+id)
	sandboxID := "vmnd-sb2-" + id
	cniArgs := "IgnoreUnknown=1;VMNIC_SANDBOX_ID=" + sandboxID

	nets := []struct {
		nw      *network
		ifname  string
		gateway netip.Addr
	}{
		{writeNetwork(t, "vmnd-a-"+id, "1.0.0", stateDir, bridgeChain(bridge, "10.206.4.0/24", t.TempDir(), stateDir, 0)), "eth0", netip.MustParseAddr("10.206.4.1")},
		{writeNetwork(t, "vmnd-b-"+id, "1.0.0", stateDir, ptpChain("10.206.5.0/24", t.TempDir(), stateDir, 0)), "net1", netip.MustParseAddr("10.206.5.1")},
	}
	for _, n := range nets {
		t.Cleanup(func() {
			if _, err := n.nw.cnitool(t, "del", nsPath, n.ifname, cniArgs); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
	}
	// net1 first: the record must still list eth0 first.
	nets[1].nw.mustCNI(t, "add", nsPath, nets[1].ifname, cniArgs)
	nets[0].nw.mustCNI(t, "add", nsPath, nets[0].ifname, cniArgs)

	rec := record(t, stateDir, sandboxID)
	if len(rec.NetworkConfigs) != 2 || rec.NetworkConfigs[0].IfName != "eth0" || rec.NetworkConfigs[1].IfName != "net1" {
		t.Fatalf("record NICs %+v: want eth0 then net1", rec.NetworkConfigs)
	}
	if rec.NetworkConfigs[0].Tap == rec.NetworkConfigs[1].Tap {
		t.Fatalf("both NICs recorded with TAP %s", rec.NetworkConfigs[0].Tap)
	}
	for i, n := range nets {
		cfg := guestConfig(t, nsPath, rec.NetworkConfigs[i])
		g, err := tapguest.Open(cfg)
		if err != nil {
			t.Fatalf("%s: %v", n.ifname, err)
		}
		checkGuestTraffic(t, g, cfg, n.gateway)
		g.Close()
	}

	// Remove net1: eth0 stays recorded and keeps working.
	netTap := rec.NetworkConfigs[1].Tap
	nets[1].nw.mustCNI(t, "del", nsPath, "net1", cniArgs)
	if linkExists(t, nsPath, netTap) {
		t.Errorf("TAP %s of net1 still present after DEL", netTap)
	}
	rec = record(t, stateDir, sandboxID)
	if len(rec.NetworkConfigs) != 1 || rec.NetworkConfigs[0].IfName != "eth0" || rec.Phase != netsetup.PhaseConfigured {
		t.Fatalf("after DEL of net1: phase %s, NICs %+v; want configured with eth0 only", rec.Phase, rec.NetworkConfigs)
	}
	cfg := guestConfig(t, nsPath, rec.NetworkConfigs[0])
	g, err := tapguest.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkGuestTraffic(t, g, cfg, nets[0].gateway)
	g.Close()

	nets[0].nw.mustCNI(t, "del", nsPath, "eth0", cniArgs)
	assertNoNIC(t, stateDir, sandboxID, "eth0")
}
