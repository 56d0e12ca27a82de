package datapath

import (
	"context"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/tapguest"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/netsetup/guestconfig"
)

// dualStackChain: bridge (both gateways on the bridge) + host-local with an
// IPv4 and an IPv6 range and a default route of each family + vmnic.
func dualStackChain(bridge, subnet4, subnet6, ipamDir, stateDir string) []map[string]any {
	ipam := map[string]any{
		"type":    "host-local",
		"dataDir": ipamDir,
		"ranges":  []any{[]any{map[string]any{"subnet": subnet4}}, []any{map[string]any{"subnet": subnet6}}},
		"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}, map[string]any{"dst": "::/0"}},
	}
	return []map[string]any{
		{"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "ipam": ipam},
		vmnicConf(stateDir, 0),
	}
}

// TestDualStackDataPath: a bridge + host-local chain with an IPv4 and an
// IPv6 range. The record keeps both addresses and both gateways; the guest
// stand-in on the TAP, configured from the rendered guest config (json),
// answers ARP and neighbour solicitations and echo requests of both
// families, and pings both gateways; the host pings both of its addresses.
// vmnic leaves the veth's IPv6 as the main plugin made it (no failed
// duplicate address detection) and the TAP has no IPv6 address of its own;
// CHECK validates both families.
func TestDualStackDataPath(t *testing.T) {
	testenv.RequireRoot(t)
	id := randHex(t, 3)
	subnet4, subnet6 := "10.206.9.0/24", "fd00:206:9::/64"
	gw4, gw6 := netip.MustParseAddr("10.206.9.1"), netip.MustParseAddr("fd00:206:9::1")
	stateDir := filepath.Join(t.TempDir(), "state")
	bridge := "vmnbrd9"
	deleteHostLinkAtCleanup(t, bridge)
	nsPath := newNetns(t, "vmnd-ds-"+id)
	nw := writeNetwork(t, "vmnd-ds-"+id, "1.1.0", stateDir, dualStackChain(bridge, subnet4, subnet6, t.TempDir(), stateDir))
	sandboxID := "vmnd-ds-" + id
	cniArgs := "IgnoreUnknown=1;VMNIC_SANDBOX_ID=" + sandboxID
	t.Cleanup(func() {
		if _, err := nw.cnitool(t, "del", nsPath, "eth0", cniArgs); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	out := nw.mustCNI(t, "add", nsPath, "eth0", cniArgs)
	var res cniResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("cnitool add printed no CNI result: %v\n%s", err, out)
	}

	rec := record(t, stateDir, sandboxID)
	nic := rec.NetworkConfigs[0]
	if len(nic.IPsOf(netsetup.IPv4)) != 1 || len(nic.IPsOf(netsetup.IPv6)) != 1 {
		t.Fatalf("recorded IPs %v: want one of each family", nic.IPs)
	}
	if nic.GatewayFor(netsetup.IPv4) != gw4.String() || nic.GatewayFor(netsetup.IPv6) != gw6.String() || nic.Gateway != gw4.String() {
		t.Errorf("recorded gateways %q %v, want %s and %s", nic.Gateway, nic.Gateways, gw4, gw6)
	}
	if len(nic.Routes) != 2 {
		t.Errorf("recorded routes %+v, want the two default routes", nic.Routes)
	}

	// The stand-in takes its addresses from the rendered json document,
	// as an agent in the guest would.
	gcOut, err := guestconfig.Render(rec, guestconfig.JSON)
	if err != nil {
		t.Fatal(err)
	}
	var doc netsetup.GuestConfig
	if err := json.Unmarshal(gcOut.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	it := doc.Interfaces[0]
	cfg := guestConfig(t, nsPath, nic)
	cfg.IP = netip.MustParsePrefix(it.IPsOf4()[0])
	cfg.IP6 = netip.MustParsePrefix(it.IPsOf6()[0])
	cfg.Gateway, cfg.Gateway6 = netip.MustParseAddr(it.Gateway4), netip.MustParseAddr(it.Gateway6)
	if it.MTU != nic.MTU || it.MAC != nic.MAC {
		t.Errorf("guest config MTU %d MAC %s, record %d %s", it.MTU, it.MAC, nic.MTU, nic.MAC)
	}

	h := nsHandle(t, nsPath)
	defer h.Close()
	checkIPv6LeftAlone(t, h, nic)

	g, err := tapguest.Open(cfg)
	if err != nil {
		t.Fatalf("open the recorded TAP: %v", err)
	}
	defer g.Close()
	checkGuestTraffic(t, g, cfg, gw4)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	gwMAC, err := g.ResolveGateway6(ctx)
	if err != nil {
		t.Fatalf("guest → gateway neighbour discovery through TAP %s: %v (stats %+v)", cfg.Tap, err, g.Stats())
	}
	if br, err := netlink.LinkByName(bridge); err != nil || gwMAC.String() != br.Attrs().HardwareAddr.String() {
		t.Errorf("IPv6 gateway answered with MAC %s, want the bridge's (%v)", gwMAC, err)
	}
	if err := g.PingGateway6(ctx); err != nil {
		t.Fatalf("guest → gateway ICMPv6 echo through TAP %s: %v (stats %+v)", cfg.Tap, err, g.Stats())
	}
	// The host forgets the guest's MAC (learnt from the stand-in's own
	// solicitation), so that its ping must solicit it first.
	forgetNeighbour(t, bridge, cfg.IP6.Addr())
	before := g.Stats()
	hostPing(t, cfg.IP6.Addr())
	st := g.Stats()
	if st.Echo6Answered < before.Echo6Answered+3 || st.LastEcho6From != gw6.String() {
		t.Errorf("host → guest ICMPv6 echo not answered by the stand-in: %+v (from %s expected)", st, gw6)
	}
	if st.NSAnswered == 0 || st.NAReceived == 0 {
		t.Errorf("neighbour discovery did not run both ways: %+v", st)
	}

	// CHECK validates both families: healthy now; with the record missing
	// the IPv6 address the chain gives eth0, vmnic's CHECK names IPv6.
	if _, err := nw.cnitool(t, "check", nsPath, "eth0", cniArgs); err != nil {
		t.Errorf("CHECK of a healthy dual-stack NIC: %v", err)
	}
	checkIPv6LeftAlone(t, h, nic)
	st6, err := netsetup.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st6.Update(context.Background(), sandboxID, func(r *netsetup.NetSetup) error {
		n, _ := r.NIC("eth0")
		n.IPs = n.IPsOf(netsetup.IPv4)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err = nw.cnitool(t, "check", nsPath, "eth0", cniArgs)
	if err == nil || !strings.Contains(err.Error(), "IPv6: prevResult gives eth0 address "+nic.IPsOf(netsetup.IPv6)[0]) || strings.Contains(err.Error(), "IPv4:") {
		t.Errorf("CHECK with the IPv6 address missing from the record: %v", err)
	}
}

// forgetNeighbour deletes the host's neighbour entry for ip on link.
func forgetNeighbour(t *testing.T, link string, ip netip.Addr) {
	t.Helper()
	l, err := netlink.LinkByName(link)
	if err != nil {
		t.Fatal(err)
	}
	fam := netlink.FAMILY_V4
	if ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	ns, err := netlink.NeighList(l.Attrs().Index, fam)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.IP.Equal(ip.AsSlice()) {
			if err := netlink.NeighDel(&n); err != nil {
				t.Fatalf("forget neighbour %s on %s: %v", ip, link, err)
			}
		}
	}
}

// checkIPv6LeftAlone: the veth still has its IPv6 address, not failed
// duplicate address detection, and the TAP has no IPv6 address at all.
func checkIPv6LeftAlone(t *testing.T, h *netlink.Handle, nic netsetup.NIC) {
	t.Helper()
	veth, err := h.LinkByName(nic.IfName)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(veth, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	want := nic.IPsOf(netsetup.IPv6)[0]
	found := false
	for _, a := range addrs {
		if a.IPNet.String() == want {
			found = true
			if a.Flags&unix.IFA_F_DADFAILED != 0 {
				t.Errorf("veth address %s failed duplicate address detection (flags %#x)", want, a.Flags)
			}
		}
	}
	if !found {
		t.Errorf("veth %s lost its IPv6 address %s: %v", nic.IfName, want, addrs)
	}
	tap, err := h.LinkByName(nic.Tap)
	if err != nil {
		t.Fatal(err)
	}
	if ta, err := h.AddrList(tap, netlink.FAMILY_V6); err != nil || len(ta) != 0 {
		t.Errorf("TAP %s has IPv6 addresses of its own: %v %v", nic.Tap, ta, err)
	}
}
