package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/netsetup"
)

// TestPrevResultFixtures reads real-world prevResult shapes from
// testdata/conf (bridge 1.1.0, ptp 0.4.0 dual-stack, Cilium 1.0.0 without
// interface indexes) and checks what vmnic takes from each and returns.
func TestPrevResultFixtures(t *testing.T) {
	cases := []struct {
		file, netns, mac, gw string
		ips                  []string
		routes, dns          int
		queues               int
	}{
		{"bridge-1.1.0.json", "/var/run/netns/cni-1234", "f6:ee:95:e7:d1:63", "10.88.0.1", []string{"10.88.0.2/16"}, 1, 0, 1},
		{"ptp-0.4.0.json", "/var/run/netns/cni-5678", "52:54:00:ab:cd:ef", "10.85.0.1", []string{"10.85.0.7/16", "fd85::7/64"}, 2, 1, 2},
		{"cilium-1.0.0.json", "/proc/4242/ns/net", "02:42:ac:11:00:05", "10.0.1.1", []string{"10.0.1.5/32"}, 1, 0, 1},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(netfixture.RepoRoot(t), "testdata", "conf", c.file))
			if err != nil {
				t.Fatal(err)
			}
			conf, err := parseConf(data)
			if err != nil {
				t.Fatal(err)
			}
			if conf.Queues != c.queues {
				t.Errorf("queues %d", conf.Queues)
			}
			if err := parsePrevResult(conf.NetConf); err != nil || conf.PrevResult == nil {
				t.Fatalf("prevResult: %v", err)
			}
			prev, err := current.NewResultFromResult(conf.PrevResult)
			if err != nil {
				t.Fatal(err)
			}
			p, err := pickInterface(prev, "eth0", c.netns)
			if err != nil {
				t.Fatal(err)
			}
			if p.mac != c.mac || p.gateway != c.gw || strings.Join(p.ips, " ") != strings.Join(c.ips, " ") || len(p.routes) != c.routes {
				t.Errorf("picked mac %s gw %s ips %v routes %v", p.mac, p.gateway, p.ips, p.routes)
			}
			if d := p.dns(conf.DNS); (d != nil) != (c.dns > 0) {
				t.Errorf("dns %+v", d)
			}
			added := &sandbox.AddedNIC{NIC: netsetup.NIC{Tap: "tapeth0", MTU: 1500}, TapMAC: "de:ad:be:ef:00:01", Sandbox: c.netns}
			res := buildResult(prev, added, conf.CNIVersion)
			out, err := res.GetAsVersion(conf.CNIVersion)
			if err != nil {
				t.Fatalf("result as %s: %v", conf.CNIVersion, err)
			}
			back, err := current.NewResultFromResult(out)
			if err != nil {
				t.Fatal(err)
			}
			if n := len(back.Interfaces); n != len(prev.Interfaces)+1 || back.Interfaces[n-1].Name != "tapeth0" || len(back.IPs) != len(prev.IPs) {
				t.Errorf("result %+v", back)
			}
		})
	}
}
