package guestconfig

import "github.com/vmnic/vmnic/netsetup"

func intp(v int) *int { return &v }

// goldenCases are the records the golden files render: the five shapes of
// issue 14.
func goldenCases() []struct {
	name string
	rec  *netsetup.NetSetup
} {
	rec := func(id string, nics ...netsetup.NIC) *netsetup.NetSetup {
		r := netsetup.New(id)
		for _, n := range nics {
			if n.State == "" {
				n.State = netsetup.NICAttached
			}
			r.PutNIC(n)
		}
		return r
	}
	return []struct {
		name string
		rec  *netsetup.NetSetup
	}{
		{"ipv4", rec("one-ipv4", netsetup.NIC{
			ID: "eth0", IfName: "eth0", Tap: "tap0", MAC: "0a:58:0a:58:00:05", MTU: 1500,
			IPs: []string{"10.88.0.5/16"}, Gateway: "10.88.0.1", Gateways: []string{"10.88.0.1"},
			Routes: []netsetup.Route{{Dst: "0.0.0.0/0"}},
			DNS:    &netsetup.DNS{Nameservers: []string{"10.96.0.10"}},
		})},
		{"dualstack", rec("dual", netsetup.NIC{
			ID: "eth0", IfName: "eth0", Tap: "tap0", MAC: "12:34:56:78:90:12", MTU: 1450,
			IPs:     []string{"10.244.1.7/24", "fd00:10:244:1::7/64"},
			Gateway: "10.244.1.1", Gateways: []string{"10.244.1.1", "fd00:10:244:1::1"},
			Routes: []netsetup.Route{{Dst: "0.0.0.0/0"}, {Dst: "::/0"}},
			DNS: &netsetup.DNS{Nameservers: []string{"10.96.0.10", "fd00:10:96::a"}, Domain: "default.svc.cluster.local",
				Search: []string{"svc.cluster.local", "cluster.local"}},
		})},
		{"two-nics-routes", rec("two-nics",
			netsetup.NIC{
				ID: "eth0", IfName: "eth0", Tap: "tap0", MAC: "0a:58:0a:01:00:02", MTU: 1500,
				IPs: []string{"10.1.0.2/24"}, Gateway: "10.1.0.1", Gateways: []string{"10.1.0.1"},
				Routes: []netsetup.Route{
					{Dst: "0.0.0.0/0"},
					{Dst: "192.168.100.0/24", GW: "10.1.0.254", MTU: 1400, AdvMSS: 1360, Priority: 100},
				},
			},
			netsetup.NIC{
				ID: "net1", IfName: "net1", Tap: "tap1", MAC: "0a:58:0a:02:00:02", MTU: 9000,
				IPs: []string{"10.2.0.2/24"}, Gateway: "10.2.0.1", Gateways: []string{"10.2.0.1"},
				Routes: []netsetup.Route{
					// A route MTU above the NIC's is capped at the NIC's.
					{Dst: "172.16.0.0/12", MTU: 9216, Table: intp(100), Priority: 10},
					{Dst: "10.2.1.0/24", Scope: intp(0)},
				},
			},
		)},
		{"ipv6-only", rec("v6only", netsetup.NIC{
			ID: "eth0", IfName: "eth0", Tap: "tap0", MAC: "0a:58:00:00:00:09", MTU: 1500,
			IPs: []string{"2001:db8:1::9/64"}, Gateway: "2001:db8:1::1", Gateways: []string{"2001:db8:1::1"},
			Routes: []netsetup.Route{{Dst: "::/0"}, {Dst: "2001:db8:ff::/48", GW: "2001:db8:1::fe", MTU: 1280}},
			DNS:    &netsetup.DNS{Nameservers: []string{"2001:db8:53::53"}},
		})},
		{"no-gateway", rec("nogw", netsetup.NIC{
			ID: "eth0", IfName: "eth0", Tap: "tap0", MAC: "0a:58:0a:0a:00:03", MTU: 1500,
			IPs: []string{"10.10.0.3/24"},
			// Without a gateway a route is on the link; scope link as a
			// CNI result may give it.
			Routes: []netsetup.Route{{Dst: "10.20.0.0/16"}, {Dst: "10.30.0.0/16", Scope: intp(253)}},
		})},
	}
}
