package netsetup

import "testing"

// TestGatewayForOlderRecords: a record written before Gateways kept only
// Gateway; its family still resolves, and Gateways wins when present.
func TestGatewayForOlderRecords(t *testing.T) {
	old, err := Decode([]byte(`{"schema":2,"sandbox_id":"o","phase":"configured","network_configs":[
	  {"ifname":"eth0","tap":"t","state":"attached","ips":["fd00::5/64"],"gateway":"fd00::1",
	   "routes":[{"dst":"::/0","mtu":1400}]}]}`), "")
	if err != nil {
		t.Fatal(err)
	}
	n := old.NetworkConfigs[0]
	for _, tc := range []struct {
		nic      NIC
		fam      Family
		want     string
		wantName string
	}{
		{n, IPv6, "fd00::1", "older record, v6"},
		{n, IPv4, "", "older record, v4"},
		{NIC{Gateway: "10.0.0.1", Gateways: []string{"10.0.0.1", "fd00::1"}}, IPv6, "fd00::1", "dual-stack"},
		{NIC{Gateway: "10.0.0.1", Gateways: []string{"10.0.0.1", "fd00::1"}}, IPv4, "10.0.0.1", "dual-stack v4"},
	} {
		if got := tc.nic.GatewayFor(tc.fam); got != tc.want {
			t.Errorf("%s: GatewayFor(%d) = %q, want %q", tc.wantName, tc.fam, got, tc.want)
		}
	}
	gi := n.GuestInterface()
	if len(gi.Routes) != 1 || gi.Routes[0].Via != "fd00::1" || gi.Routes[0].MTU != 1400 {
		t.Errorf("older record's guest interface: %+v", gi)
	}
}
