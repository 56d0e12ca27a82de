package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
)

// FuzzConf feeds vmnic's network config parsing what a runtime could pass
// on stdin: the conf (parseConf), its prevResult (parsePrevResult, the
// conversion to the current result) and the pick of CNI_IFNAME's interface
// and IPs (pickInterface), then the result vmnic would print. Seeds: the
// prevResult fixtures in testdata/conf, the shipped conflists' vmnic
// entries and testdata/fuzz/FuzzConf. Invariants: nothing panics; every
// refusal is a CNI error with a decoding (6) or config (7) code; an
// accepted conf is one the engine accepts (backend, queues, queue size,
// bridge name); the result keeps prevResult's interfaces and adds the TAP.
func FuzzConf(f *testing.F) {
	for _, glob := range []string{"../testdata/conf/*.json"} {
		files, _ := filepath.Glob(glob)
		for _, p := range files {
			if data, err := os.ReadFile(p); err == nil {
				f.Add(data, "eth0")
			}
		}
	}
	lists, _ := filepath.Glob("../conflists/*.conflist")
	for _, p := range lists {
		var list struct {
			CNIVersion string            `json:"cniVersion"`
			Name       string            `json:"name"`
			Plugins    []json.RawMessage `json:"plugins"`
		}
		data, _ := os.ReadFile(p)
		if json.Unmarshal(data, &list) != nil {
			continue
		}
		for _, raw := range list.Plugins {
			var m map[string]any
			if json.Unmarshal(raw, &m) == nil && m["type"] == "vmnic" {
				m["cniVersion"], m["name"] = list.CNIVersion, list.Name
				b, _ := json.Marshal(m)
				f.Add(b, "net1")
			}
		}
	}
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"vmnic","backend":"bridge","bridge":"br0","queues":4,"queueSize":1024,"tapOwner":"107","tapGroup":0,"vmmTimeout":2.5,"removeTimeout":"1m"}`), "eth0")
	f.Add([]byte(`{"cniVersion":"0.4.0","name":"n","type":"vmnic","prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"version":"4","address":"10.1.0.2/24","interface":0}]}}`), "eth0")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"vmnic","prevResult":{"interfaces":[null,{"name":"eth0","sandbox":"/x"}],"ips":[null,{"address":"10.1.0.2/24","interface":7}],"routes":[null,{"dst":"0.0.0.0/0"}]}}`), "eth0")
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"vmnic","queues":-1,"queueSize":3,"logLevel":"loud","tapOwner":-5,"vmmSocketDirs":["rel"]}`), "eth0")
	f.Add([]byte(`{"cniVersion":"9.9.9","name":"n","prevResult":"x"}`), "../x")

	f.Fuzz(func(t *testing.T, stdin []byte, ifname string) {
		r, err := parseConf(stdin)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || (te.Code != types.ErrDecodingFailure && te.Code != types.ErrInvalidNetworkConfig) {
				t.Fatalf("parseConf refused with %#v, want a CNI error 6 or 7", err)
			}
			return
		}
		switch {
		case r.Backend != netsetup.BackendCNI && r.Backend != netsetup.BackendBridge:
			t.Fatalf("accepted backend %q", r.Backend)
		case r.Queues < 1 || r.Queues > hostnet.MaxQueuePairs:
			t.Fatalf("accepted queues %d", r.Queues)
		case sandbox.ValidateQueueSize(r.QueueSize) != nil:
			t.Fatalf("accepted queueSize %d", r.QueueSize)
		case r.Backend == netsetup.BackendBridge && (r.Bridge == "" || len(r.Bridge) > hostnet.MaxIfNameLen || strings.ContainsAny(r.Bridge, "/: \t")):
			t.Fatalf("accepted bridge %q", r.Bridge)
		case r.StateDir == "":
			t.Fatal("no stateDir after defaults")
		case r.VMMTimeout.Duration < 0 || r.RemoveTimeout.Duration < 0:
			t.Fatalf("negative timeouts %v %v", r.VMMTimeout, r.RemoveTimeout)
		}
		if err := parsePrevResult(r.NetConf); err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrDecodingFailure {
				t.Fatalf("parsePrevResult refused with %#v, want a CNI error 6", err)
			}
			return
		}
		if r.PrevResult == nil {
			return
		}
		prev, err := current.NewResultFromResult(r.PrevResult)
		if err != nil {
			return
		}
		pick, err := pickInterface(prev, ifname, "/var/run/netns/fuzz")
		if err != nil {
			return
		}
		if pick.index < 0 || pick.index >= len(prev.Interfaces) || prev.Interfaces[pick.index] == nil || prev.Interfaces[pick.index].Name != ifname {
			t.Fatalf("pickInterface chose %d for %q", pick.index, ifname)
		}
		_ = pick.dns(r.DNS)
		added := &sandbox.AddedNIC{NIC: netsetup.NIC{Tap: "tap0", MTU: 1500}, TapMAC: "02:00:00:00:00:01", Sandbox: "/var/run/netns/fuzz"}
		res := buildResult(prev, added, r.CNIVersion)
		if len(res.Interfaces) != len(prev.Interfaces)+1 || res.Interfaces[len(res.Interfaces)-1].Name != "tap0" {
			t.Fatalf("result interfaces %v from prevResult %v", res.Interfaces, prev.Interfaces)
		}
		if _, err := json.Marshal(res); err != nil {
			t.Fatalf("result does not marshal: %v", err)
		}
	})
}
