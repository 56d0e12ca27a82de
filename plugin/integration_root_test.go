package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

var versions = []string{"0.4.0", "1.0.0", "1.1.0"}

// checkAdded asserts what an ADD through the chain must leave: the result
// has the TAP after the untouched prevResult interfaces, the IPs stay on
// the veth entry, the netns has the TAP and both filters, and the record
// has the NIC.
func checkAdded(t *testing.T, n *tnet, raw []byte, netns, id, ifname string) {
	t.Helper()
	var res current.Result
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatalf("result %s: %v", raw, err)
	}
	tapName := hostnet.TapNameInNetns(ifname)
	var generic struct {
		CNIVersion string           `json:"cniVersion"`
		Interfaces []map[string]any `json:"interfaces"`
	}
	json.Unmarshal(raw, &generic)
	if generic.CNIVersion != n.version {
		t.Errorf("result cniVersion %q, want %q", generic.CNIVersion, n.version)
	}
	last := res.Interfaces[len(res.Interfaces)-1]
	if last.Name != tapName || last.Sandbox != netns || last.Mac == "" {
		t.Errorf("last result interface %+v, want TAP %s in %s", last, tapName, netns)
	}
	if _, has := generic.Interfaces[len(generic.Interfaces)-1]["mtu"]; has != (n.version == "1.1.0") {
		t.Errorf("TAP mtu in a %s result: %v", n.version, has)
	}
	vethIdx := -1
	for i, itf := range res.Interfaces {
		if itf.Name == ifname && itf.Sandbox == netns {
			vethIdx = i
		}
	}
	if vethIdx < 0 || len(res.IPs) == 0 {
		t.Fatalf("result lacks %s or IPs: %s", ifname, raw)
	}
	for _, ip := range res.IPs {
		if ip.Interface == nil || *ip.Interface != vethIdx {
			t.Errorf("IP %s not on the veth entry %d", ip.Address.String(), vethIdx)
		}
	}
	tap := netfixture.LinkIn(t, netns, tapName)
	veth := netfixture.LinkIn(t, netns, ifname)
	if tap == nil || veth == nil || !hostnet.IsTap(tap) {
		t.Fatalf("netns lacks %s/%s", ifname, tapName)
	}
	if tap.Attrs().MTU != veth.Attrs().MTU {
		t.Errorf("TAP MTU %d != veth MTU %d", tap.Attrs().MTU, veth.Attrs().MTU)
	}
	netfixture.In(t, netns, func() error {
		for _, c := range [][2]netlink.Link{{veth, tap}, {tap, veth}} {
			if ok, err := hostnet.HasRedirect(c[0], c[1].Attrs().Index); !ok || err != nil {
				t.Errorf("no redirect %s -> %s (%v)", c[0].Attrs().Name, c[1].Attrs().Name, err)
			}
		}
		return nil
	})
	rec, err := n.store(t).Get(id)
	if err != nil {
		t.Fatalf("record of %s: %v", id, err)
	}
	nic, ok := rec.NIC(ifname)
	if !ok || !nic.HostReady || nic.Tap != tapName || nic.MAC != veth.Attrs().HardwareAddr.String() ||
		len(nic.IPs) != 1 || !strings.HasPrefix(nic.IPs[0], n.prefix) || !strings.HasPrefix(nic.Gateway, n.prefix) || nic.Network != n.name {
		t.Errorf("recorded NIC %+v", nic)
	}
}

// checkGone asserts the NIC's TAP and filters are gone and the record too.
func checkGone(t *testing.T, n *tnet, netns, id, ifname string) {
	t.Helper()
	if netfixture.LinkIn(t, netns, hostnet.TapNameInNetns(ifname)) != nil {
		t.Errorf("TAP of %s still there", ifname)
	}
	snap := netfixture.Take(t, hostaudit.Scope{Netns: []string{netns}})
	if snap.Contains(fmt.Sprintf("prio %d", hostnet.FilterPriority)) {
		t.Errorf("vmnic filters left:\n%s", strings.Join(snap, "\n"))
	}
	if rec, err := n.store(t).Get(id); err == nil {
		if _, ok := rec.NIC(ifname); ok {
			t.Errorf("record still has %s: %+v", ifname, rec)
		}
	}
}

func TestChainsLibcni(t *testing.T) {
	for _, first := range []string{"bridge", "ptp"} {
		for _, v := range versions {
			t.Run(first+"/"+v, func(t *testing.T) {
				n := newNet(t, v, first)
				netns := netfixture.Netns(t, netfixture.Name("vmnict-c"))
				cfg := cniConfig(t)
				rt := &libcni.RuntimeConf{ContainerID: netfixture.Name("ctr"), NetNS: netns, IfName: "eth0"}
				before := netfixture.Take(t, n.scope(netns))
				res, err := cfg.AddNetworkList(tctx(t), n.list, rt)
				if err != nil {
					t.Fatalf("ADD: %v", err)
				}
				raw, _ := json.Marshal(res)
				checkAdded(t, n, raw, netns, rt.ContainerID, "eth0")
				if err := cfg.CheckNetworkList(tctx(t), n.list, rt); err != nil {
					t.Errorf("CHECK: %v", err)
				}
				if v == "1.1.0" {
					if err := cfg.GetStatusNetworkList(tctx(t), n.list); err != nil {
						t.Errorf("STATUS: %v", err)
					}
					// GC that lists the attachment keeps it.
					if err := cfg.GCNetworkList(tctx(t), n.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: rt.ContainerID, IfName: "eth0"}}}); err != nil {
						t.Errorf("GC: %v", err)
					}
					if err := cfg.CheckNetworkList(tctx(t), n.list, rt); err != nil {
						t.Errorf("CHECK after GC: %v", err)
					}
				}
				for i := 0; i < 2; i++ {
					if err := cfg.DelNetworkList(tctx(t), n.list, rt); err != nil {
						t.Fatalf("DEL #%d: %v", i+1, err)
					}
				}
				checkGone(t, n, netns, rt.ContainerID, "eth0")
				if d := before.Diff(netfixture.Take(t, n.scope(netns))); d != "" {
					t.Errorf("ADD+DEL left changes:\n%s", d)
				}
			})
		}
	}
}

// TestGCRemovesStaleAttachments runs vmnic's GC with a cache that no longer
// knows the attachment (so libcni sends only GC, no DEL).
func TestGCRemovesStaleAttachments(t *testing.T) {
	n := newNet(t, "1.1.0", "bridge")
	netns := netfixture.Netns(t, netfixture.Name("vmnict-g"))
	rt := &libcni.RuntimeConf{ContainerID: netfixture.Name("ctr"), NetNS: netns, IfName: "eth0"}
	if _, err := cniConfig(t).AddNetworkList(tctx(t), n.list, rt); err != nil {
		t.Fatal(err)
	}
	if err := cniConfig(t).GCNetworkList(tctx(t), n.list, &libcni.GCArgs{}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	checkGone(t, n, netns, rt.ContainerID, "eth0")
	if _, err := n.store(t).Get(rt.ContainerID); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("CNI-made record kept by GC: %v", err)
	}
	if netfixture.LinkIn(t, netns, "eth0") == nil {
		t.Error("GC touched the veth (it belongs to the bridge plugin)")
	}
}

func TestChainsCnitool(t *testing.T) {
	for _, first := range []string{"bridge", "ptp"} {
		for _, v := range versions {
			t.Run(first+"/"+v, func(t *testing.T) {
				n := newNet(t, v, first)
				netns := netfixture.Netns(t, netfixture.Name("vmnict-t"))
				before := netfixture.Take(t, n.scope(netns))
				out, err := cnitool(t, n, "eth0", "", "add", n.name, netns)
				if err != nil {
					t.Fatal(err)
				}
				recs, _ := n.store(t).IDs()
				if len(recs) != 1 || !strings.HasPrefix(recs[0], "cnitool-") {
					t.Fatalf("records %v", recs)
				}
				checkAdded(t, n, []byte(out), netns, recs[0], "eth0")
				if _, err := cnitool(t, n, "eth0", "", "check", n.name, netns); err != nil {
					t.Error(err)
				}
				if v == "1.1.0" {
					if _, err := cnitool(t, n, "eth0", "", "status", n.name, netns); err != nil {
						t.Error(err)
					}
					// cnitool gc DELs every cached attachment of the network, then GCs.
					if _, err := cnitool(t, n, "eth0", "", "gc", n.name, netns); err != nil {
						t.Error(err)
					}
					checkGone(t, n, netns, recs[0], "eth0")
				}
				for i := 0; i < 2; i++ {
					if _, err := cnitool(t, n, "eth0", "", "del", n.name, netns); err != nil {
						t.Fatal(err)
					}
				}
				checkGone(t, n, netns, recs[0], "eth0")
				if d := before.Diff(netfixture.Take(t, n.scope(netns))); d != "" {
					t.Errorf("add+del left changes:\n%s", d)
				}
			})
		}
	}
}

func TestTwoNICsOneSandbox(t *testing.T) {
	state := t.TempDir()
	a := newNet(t, "1.1.0", "bridge", withState(state))
	b := newNet(t, "1.0.0", "ptp", withState(state), second())
	netns := netfixture.Netns(t, netfixture.Name("vmnict-2"))
	cfg := cniConfig(t)
	id := netfixture.Name("pod")
	rtA := &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: "eth0"}
	rtB := &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: "net1"}
	// net1 first: the record still lists eth0 first.
	resB, err := cfg.AddNetworkList(tctx(t), b.list, rtB)
	if err != nil {
		t.Fatal(err)
	}
	resA, err := cfg.AddNetworkList(tctx(t), a.list, rtA)
	if err != nil {
		t.Fatal(err)
	}
	rawA, _ := json.Marshal(resA)
	rawB, _ := json.Marshal(resB)
	checkAdded(t, a, rawA, netns, id, "eth0")
	checkAdded(t, b, rawB, netns, id, "net1")
	rec, err := a.store(t).Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.NetworkConfigs) != 2 || rec.NetworkConfigs[0].IfName != "eth0" || rec.NetworkConfigs[1].Tap != "tapnet1" || rec.Phase != netsetup.PhaseConfigured {
		t.Errorf("record %+v", rec)
	}
	for _, c := range []struct {
		n  *tnet
		rt *libcni.RuntimeConf
	}{{a, rtA}, {b, rtB}} {
		if err := cfg.CheckNetworkList(tctx(t), c.n.list, c.rt); err != nil {
			t.Errorf("CHECK %s: %v", c.rt.IfName, err)
		}
	}
	if err := cfg.DelNetworkList(tctx(t), a.list, rtA); err != nil {
		t.Fatal(err)
	}
	rec, err = a.store(t).Get(id)
	if err != nil || len(rec.NetworkConfigs) != 1 || rec.NetworkConfigs[0].IfName != "net1" {
		t.Fatalf("after DEL eth0: %v %+v", err, rec)
	}
	if netfixture.LinkIn(t, netns, "tapnet1") == nil {
		t.Error("DEL of eth0 removed net1's TAP")
	}
	if err := cfg.DelNetworkList(tctx(t), b.list, rtB); err != nil {
		t.Fatal(err)
	}
	if _, err := a.store(t).Get(id); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("record after the last DEL: %v", err)
	}
}

func TestPortmapAfterVmnic(t *testing.T) {
	testenv.Command(t, "iptables-save")
	n := newNet(t, "1.0.0", "bridge", withPortmap())
	netns := netfixture.Netns(t, netfixture.Name("vmnict-m"))
	cfg := cniConfig(t)
	port := 31000 + int(subnetSeq.Add(1))
	rt := &libcni.RuntimeConf{ContainerID: netfixture.Name("ctr"), NetNS: netns, IfName: "eth0",
		CapabilityArgs: map[string]any{"portMappings": []map[string]any{{"hostPort": port, "containerPort": 80, "protocol": "tcp"}}}}
	res, err := cfg.AddNetworkList(tctx(t), n.list, rt)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(res)
	checkAdded(t, n, raw, netns, rt.ContainerID, "eth0")
	r100, _ := current.NewResultFromResult(res)
	ip := r100.IPs[0].Address.IP.String()
	want := fmt.Sprintf("--to-destination %s:80", ip)
	rules := netfixture.Take(t, hostaudit.Scope{IPTablesMarkers: []string{want}})
	if len(rules) == 0 {
		t.Fatalf("portmap's DNAT to %s:80 missing", ip)
	}
	if err := cfg.CheckNetworkList(tctx(t), n.list, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := cfg.DelNetworkList(tctx(t), n.list, rt); err != nil {
		t.Fatal(err)
	}
	if rules := netfixture.Take(t, hostaudit.Scope{IPTablesMarkers: []string{want}}); len(rules) != 0 {
		t.Errorf("portmap rules left: %v", rules)
	}
	checkGone(t, n, netns, rt.ContainerID, "eth0")
}

// prev runs the first plugin alone and returns its result: the prevResult
// vmnic gets in a chain. The first plugin's DEL runs at cleanup.
func prev(t *testing.T, n *tnet, netns, id, ifname string) types.Result {
	t.Helper()
	cfg := cniConfig(t)
	l := n.withoutVmnic(t)
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: ifname}
	res, err := cfg.AddNetworkList(tctx(t), l, rt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cfg.DelNetworkList(tctx(t), l, rt) })
	return res
}

func TestBadInput(t *testing.T) {
	type input struct {
		run   pluginRun
		n     *tnet
		netns string
	}
	cases := []struct {
		name   string
		mutate func(t *testing.T, in *input)
		code   uint
		msg    string
	}{
		{"malformed conf", func(t *testing.T, in *input) {
			in.run.stdin = []byte(`{"cniVersion":"1.0.0","name":"x","type":"vmnic",`)
		}, types.ErrDecodingFailure, ""},
		{"queues wrong type", func(t *testing.T, in *input) { in.run.stdin = setKey(t, in.run.stdin, "queues", "four") }, types.ErrDecodingFailure, "queues"},
		{"missing prevResult", func(t *testing.T, in *input) { in.run.stdin = setKey(t, in.run.stdin, "prevResult", nil) }, types.ErrInvalidNetworkConfig, "prevResult"},
		{"empty prevResult", func(t *testing.T, in *input) { in.run.stdin = setKey(t, in.run.stdin, "prevResult", map[string]any{}) }, types.ErrInvalidNetworkConfig, "prevResult"},
		{"ifname not in prevResult", func(t *testing.T, in *input) { in.run.ifname = "net7" }, types.ErrInvalidNetworkConfig, `"net7"`},
		{"ifname not in netns", func(t *testing.T, in *input) {
			in.run.ifname = "net7"
			in.run.stdin = renamePrevIface(t, in.run.stdin, "eth0", "net7")
		}, types.ErrInvalidEnvironmentVariables, "CNI_IFNAME net7"},
		{"netns not a netns", func(t *testing.T, in *input) {
			p := t.TempDir() + "/notns"
			os.WriteFile(p, nil, 0o600)
			in.run.netns = p
		}, types.ErrInvalidNetNS, "CNI_NETNS"},
		{"netns missing", func(t *testing.T, in *input) { in.run.netns = t.TempDir() + "/gone" }, types.ErrInvalidNetNS, "CNI_NETNS"},
		{"tap name taken", func(t *testing.T, in *input) { netfixture.Blocker(t, in.netns, "tapeth0") }, types.ErrInvalidEnvironmentVariables, "TAP name tapeth0"},
		{"invalid mac", func(t *testing.T, in *input) { in.run.stdin = setPrevMAC(t, in.run.stdin, "eth0", "zz:zz") }, types.ErrInvalidNetworkConfig, "mac"},
		{"multicast mac", func(t *testing.T, in *input) { in.run.stdin = setPrevMAC(t, in.run.stdin, "eth0", "01:00:5e:00:00:01") }, types.ErrInvalidNetworkConfig, "multicast"},
		{"invalid queues", func(t *testing.T, in *input) { in.run.stdin = setKey(t, in.run.stdin, "queues", 1000) }, types.ErrInvalidNetworkConfig, "queues 1000"},
		{"invalid queueSize", func(t *testing.T, in *input) { in.run.stdin = setKey(t, in.run.stdin, "queueSize", 3) }, types.ErrInvalidNetworkConfig, "queueSize 3"},
		{"invalid backend", func(t *testing.T, in *input) { in.run.stdin = setKey(t, in.run.stdin, "backend", "macvtap") }, types.ErrInvalidNetworkConfig, "backend"},
		{"unsupported cniVersion", func(t *testing.T, in *input) { in.run.stdin = setKey(t, in.run.stdin, "cniVersion", "0.3.1") }, types.ErrIncompatibleCNIVersion, "0.4.0, 1.0.0, 1.1.0"},
		{"bad CNI_ARGS", func(t *testing.T, in *input) { in.run.args = "FOO=bar" }, types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
		{"missing CNI_IFNAME", func(t *testing.T, in *input) { in.run.ifname = "" }, types.ErrInvalidEnvironmentVariables, "CNI_IFNAME"},
		{"bad VMNIC_SANDBOX_ID", func(t *testing.T, in *input) { in.run.args = "IgnoreUnknown=1;VMNIC_SANDBOX_ID=../x" }, types.ErrInvalidEnvironmentVariables, "VMNIC_SANDBOX_ID"},
		{"invalid record", func(t *testing.T, in *input) {
			rec := netsetup.New(in.run.containerID)
			rec.Phase, rec.Error, rec.NetnsPath = netsetup.PhaseInvalid, "teardown failed: test", in.netns
			if err := in.n.store(t).Create(tctx(t), rec); err != nil {
				t.Fatal(err)
			}
		}, types.ErrInvalidNetworkConfig, "is invalid"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := newNet(t, "1.0.0", "bridge")
			netns := netfixture.Netns(t, netfixture.Name("vmnict-b"))
			id := netfixture.Name("ctr")
			pr := prev(t, n, netns, id, "eth0")
			in := &input{n: n, netns: netns, run: pluginRun{command: "ADD", containerID: id, netns: netns, ifname: "eth0", stdin: n.vmnicConf(t, pr)}}
			c.mutate(t, in)
			before := netfixture.Take(t, n.scope(netns))
			out := in.run.exec(t)
			if out.err == nil {
				t.Fatalf("ADD succeeded: %s", out.stdout)
			}
			if out.cniErr == nil {
				t.Fatalf("no CNI error JSON on stdout: %q (stderr %s)", out.stdout, out.stderr)
			}
			if out.cniErr.Code != c.code || !strings.Contains(out.cniErr.Msg+" "+out.cniErr.Details, c.msg) {
				t.Errorf("error %+v, want code %d mentioning %q", out.cniErr, c.code, c.msg)
			}
			if d := before.Diff(netfixture.Take(t, n.scope(netns))); d != "" {
				t.Errorf("a refused ADD changed the host:\n%s", d)
			}
		})
	}
}

func setKey(t *testing.T, conf []byte, key string, v any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	if v == nil {
		delete(m, key)
	} else {
		m[key] = v
	}
	b, _ := json.Marshal(m)
	return b
}

func editPrev(t *testing.T, conf []byte, fn func(itf map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	for _, itf := range m["prevResult"].(map[string]any)["interfaces"].([]any) {
		fn(itf.(map[string]any))
	}
	b, _ := json.Marshal(m)
	return b
}

func renamePrevIface(t *testing.T, conf []byte, from, to string) []byte {
	return editPrev(t, conf, func(itf map[string]any) {
		if itf["name"] == from && itf["sandbox"] != nil {
			itf["name"] = to
		}
	})
}

func setPrevMAC(t *testing.T, conf []byte, name, mac string) []byte {
	return editPrev(t, conf, func(itf map[string]any) {
		if itf["name"] == name && itf["sandbox"] != nil {
			itf["mac"] = mac
		}
	})
}

// TestDelVariants: DEL twice, without prevResult, and with the netns gone.
func TestDelVariants(t *testing.T) {
	for _, variant := range []string{"no prevResult", "netns gone", "empty CNI_NETNS"} {
		t.Run(variant, func(t *testing.T) {
			n := newNet(t, "1.1.0", "ptp")
			netns := netfixture.Netns(t, netfixture.Name("vmnict-d"))
			id := netfixture.Name("ctr")
			pr := prev(t, n, netns, id, "eth0")
			add := pluginRun{command: "ADD", containerID: id, netns: netns, ifname: "eth0", stdin: n.vmnicConf(t, pr)}
			if out := add.exec(t); out.err != nil {
				t.Fatalf("ADD: %v %s %s", out.err, out.stdout, out.stderr)
			}
			del := pluginRun{command: "DEL", containerID: id, netns: netns, ifname: "eth0", stdin: n.vmnicConf(t, nil)}
			switch variant {
			case "netns gone":
				if err := unmountNetns(netns); err != nil {
					t.Fatal(err)
				}
			case "empty CNI_NETNS":
				del.netns = ""
			}
			for i := 0; i < 2; i++ {
				if out := del.exec(t); out.err != nil {
					t.Fatalf("DEL #%d: %v %s", i+1, out.err, out.stdout)
				}
			}
			if _, err := n.store(t).Get(id); !errors.Is(err, netsetup.ErrNotFound) {
				t.Errorf("record after DEL: %v", err)
			}
			if variant != "netns gone" {
				checkGone(t, n, netns, id, "eth0")
			}
		})
	}
}

func unmountNetns(p string) error {
	return unix.Unmount(p, unix.MNT_DETACH)
}

func TestCheckDetectsDrift(t *testing.T) {
	cases := []struct {
		name   string
		break_ func(t *testing.T, netns string)
		msg    string
	}{
		{"missing TAP", func(t *testing.T, netns string) {
			netfixture.In(t, netns, func() error { return hostnet.DeleteTap("tapeth0") })
		}, "TAP tapeth0 missing"},
		{"missing filter", func(t *testing.T, netns string) {
			netfixture.In(t, netns, func() error {
				l, _ := netlink.LinkByName("tapeth0")
				return hostnet.DelRedirect(l)
			})
		}, "filter tapeth0 -> eth0 missing"},
		{"MTU mismatch", func(t *testing.T, netns string) {
			netfixture.In(t, netns, func() error {
				l, _ := netlink.LinkByName("tapeth0")
				return netlink.LinkSetMTU(l, 1280)
			})
		}, "MTU mismatch"},
		{"MAC mismatch", func(t *testing.T, netns string) {
			netfixture.In(t, netns, func() error {
				l, _ := netlink.LinkByName("eth0")
				mac, _ := net.ParseMAC("02:11:22:33:44:55")
				return netlink.LinkSetHardwareAddr(l, mac)
			})
		}, "MAC mismatch"},
		{"address gone from the veth", func(t *testing.T, netns string) {
			netfixture.In(t, netns, func() error {
				l, _ := netlink.LinkByName("eth0")
				addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
				if err != nil || len(addrs) == 0 {
					return fmt.Errorf("eth0 IPv4 addresses: %v %v", addrs, err)
				}
				return netlink.AddrDel(l, &addrs[0])
			})
		}, "IPv4: eth0 no longer has"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := newNet(t, "1.0.0", "ptp")
			netns := netfixture.Netns(t, netfixture.Name("vmnict-k"))
			cfg := cniConfig(t)
			rt := &libcni.RuntimeConf{ContainerID: netfixture.Name("ctr"), NetNS: netns, IfName: "eth0"}
			if _, err := cfg.AddNetworkList(tctx(t), n.list, rt); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cfg.DelNetworkList(tctx(t), n.list, rt) })
			if err := cfg.CheckNetworkList(tctx(t), n.list, rt); err != nil {
				t.Fatalf("CHECK before: %v", err)
			}
			c.break_(t, netns)
			// vmnic's own CHECK (the ptp plugin's CHECK would see some of
			// these first), with the chain's cached result as prevResult.
			res, err := cfg.GetNetworkListCachedResult(n.list, rt)
			if err != nil || res == nil {
				t.Fatalf("cached result: %v", err)
			}
			out := pluginRun{command: "CHECK", containerID: rt.ContainerID, netns: netns, ifname: "eth0", stdin: n.vmnicConf(t, res)}.exec(t)
			if out.cniErr == nil || !strings.Contains(out.cniErr.Msg, c.msg) {
				t.Errorf("CHECK = %+v (%s), want %q", out.cniErr, out.stdout, c.msg)
			}
		})
	}
}

func TestStatus(t *testing.T) {
	n := newNet(t, "1.1.0", "ptp")
	ok := pluginRun{command: "STATUS", stdin: n.vmnicConf(t, nil)}
	if out := ok.exec(t); out.err != nil {
		t.Fatalf("STATUS: %v %s", out.err, out.stdout)
	}
	file := t.TempDir() + "/file"
	os.WriteFile(file, nil, 0o600)
	bad := pluginRun{command: "STATUS", stdin: setKey(t, n.vmnicConf(t, nil), "stateDir", file)}
	out := bad.exec(t)
	if out.cniErr == nil || out.cniErr.Code != types.ErrPluginNotAvailable || !strings.Contains(out.cniErr.Msg, "stateDir") {
		t.Errorf("STATUS on a bad stateDir = %+v %s", out.cniErr, out.stdout)
	}
	old := pluginRun{command: "STATUS", stdin: setKey(t, n.vmnicConf(t, nil), "cniVersion", "1.0.0")}
	if out := old.exec(t); out.cniErr == nil || out.cniErr.Code != types.ErrIncompatibleCNIVersion {
		t.Errorf("STATUS at 1.0.0 = %+v", out.cniErr)
	}
}

func TestBridgeBackendPlugin(t *testing.T) {
	testenv.Command(t, "iptables")
	n := newNet(t, "1.1.0", "bridge")
	// vmnic's TAP joins the bridge the bridge plugin uses.
	n = rebuildWith(t, n, map[string]any{"backend": "bridge", "bridge": n.bridge})
	netns := netfixture.Netns(t, netfixture.Name("vmnict-h"))
	cfg := cniConfig(t)
	rt := &libcni.RuntimeConf{ContainerID: netfixture.Name("ctr"), NetNS: netns, IfName: "eth0"}
	before := netfixture.Take(t, n.scope(netns))
	res, err := cfg.AddNetworkList(tctx(t), n.list, rt)
	if err != nil {
		t.Fatal(err)
	}
	r100, _ := current.NewResultFromResult(res)
	tapItf := r100.Interfaces[len(r100.Interfaces)-1]
	if !strings.HasPrefix(tapItf.Name, "vmt") || tapItf.Sandbox != "" {
		t.Errorf("bridge-backend TAP in the result: %+v", tapItf)
	}
	tap, err := netlink.LinkByName(tapItf.Name)
	if err != nil {
		t.Fatalf("TAP %s not on the host: %v", tapItf.Name, err)
	}
	br, _ := netlink.LinkByName(n.bridge)
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		t.Error("TAP is not a port of the bridge")
	}
	// The veth's host side is parked (down); the container side stays up.
	for _, l := range netfixture.Take(t, hostaudit.Scope{HostLinks: []string{n.bridge}}) {
		if strings.Contains(l, "type veth") && !strings.Contains(l, " down ") {
			t.Errorf("veth port not parked: %s", l)
		}
	}
	if v := netfixture.LinkIn(t, netns, "eth0"); v == nil || v.Attrs().Flags&net.FlagUp == 0 {
		t.Error("container veth went down")
	}
	if !netfixture.Take(t, hostaudit.Scope{IPTablesMarkers: []string{"-i " + n.bridge + " -o " + n.bridge}}).Contains(`--comment vmnic -j ACCEPT`) {
		t.Error("FORWARD ACCEPT rule missing")
	}
	if err := cfg.CheckNetworkList(tctx(t), n.list, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := cfg.DelNetworkList(tctx(t), n.list, rt); err != nil {
		t.Fatal(err)
	}
	if _, err := netlink.LinkByName(tapItf.Name); err == nil {
		t.Error("TAP left on the host")
	}
	if d := before.Diff(netfixture.Take(t, n.scope(netns))); d != "" {
		t.Errorf("bridge backend ADD+DEL left changes:\n%s", d)
	}
}

// rebuildWith rebuilds n's conflist with extra vmnic keys.
func rebuildWith(t *testing.T, n *tnet, keys map[string]any) *tnet {
	t.Helper()
	var m map[string]any
	json.Unmarshal(n.raw, &m)
	vm := m["plugins"].([]any)[1].(map[string]any)
	for k, v := range keys {
		vm[k] = v
	}
	n.raw, _ = json.Marshal(m)
	var err error
	if n.list, err = libcni.ConfListFromBytes(n.raw); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestZeroToNToZero: vmnicctl prepare, cnitool add on two networks (the
// netns inode finds the prepared record), cnitool del on both: the netns
// and the record stay at zero NICs; vmnicctl teardown removes both.
func TestZeroToNToZero(t *testing.T) {
	bin := buildBinaries(t)
	state, nsdir := t.TempDir(), t.TempDir()
	a := newNet(t, "1.1.0", "bridge", withState(state))
	b := newNet(t, "1.0.0", "ptp", withState(state), second())
	ctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin+"/vmnicctl", append([]string{"--state-dir", state, "--netns-dir", nsdir}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("vmnicctl %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	id := netfixture.Name("vmnict-z")
	netns := strings.TrimSpace(ctl("prepare", id))
	t.Cleanup(func() {
		exec.Command(bin+"/vmnicctl", "--state-dir", state, "--netns-dir", nsdir, "teardown", id).Run()
	})
	if netns != nsdir+"/vmnic-"+id {
		t.Fatalf("prepare printed %q", netns)
	}
	if _, err := cnitool(t, a, "eth0", "", "add", a.name, netns); err != nil {
		t.Fatal(err)
	}
	if _, err := cnitool(t, b, "net1", "", "add", b.name, netns); err != nil {
		t.Fatal(err)
	}
	var rec netsetup.NetSetup
	if err := json.Unmarshal([]byte(ctl("show", id, "--json")), &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Phase != netsetup.PhaseConfigured || len(rec.NetworkConfigs) != 2 || !rec.NetnsOwned {
		t.Fatalf("after two adds: %+v", rec)
	}
	if ids, _ := a.store(t).IDs(); !slices.Equal(ids, []string{id}) {
		t.Errorf("records %v: the adds did not find the prepared sandbox", ids)
	}
	table := ctl("show", id)
	for _, want := range []string{"tapeth0", "tapnet1", a.prefix, b.prefix, "configured"} {
		if !strings.Contains(table, want) {
			t.Errorf("show lacks %q:\n%s", want, table)
		}
	}
	if _, err := cnitool(t, a, "eth0", "", "check", a.name, netns); err != nil {
		t.Error(err)
	}
	for _, c := range []struct {
		n      *tnet
		ifname string
	}{{a, "eth0"}, {b, "net1"}} {
		if _, err := cnitool(t, c.n, c.ifname, "", "del", c.n.name, netns); err != nil {
			t.Fatal(err)
		}
	}
	rec = netsetup.NetSetup{}
	json.Unmarshal([]byte(ctl("show", id, "--json")), &rec)
	if rec.Phase != netsetup.PhasePrepared || len(rec.NetworkConfigs) != 0 {
		t.Errorf("after the dels: %+v", rec)
	}
	if _, err := netsetup.IdentifyNetns(netns); err != nil {
		t.Errorf("netns gone at zero NICs: %v", err)
	}
	if !strings.Contains(ctl("list"), id) {
		t.Error("list lacks the sandbox")
	}
	ctl("teardown", id)
	if _, err := os.Lstat(netns); !os.IsNotExist(err) {
		t.Errorf("netns after teardown: %v", err)
	}
	if ids, _ := a.store(t).IDs(); len(ids) != 0 {
		t.Errorf("records after teardown: %v", ids)
	}
}

// TestPreexistingQdiscThroughPlugin: a clsact or ingress qdisc with
// somebody else's filter on the veth before vmnic's ADD is used, kept, and
// left exactly as it was by DEL.
func TestPreexistingQdiscThroughPlugin(t *testing.T) {
	for _, kind := range []string{"clsact", "ingress"} {
		t.Run(kind, func(t *testing.T) {
			n := newNet(t, "1.1.0", "ptp")
			netns := netfixture.Netns(t, netfixture.Name("vmnict-q"))
			id := netfixture.Name("ctr")
			pr := prev(t, n, netns, id, "eth0")
			netfixture.In(t, netns, func() error {
				veth, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				attrs := netlink.QdiscAttrs{LinkIndex: veth.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}
				var q netlink.Qdisc = &netlink.Ingress{QdiscAttrs: attrs}
				if kind == "clsact" {
					q = &netlink.Clsact{QdiscAttrs: attrs}
				}
				if err := netlink.QdiscAdd(q); err != nil {
					return err
				}
				return netlink.FilterAdd(&netlink.U32{
					FilterAttrs: netlink.FilterAttrs{LinkIndex: veth.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Priority: 9, Protocol: unix.ETH_P_IP},
					ClassId:     netlink.MakeHandle(1, 1),
				})
			})
			before := netfixture.Take(t, n.scope(netns))
			add := pluginRun{command: "ADD", containerID: id, netns: netns, ifname: "eth0", stdin: n.vmnicConf(t, pr)}
			if out := add.exec(t); out.err != nil {
				t.Fatalf("ADD: %v %s", out.err, out.stdout)
			}
			mid := netfixture.Take(t, n.scope(netns))
			for _, want := range []string{"qdisc " + kind + " dev eth0", "filter dev eth0 parent ffff:fff2 u32 prio 9"} {
				if !mid.Contains(want) {
					t.Errorf("after ADD no %q:\n%s", want, strings.Join(mid, "\n"))
				}
			}
			if !mid.Contains(fmt.Sprintf("filter dev eth0 parent ffff:fff2 u32 prio %d", hostnet.FilterPriority)) &&
				!mid.Contains(fmt.Sprintf("filter dev eth0 parent ffff:fff2 bpf prio %d", hostnet.FilterPriority)) {
				t.Errorf("after ADD no vmnic filter (u32 or bpf, prio %d) on eth0:\n%s", hostnet.FilterPriority, strings.Join(mid, "\n"))
			}
			del := pluginRun{command: "DEL", containerID: id, netns: netns, ifname: "eth0", stdin: n.vmnicConf(t, nil)}
			if out := del.exec(t); out.err != nil {
				t.Fatalf("DEL: %v %s", out.err, out.stdout)
			}
			if d := before.Diff(netfixture.Take(t, n.scope(netns))); d != "" {
				t.Errorf("DEL did not leave the %s qdisc as it was:\n%s", kind, d)
			}
		})
	}
}
