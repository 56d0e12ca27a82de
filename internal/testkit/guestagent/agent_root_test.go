package guestagent

import (
	"encoding/json"
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

func intp(v int) *int { return &v }

// TestApply: the agent finds each attached NIC by MAC and applies MTU,
// addresses of both families and routes with their fields; a pending NIC
// and one whose device is absent are left alone; applying again is a no-op.
func TestApply(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netfixture.Netns(t, netfixture.Name("vmnict-ga"))
	peer := netfixture.Netns(t, netfixture.Name("vmnict-gp"))
	netfixture.Veth(t, ns, "g0", peer, "p0", 1500, "02:00:00:00:aa:01")
	netfixture.Veth(t, ns, "g1", peer, "p1", 1500, "02:00:00:00:aa:02")
	rec := netsetup.New("ga")
	rec.PutNIC(netsetup.NIC{IfName: "eth0", Tap: "t0", MAC: "02:00:00:00:aa:01", MTU: 1400, State: netsetup.NICAttached,
		IPs: []string{"10.77.0.2/24", "fd77::2/64"}, Gateway: "10.77.0.1", Gateways: []string{"10.77.0.1", "fd77::1"},
		Routes: []netsetup.Route{{Dst: "0.0.0.0/0"}, {Dst: "::/0"}, {Dst: "192.168.77.0/24", GW: "10.77.0.254", MTU: 1300, AdvMSS: 1260, Priority: 50, Table: intp(77)}}})
	rec.PutNIC(netsetup.NIC{IfName: "net1", Tap: "t1", MAC: "02:00:00:00:aa:02", MTU: 1500, State: netsetup.NICPending, IPs: []string{"10.78.0.2/24"}})
	rec.PutNIC(netsetup.NIC{IfName: "net2", Tap: "t2", MAC: "02:00:00:00:aa:03", State: netsetup.NICAttached, IPs: []string{"10.79.0.2/24"}})
	data, err := json.Marshal(rec.GuestConfig())
	if err != nil {
		t.Fatal(err)
	}
	gc, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	a := New()
	netfixture.In(t, ns, func() error {
		done, err := a.Apply(gc)
		if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		if len(done) != 1 || done[0].Name != "eth0" || done[0].Dev != "g0" {
			t.Fatalf("applied %+v, want only eth0 on g0", done)
		}
		if again, err := a.Apply(gc); err != nil || len(again) != 0 {
			t.Errorf("second Apply: %+v %v, want nothing", again, err)
		}
		g0, _ := netlink.LinkByName("g0")
		if g0.Attrs().MTU != 1400 {
			t.Errorf("g0 MTU %d, want 1400", g0.Attrs().MTU)
		}
		addrs, _ := netlink.AddrList(g0, netlink.FAMILY_ALL)
		have := map[string]bool{}
		for _, ad := range addrs {
			have[ad.IPNet.String()] = true
		}
		for _, want := range []string{"10.77.0.2/24", "fd77::2/64"} {
			if !have[want] {
				t.Errorf("g0 lacks %s: %v", want, addrs)
			}
		}
		routes, _ := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: g0.Attrs().Index, Table: unix.RT_TABLE_UNSPEC},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
		var def4, def6, r77 bool
		for _, r := range routes {
			switch {
			case r.Dst != nil && r.Dst.String() == "192.168.77.0/24":
				r77 = r.Gw.Equal(net.ParseIP("10.77.0.254")) && r.Table == 77 && r.Priority == 50 && r.MTU == 1300 && r.AdvMSS == 1260
			case (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(net.ParseIP("10.77.0.1")):
				def4 = true
			case (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(net.ParseIP("fd77::1")):
				def6 = true
			}
		}
		if !def4 || !def6 || !r77 {
			t.Errorf("routes: default4 %v default6 %v table-77 route %v; have %+v", def4, def6, r77, routes)
		}
		g1, _ := netlink.LinkByName("g1")
		if a1, _ := netlink.AddrList(g1, netlink.FAMILY_V4); len(a1) != 0 {
			t.Errorf("the pending NIC's device got addresses: %v", a1)
		}
		return nil
	})
	if _, err := Parse([]byte(`{"version":2,"interfaces":[]}`)); err == nil {
		t.Error("a newer document version was accepted")
	}
}
