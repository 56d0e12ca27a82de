package main

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vmnic/vmnic/internal/testkit/tapguest"
	"github.com/vmnic/vmnic/netsetup"
)

// writeConflist writes the network's chain: bridge (gateway on the bridge)
// with host-local IPAM (an IPv6 range too when the network has one, and a
// default route of each family), then vmnic with the demo's state dir.
func (d *demo) writeConflist(n *cniNet) string {
	ranges := []any{[]any{map[string]any{"subnet": n.subnet, "gateway": n.gateway}}}
	routes := []any{map[string]any{"dst": "0.0.0.0/0"}}
	if n.subnet6 != "" {
		ranges = append(ranges, []any{map[string]any{"subnet": n.subnet6, "gateway": n.gateway6}})
		routes = append(routes, map[string]any{"dst": "::/0"})
	}
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       n.name,
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": n.bridge, "isGateway": true, "ipMasq": false,
				// A restored VM asks for the snapshot's MAC and IPs (vmnicctl restore).
				"capabilities": map[string]any{"mac": true, "ips": true},
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": d.ipamDir,
					"ranges":  ranges,
					"routes":  routes,
				},
			},
			map[string]any{"type": "vmnic", "stateDir": stateDir},
		},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	d.check(err, "conflist")
	path := filepath.Join(d.netconfDir, n.name+".conflist")
	d.check(os.WriteFile(path, append(data, '\n'), 0o644), "write conflist")
	return path
}

func (d *demo) cniEnv(ifname string) []string {
	return []string{"NETCONFPATH=" + d.netconfDir, "CNI_PATH=" + d.cniPath, "CNI_IFNAME=" + ifname}
}

// cniAdd runs `cnitool add` and remembers the attachment for cleanup.
func (d *demo) cniAdd(n *cniNet, netnsPath, ifname string) string {
	d.added = append(d.added, attachment{net: n, netns: netnsPath, ifname: ifname})
	return d.mustExec(d.cniEnv(ifname), d.cnitool, "add", n.name, netnsPath)
}

// cniDel runs `cnitool del` and forgets the attachment.
func (d *demo) cniDel(n *cniNet, netnsPath, ifname string) {
	d.mustExec(d.cniEnv(ifname), d.cnitool, "del", n.name, netnsPath)
	for i, a := range d.added {
		if a.net == n && a.netns == netnsPath && a.ifname == ifname {
			d.added = append(d.added[:i], d.added[i+1:]...)
			break
		}
	}
}

func (d *demo) ctl(args ...string) []string {
	return append([]string{"--state-dir", stateDir}, args...)
}

// prepare runs `vmnicctl prepare` (with more flags, e.g. --runtime-dir) and
// returns the record.
func (d *demo) prepare(id string, flags ...string) *netsetup.NetSetup {
	d.sandboxes = append(d.sandboxes, id)
	d.mustExec(nil, d.vmnicctl, d.ctl(append([]string{"prepare", id}, flags...)...)...)
	return d.record(id)
}

func (d *demo) teardown(id string) {
	d.mustExec(nil, d.vmnicctl, d.ctl("teardown", id)...)
	for i, s := range d.sandboxes {
		if s == id {
			d.sandboxes = append(d.sandboxes[:i], d.sandboxes[i+1:]...)
			break
		}
	}
}

func (d *demo) show(id string) {
	d.mustExec(nil, d.vmnicctl, d.ctl("show", id)...)
}

// record reads a sandbox's record straight from the store (the netsetup
// package is the library VM managers import).
func (d *demo) record(id string) *netsetup.NetSetup {
	st, err := netsetup.Open(stateDir)
	d.check(err, "open state dir")
	rec, err := st.Get(id)
	d.check(err, "record of %s", id)
	return rec
}

// guestConfig is the stand-in's configuration for a recorded NIC.
func (d *demo) guestConfig(netnsPath string, nic netsetup.NIC) tapguest.Config {
	mac, err := net.ParseMAC(nic.MAC)
	d.check(err, "recorded MAC of %s", nic.IfName)
	if len(nic.IPs) == 0 {
		d.fail("NIC %s has no recorded IP", nic.IfName)
	}
	ip, err := netip.ParsePrefix(nic.IPs[0])
	d.check(err, "recorded IP of %s", nic.IfName)
	gw, err := netip.ParseAddr(nic.Gateway)
	d.check(err, "recorded gateway of %s", nic.IfName)
	cfg := tapguest.Config{NetnsPath: netnsPath, Tap: nic.Tap, MAC: mac, IP: ip, Gateway: gw, MultiQueue: nic.QueuePairs() > 1}
	if v6 := nic.IPsOf(netsetup.IPv6); len(v6) > 0 && nic.GatewayFor(netsetup.IPv6) != "" {
		cfg.IP6, err = netip.ParsePrefix(v6[0])
		d.check(err, "recorded IPv6 of %s", nic.IfName)
		cfg.Gateway6, err = netip.ParseAddr(nic.GatewayFor(netsetup.IPv6))
		d.check(err, "recorded IPv6 gateway of %s", nic.IfName)
	}
	return cfg
}
