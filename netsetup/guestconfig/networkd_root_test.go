package guestconfig

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// networkdScript runs systemd-networkd on the .network files in $1 against
// veths that carry the NICs' MACs ($2...: mac=name pairs), in the private
// network and mount namespace unshare gives it: the files are bind-mounted
// over /etc/systemd/network, /run/systemd is a tmpfs, and /sys is read-only
// so that networkd does not wait for udev (systemd's udev_available()).
// Once every expected address is there (or after 20 s) it prints the links,
// addresses and routes of every table as ip -j gives them.
const networkdScript = `set -e
conf=$1; want=$2; shift 2
mount --bind "$conf" /etc/systemd/network
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/netif
chown systemd-network:systemd-network /run/systemd/netif
mount -t sysfs -o ro sysfs /sys
i=0
for pair in "$@"; do
  mac=${pair%%=*}
  ip link add g$i address "$mac" type veth peer name p$i
  ip link set p$i up
  i=$((i+1))
done
/lib/systemd/systemd-networkd >"$conf/.log" 2>&1 &
pid=$!
n=0
while [ $n -lt 100 ]; do
  have=$(ip -o addr show scope global | grep -c -v tentative || true)
  [ "$have" -ge "$want" ] && break
  sleep 0.2; n=$((n+1))
done
sleep 0.5
kill $pid; wait $pid || true
echo '{"links":'; ip -j link show; echo ',"addrs":'; ip -j addr show
echo ',"routes4":'; ip -4 -j route show table all; echo ',"routes6":'; ip -6 -j route show table all; echo '}'
`

type ipRoute struct {
	Dst     string        `json:"dst"`
	Gateway string        `json:"gateway"`
	Dev     string        `json:"dev"`
	Table   string        `json:"table"`
	Metric  int           `json:"metric"`
	Scope   string        `json:"scope"`
	Metrics []routeMetric `json:"metrics"`
}

type routeMetric struct {
	MTU    int `json:"mtu"`
	AdvMSS int `json:"advmss"`
}

type ipDump struct {
	Links []struct {
		IfName  string `json:"ifname"`
		MTU     int    `json:"mtu"`
		Address string `json:"address"`
	} `json:"links"`
	Addrs []struct {
		IfName   string `json:"ifname"`
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
			Scope     string `json:"scope"`
		} `json:"addr_info"`
	} `json:"addrs"`
	Routes4 []ipRoute `json:"routes4"`
	Routes6 []ipRoute `json:"routes6"`
}

// TestNetworkdAppliesNetworkd: the real systemd-networkd applies the
// networkd rendering of every case to veths with the NICs' MACs, and the
// links end up with the rendered MTU, addresses and routes (gateway,
// metric, table, scope, MTU, advmss).
func TestNetworkdAppliesNetworkd(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := os.Stat("/lib/systemd/systemd-networkd"); err != nil {
		testenv.Unavailable(t, "systemd-networkd not installed (package systemd)")
	}
	unshare := testenv.Command(t, "unshare")
	testenv.Command(t, "ip")
	for _, c := range goldenCases() {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range render(t, c.rec, Networkd).Files {
				if err := os.WriteFile(filepath.Join(dir, f.Name), f.Data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			gc := c.rec.GuestConfig()
			want := 0
			args := []string{"--net", "--mount", "--propagation", "private", "sh", "-c", networkdScript, "sh", dir}
			var pairs []string
			for _, it := range gc.Interfaces {
				want += len(it.Addresses)
				pairs = append(pairs, it.MAC+"="+it.Name)
			}
			args = append(args, fmt.Sprint(want))
			args = append(args, pairs...)
			out, err := exec.Command(unshare, args...).Output()
			if err != nil {
				log, _ := os.ReadFile(filepath.Join(dir, ".log"))
				t.Fatalf("networkd run: %v\n%s\nnetworkd log:\n%s", err, out, log)
			}
			var d ipDump
			if err := json.Unmarshal(out, &d); err != nil {
				t.Fatalf("parse ip output: %v\n%s", err, out)
			}
			for i, it := range gc.Interfaces {
				dev := fmt.Sprintf("g%d", i)
				for _, l := range d.Links {
					if l.IfName == dev && it.MTU > 0 && l.MTU != it.MTU {
						t.Errorf("NIC %s (%s): MTU %d, want %d", it.Name, dev, l.MTU, it.MTU)
					}
				}
				have := map[string]bool{}
				for _, a := range d.Addrs {
					if a.IfName != dev {
						continue
					}
					for _, ai := range a.AddrInfo {
						have[fmt.Sprintf("%s/%d", ai.Local, ai.PrefixLen)] = true
					}
				}
				for _, a := range it.Addresses {
					if !have[a] {
						t.Errorf("NIC %s (%s): address %s not applied; has %v", it.Name, dev, a, have)
					}
				}
				for _, r := range it.Routes {
					if !routeApplied(d, dev, r.To, r.Via, r.Metric, r.Table, r.Scope, r.MTU, r.AdvMSS) {
						t.Errorf("NIC %s (%s): route %+v not applied; routes: %+v %+v", it.Name, dev, r, d.Routes4, d.Routes6)
					}
				}
			}
		})
	}
}

func routeApplied(d ipDump, dev, to, via string, metric, table int, scope string, mtu, advmss int) bool {
	dst := to
	if strings.HasSuffix(to, "/0") {
		dst = "default"
	} else if strings.HasSuffix(to, "/32") || strings.HasSuffix(to, "/128") {
		dst = strings.SplitN(to, "/", 2)[0]
	}
	for _, r := range append(append([]ipRoute{}, d.Routes4...), d.Routes6...) {
		if r.Dev != dev || r.Dst != dst || r.Gateway != via {
			continue
		}
		if metric > 0 && r.Metric != metric {
			continue
		}
		if table > 0 && r.Table != fmt.Sprint(table) || table == 0 && r.Table != "" && r.Table != "main" {
			continue
		}
		if scope == "link" && r.Scope != "link" {
			continue
		}
		var m routeMetric
		for _, x := range r.Metrics {
			if x.MTU != 0 {
				m.MTU = x.MTU
			}
			if x.AdvMSS != 0 {
				m.AdvMSS = x.AdvMSS
			}
		}
		if m.MTU != mtu || m.AdvMSS != advmss {
			continue
		}
		return true
	}
	return false
}
