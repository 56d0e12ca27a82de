package main

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
)

func TestParseConf(t *testing.T) {
	base := `"cniVersion":"1.1.0","name":"net","type":"vmnic"`
	cases := []struct {
		name string
		json string
		code uint   // 0 = valid
		msg  string // part of the error message
		want func(t *testing.T, r *Resolved)
	}{
		{name: "defaults", json: `{` + base + `}`, want: func(t *testing.T, r *Resolved) {
			if r.Backend != netsetup.BackendCNI || r.Queues != 1 || r.QueueSize != 0 || r.TapOwner != -1 || r.TapGroup != -1 ||
				r.StateDir != netsetup.DefaultStateDir || r.Level != slog.LevelWarn {
				t.Errorf("defaults = %+v", r)
			}
		}},
		{name: "all keys", json: `{` + base + `,"stateDir":"/tmp/s","backend":"bridge","bridge":"br0","queues":4,"queueSize":1024,
			"tapOwner":107,"tapGroup":"108","logFile":"/tmp/l","logLevel":"debug","vmmTimeout":"3s","removeTimeout":12,"unknownKey":{"x":1}}`,
			want: func(t *testing.T, r *Resolved) {
				if r.Backend != netsetup.BackendBridge || r.Bridge != "br0" || r.Queues != 4 || r.QueueSize != 1024 ||
					r.TapOwner != 107 || r.TapGroup != 108 || r.StateDir != "/tmp/s" || r.LogFile != "/tmp/l" ||
					r.Level != slog.LevelDebug || r.VMMTimeout.Duration != 3*time.Second || r.RemoveTimeout.Duration != 12*time.Second {
					t.Errorf("parsed = %+v", r.NetConf)
				}
			}},
		{name: "owner by name", json: `{` + base + `,"tapOwner":"root","tapGroup":"root"}`, want: func(t *testing.T, r *Resolved) {
			if r.TapOwner != 0 || r.TapGroup != 0 {
				t.Errorf("owner/group = %d/%d", r.TapOwner, r.TapGroup)
			}
		}},
		{name: "valid attachments", json: `{` + base + `,"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],"cni.dev/attachments":[{"containerID":"c2","ifname":"net1"}]}`,
			want: func(t *testing.T, r *Resolved) {
				if len(r.ValidAttachments) != 1 || r.ValidAttachments[0].ContainerID != "c1" || len(r.LegacyAttachments) != 1 || r.LegacyAttachments[0].IfName != "net1" {
					t.Errorf("attachments = %+v %+v", r.ValidAttachments, r.LegacyAttachments)
				}
			}},
		{name: "data path", json: `{` + base + `,"dataPath":"u32"}`, want: func(t *testing.T, r *Resolved) {
			if r.DataPath != hostnet.ModeU32 {
				t.Errorf("dataPath = %q", r.DataPath)
			}
		}},
		{name: "data path unset", json: `{` + base + `}`, want: func(t *testing.T, r *Resolved) {
			if r.DataPath != "" {
				t.Errorf("dataPath = %q, want unset (the engine's default)", r.DataPath)
			}
		}},
		{name: "bad data path", json: `{` + base + `,"dataPath":"xdp"}`, code: types.ErrInvalidNetworkConfig, msg: `dataPath "xdp"`},
		{name: "data path with bridge backend", json: `{` + base + `,"backend":"bridge","bridge":"br0","dataPath":"bpf"}`, code: types.ErrInvalidNetworkConfig, msg: "cni backend only"},
		{name: "not json", json: `{`, code: types.ErrDecodingFailure, msg: "decode"},
		{name: "queues wrong type", json: `{` + base + `,"queues":"two"}`, code: types.ErrDecodingFailure, msg: "queues"},
		{name: "no cniVersion", json: `{"name":"n","type":"vmnic"}`, code: types.ErrInvalidNetworkConfig, msg: "cniVersion"},
		{name: "bad backend", json: `{` + base + `,"backend":"macvtap"}`, code: types.ErrInvalidNetworkConfig, msg: `backend "macvtap"`},
		{name: "bridge without name", json: `{` + base + `,"backend":"bridge"}`, code: types.ErrInvalidNetworkConfig, msg: `"bridge"`},
		{name: "bridge name with cni backend", json: `{` + base + `,"bridge":"br0"}`, code: types.ErrInvalidNetworkConfig, msg: "backend"},
		{name: "bridge name too long", json: `{` + base + `,"backend":"bridge","bridge":"averyveryverylongbridge"}`, code: types.ErrInvalidNetworkConfig, msg: "bridge"},
		{name: "negative queues", json: `{` + base + `,"queues":-1}`, code: types.ErrInvalidNetworkConfig, msg: "queues -1"},
		{name: "too many queues", json: `{` + base + `,"queues":257}`, code: types.ErrInvalidNetworkConfig, msg: "queues 257"},
		{name: "queue size not power of two", json: `{` + base + `,"queueSize":300}`, code: types.ErrInvalidNetworkConfig, msg: "queueSize 300"},
		{name: "unknown owner", json: `{` + base + `,"tapOwner":"no-such-user-vmnic"}`, code: types.ErrInvalidNetworkConfig, msg: "tapOwner"},
		{name: "negative owner", json: `{` + base + `,"tapOwner":-5}`, code: types.ErrDecodingFailure, msg: "tapOwner"},
		{name: "bad log level", json: `{` + base + `,"logLevel":"loud"}`, code: types.ErrInvalidNetworkConfig, msg: "logLevel"},
		{name: "bad timeout", json: `{` + base + `,"vmmTimeout":"soon"}`, code: types.ErrDecodingFailure, msg: "vmmTimeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := parseConf([]byte(c.json))
			if c.code == 0 {
				if err != nil {
					t.Fatalf("parseConf: %v", err)
				}
				c.want(t, r)
				return
			}
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("error = %v (%T), want a CNI error", err, err)
			}
			if te.Code != c.code || !strings.Contains(te.Msg+" "+te.Details, c.msg) {
				t.Errorf("error = code %d %q %q, want code %d mentioning %q", te.Code, te.Msg, te.Details, c.code, c.msg)
			}
		})
	}
}

func TestParsePrevResult(t *testing.T) {
	for _, c := range []struct {
		name, json string
		present    bool
		code       uint
	}{
		{"absent", `{"cniVersion":"1.0.0","name":"n","type":"vmnic"}`, false, 0},
		{"empty", `{"cniVersion":"1.0.0","name":"n","type":"vmnic","prevResult":{}}`, false, 0},
		{"present", `{"cniVersion":"1.0.0","name":"n","type":"vmnic","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}]}}`, true, 0},
		{"garbage", `{"cniVersion":"1.0.0","name":"n","type":"vmnic","prevResult":{"cniVersion":"1.0.0","ips":"nope"}}`, false, types.ErrDecodingFailure},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := parseConf([]byte(c.json))
			if err != nil {
				t.Fatal(err)
			}
			err = parsePrevResult(r.NetConf)
			if c.code != 0 {
				var te *types.Error
				if !errors.As(err, &te) || te.Code != c.code {
					t.Fatalf("error = %v, want code %d", err, c.code)
				}
				return
			}
			if err != nil || (r.PrevResult != nil) != c.present {
				t.Errorf("err %v, prevResult %v, want present=%v", err, r.PrevResult, c.present)
			}
		})
	}
}

func TestIDAndDurationJSON(t *testing.T) {
	var id ID
	for in, want := range map[string]ID{`7`: {Value: 7}, `"8"`: {Value: 8}, `"qemu"`: {Value: -1, Name: "qemu"}} {
		id = ID{}
		if err := json.Unmarshal([]byte(in), &id); err != nil || id != want {
			t.Errorf("ID %s = %+v %v, want %+v", in, id, err, want)
		}
	}
	for _, bad := range []string{`""`, `-1`, `true`, `4294967296`} {
		if err := json.Unmarshal([]byte(bad), &id); err == nil {
			t.Errorf("ID %s accepted", bad)
		}
	}
	var d Duration
	for in, want := range map[string]time.Duration{`"1m"`: time.Minute, `2.5`: 2500 * time.Millisecond, `0`: 0} {
		if err := json.Unmarshal([]byte(in), &d); err != nil || d.Duration != want {
			t.Errorf("Duration %s = %v %v, want %v", in, d, err, want)
		}
	}
	for _, bad := range []string{`"-1s"`, `-3`, `"x"`, `[]`} {
		if err := json.Unmarshal([]byte(bad), &d); err == nil {
			t.Errorf("Duration %s accepted", bad)
		}
	}
}

func prevFixture() *current.Result {
	idx := func(i int) *int { return &i }
	_, n4, _ := net.ParseCIDR("10.201.0.5/24")
	n4.IP = net.ParseIP("10.201.0.5")
	_, n6, _ := net.ParseCIDR("fd00::5/64")
	n6.IP = net.ParseIP("fd00::5")
	_, other, _ := net.ParseCIDR("10.9.0.2/24")
	_, dst, _ := net.ParseCIDR("0.0.0.0/0")
	return &current.Result{
		CNIVersion: "1.1.0",
		Interfaces: []*current.Interface{
			{Name: "cni0", Mac: "aa:aa:aa:aa:aa:01"},
			{Name: "veth1", Mac: "aa:aa:aa:aa:aa:02"},
			{Name: "eth0", Mac: "02:00:0a:c9:00:05", Sandbox: "/var/run/netns/x"},
			{Name: "net1", Mac: "02:00:0a:c9:00:06", Sandbox: "/var/run/netns/x"},
		},
		IPs: []*current.IPConfig{
			{Interface: idx(2), Address: *n4, Gateway: net.ParseIP("10.201.0.1")},
			{Interface: idx(2), Address: *n6, Gateway: net.ParseIP("fd00::1")},
			{Interface: idx(3), Address: *other},
		},
		Routes: []*types.Route{{Dst: *dst, GW: net.ParseIP("10.201.0.1"), MTU: 1400}},
		DNS:    types.DNS{Nameservers: []string{"10.201.0.1"}, Search: []string{"svc"}},
	}
}

func TestPickInterface(t *testing.T) {
	prev := prevFixture()
	p, err := pickInterface(prev, "eth0", "/var/run/netns/x")
	if err != nil {
		t.Fatal(err)
	}
	if p.index != 2 || p.mac != "02:00:0a:c9:00:05" || strings.Join(p.ips, ",") != "10.201.0.5/24,fd00::5/64" || p.gateway != "10.201.0.1" {
		t.Errorf("picked %+v", p)
	}
	if len(p.routes) != 1 || p.routes[0] != (netsetup.Route{Dst: "0.0.0.0/0", GW: "10.201.0.1", MTU: 1400}) {
		t.Errorf("routes %+v", p.routes)
	}
	if d := p.dns(types.DNS{}); d == nil || d.Nameservers[0] != "10.201.0.1" || d.Search[0] != "svc" {
		t.Errorf("dns %+v", d)
	}
	// prevResult without DNS: the conf's DNS is used.
	p.prevDNS = types.DNS{}
	if d := p.dns(types.DNS{Domain: "example"}); d == nil || d.Domain != "example" {
		t.Errorf("conf dns %+v", d)
	}
	if _, err := pickInterface(prev, "eth9", "/var/run/netns/x"); err == nil || !strings.Contains(err.Error(), `"eth9"`) {
		t.Errorf("missing ifname: %v", err)
	}
	// A host interface of that name does not count.
	if _, err := pickInterface(prev, "veth1", "/var/run/netns/x"); err == nil {
		t.Error("a host-side interface was picked")
	}
	// Cilium-style: IPs without an interface index go to the only sandbox interface.
	cil := &current.Result{CNIVersion: "1.0.0", Interfaces: []*current.Interface{{Name: "eth0", Sandbox: "/n"}}, IPs: []*current.IPConfig{{Address: prev.IPs[0].Address}}}
	if p, err := pickInterface(cil, "eth0", "/n"); err != nil || len(p.ips) != 1 {
		t.Errorf("cilium-style %+v %v", p, err)
	}
}

func TestBuildResult(t *testing.T) {
	added := &sandbox.AddedNIC{NIC: netsetup.NIC{Tap: "tapeth0", MTU: 1400}, TapMAC: "de:ad:be:ef:00:01", Sandbox: "/var/run/netns/x"}
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			prev := prevFixture()
			res := buildResult(prev, added, v)
			if len(res.Interfaces) != 5 || len(prev.Interfaces) != 4 {
				t.Fatalf("interfaces %d (prev %d)", len(res.Interfaces), len(prev.Interfaces))
			}
			tap := res.Interfaces[4]
			wantMTU := 0
			if v == "1.1.0" {
				wantMTU = 1400
			}
			if tap.Name != "tapeth0" || tap.Mac != "de:ad:be:ef:00:01" || tap.Sandbox != "/var/run/netns/x" || tap.Mtu != wantMTU {
				t.Errorf("tap interface %+v", tap)
			}
			if *res.IPs[0].Interface != 2 {
				t.Errorf("IPs moved off the veth: %+v", res.IPs[0])
			}
			out, err := res.GetAsVersion(v)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := json.Marshal(out)
			if !strings.Contains(string(b), `"cniVersion":"`+v+`"`) || !strings.Contains(string(b), "tapeth0") {
				t.Errorf("as %s: %s", v, b)
			}
			var generic struct {
				Interfaces []map[string]any `json:"interfaces"`
			}
			if err := json.Unmarshal(b, &generic); err != nil || len(generic.Interfaces) != 5 {
				t.Fatalf("decode %s output: %v %s", v, err, b)
			}
			if _, has := generic.Interfaces[4]["mtu"]; has != (v == "1.1.0") {
				t.Errorf("TAP mtu key in %s output: %s", v, b)
			}
		})
	}
}

func TestCNIErrorCodes(t *testing.T) {
	for _, c := range []struct {
		err  error
		code uint
	}{
		{&sandbox.Error{Code: types.ErrInvalidNetNS, Msg: "x"}, types.ErrInvalidNetNS},
		{types.NewError(types.ErrTryAgainLater, "y", ""), types.ErrTryAgainLater},
		{errors.New("z"), types.ErrInternal},
	} {
		var te *types.Error
		if !errors.As(cniError(c.err), &te) || te.Code != c.code {
			t.Errorf("cniError(%v) = %v, want code %d", c.err, cniError(c.err), c.code)
		}
	}
	if cniError(nil) != nil {
		t.Error("cniError(nil) != nil")
	}
}

func TestLoadArgs(t *testing.T) {
	a, err := loadArgs("IgnoreUnknown=1;K8S_POD_NAME=p;VMNIC_SANDBOX_ID=sb1;OTHER=x")
	if err != nil || a.VMNIC_SANDBOX_ID != "sb1" || a.K8S_POD_NAME != "p" {
		t.Errorf("loadArgs = %+v %v", a, err)
	}
	if _, err := loadArgs("OTHER=x"); err == nil {
		t.Error("unknown CNI_ARGS key accepted without IgnoreUnknown")
	} else if te := err.(*types.Error); te.Code != types.ErrInvalidEnvironmentVariables {
		t.Errorf("code %d", te.Code)
	}
}

// TestPickInterfaceKeepsRouteFieldsAndGateways: every CNI 1.1 route field
// and the gateway of each family reach the record.
func TestPickInterfaceKeepsRouteFieldsAndGateways(t *testing.T) {
	prev := prevFixture()
	_, dst6, _ := net.ParseCIDR("fd00:99::/48")
	table, scope := 100, 253
	prev.Routes = append(prev.Routes, &types.Route{Dst: *dst6, MTU: 1280, AdvMSS: 1220, Priority: 7, Table: &table, Scope: &scope})
	p, err := pickInterface(prev, "eth0", "/var/run/netns/x")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(p.gateways, ",") != "10.201.0.1,fd00::1" {
		t.Errorf("gateways %v", p.gateways)
	}
	r := p.routes[1]
	if r.Dst != "fd00:99::/48" || r.GW != "" || r.MTU != 1280 || r.AdvMSS != 1220 || r.Priority != 7 ||
		r.Table == nil || *r.Table != 100 || r.Scope == nil || *r.Scope != 253 {
		t.Errorf("route %+v", r)
	}
	table = 5 // the record keeps its own copy
	if *r.Table != 100 {
		t.Error("route table aliases prevResult")
	}
}

func TestCheckGuestIPs(t *testing.T) {
	p, err := pickInterface(prevFixture(), "eth0", "/var/run/netns/x")
	if err != nil {
		t.Fatal(err)
	}
	full := netsetup.NIC{IfName: "eth0", IPs: []string{"10.201.0.5/24", "fd00::5/64"}, Gateway: "10.201.0.1", Gateways: []string{"10.201.0.1", "fd00::1"}}
	if err := checkGuestIPs(&full, p); err != nil {
		t.Errorf("matching record: %v", err)
	}
	v4only := netsetup.NIC{IfName: "eth0", IPs: []string{"10.201.0.5/24"}, Gateway: "10.201.0.1", Gateways: []string{"10.201.0.1"}}
	err = checkGuestIPs(&v4only, p)
	if err == nil || !strings.Contains(err.Error(), "IPv6: prevResult gives eth0 address fd00::5/64") ||
		!strings.Contains(err.Error(), `IPv6: prevResult gateway "fd00::1"`) || strings.Contains(err.Error(), "IPv4") {
		t.Errorf("record without IPv6: %v", err)
	}
	// A record from before Gateways (one gateway kept) is not failed for
	// the other family's gateway.
	older := netsetup.NIC{IfName: "eth0", IPs: []string{"10.201.0.5/24", "fd00::5/64"}, Gateway: "10.201.0.1"}
	if err := checkGuestIPs(&older, p); err != nil {
		t.Errorf("older record: %v", err)
	}
	extra := full
	extra.IPs = []string{"10.201.0.9/24", "fd00::5/64"}
	if err := checkGuestIPs(&extra, p); err == nil || !strings.Contains(err.Error(), "IPv4: the guest's record has address 10.201.0.9/24") {
		t.Errorf("record with another IPv4: %v", err)
	}
}
