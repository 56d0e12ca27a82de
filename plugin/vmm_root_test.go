package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// preparedWithCH prepares a sandbox on netns and attaches a simulated,
// running Cloud Hypervisor to it.
func preparedWithCH(t *testing.T, n *tnet, netns, id string) *vmmsim.CH {
	t.Helper()
	m := sandbox.New(sandbox.Config{Store: n.store(t), NetnsDir: t.TempDir()})
	if _, err := m.Prepare(tctx(t), id, sandbox.PrepareOptions{NetnsPath: netns}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Teardown(context.Background(), id, sandbox.TeardownOptions{}) })
	sim := vmmsim.NewCH(t, vmmsim.CHConfig{State: vmmsim.CHRunning})
	if _, err := m.AttachVMM(tctx(t), id, vmmadapter.CloudHypervisor, sim.Socket()); err != nil {
		t.Fatal(err)
	}
	return sim
}

func TestHotAddThroughPlugin(t *testing.T) {
	n := newNet(t, "1.1.0", "ptp")
	netns := netfixture.Netns(t, netfixture.Name("vmnict-v"))
	id := netfixture.Name("pod")
	sim := preparedWithCH(t, n, netns, id)
	cfg := cniConfig(t)
	rt := &libcni.RuntimeConf{ContainerID: netfixture.Name("ctr"), NetNS: netns, IfName: "eth0"}
	res, err := cfg.AddNetworkList(tctx(t), n.list, rt)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(res)
	checkAdded(t, n, raw, netns, id, "eth0")
	rec, _ := n.store(t).Get(id)
	nic, _ := rec.NIC("eth0")
	if nic.State != netsetup.NICAttached || nic.VMMDeviceID == "" || nic.BDF == "" {
		t.Errorf("NIC after a hot-add: %+v", nic)
	}
	if nets := sim.Net(); len(nets) != 1 || nets[0].Tap != "tapeth0" || nets[0].MAC != nic.MAC {
		t.Errorf("VMM nets %+v", nets)
	}
	if err := cfg.CheckNetworkList(tctx(t), n.list, rt); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := cfg.DelNetworkList(tctx(t), n.list, rt); err != nil {
		t.Fatal(err)
	}
	if nets := sim.Net(); len(nets) != 0 {
		t.Errorf("VMM still has %+v after DEL", nets)
	}
	rec, _ = n.store(t).Get(id)
	if rec == nil || rec.Phase != netsetup.PhasePrepared || len(rec.NetworkConfigs) != 0 {
		t.Errorf("record after DEL: %+v", rec)
	}
}

func TestVMMRefusalFailsADD(t *testing.T) {
	n := newNet(t, "1.0.0", "ptp")
	netns := netfixture.Netns(t, netfixture.Name("vmnict-r"))
	id := netfixture.Name("pod")
	sim := preparedWithCH(t, n, netns, id)
	sim.HoldTap("tapeth0") // a simulated holder: only a VMM opening by name sees it
	pr := prev(t, n, netns, "ctr-r", "eth0")
	before := netfixture.Take(t, n.scope(netns))
	conf := n.vmnicConf(t, pr)
	var m map[string]any
	json.Unmarshal(conf, &m)
	m["tapHandoff"] = "name"
	conf, _ = json.Marshal(m)
	out := pluginRun{command: "ADD", containerID: "ctr-r", netns: netns, ifname: "eth0", stdin: conf}.exec(t)
	if out.cniErr == nil || !strings.Contains(out.cniErr.Msg, "cloud-hypervisor") || !strings.Contains(out.cniErr.Msg, "busy") {
		t.Fatalf("ADD = %+v %s, want the VMM's reason", out.cniErr, out.stdout)
	}
	if d := before.Diff(netfixture.Take(t, n.scope(netns))); d != "" {
		t.Errorf("a VMM refusal left changes:\n%s", d)
	}
}

func TestVMMGoneDELSucceeds(t *testing.T) {
	n := newNet(t, "1.1.0", "ptp")
	netns := netfixture.Netns(t, netfixture.Name("vmnict-o"))
	id := netfixture.Name("pod")
	sim := preparedWithCH(t, n, netns, id)
	cfg := cniConfig(t)
	rt := &libcni.RuntimeConf{ContainerID: netfixture.Name("ctr"), NetNS: netns, IfName: "eth0"}
	if _, err := cfg.AddNetworkList(tctx(t), n.list, rt); err != nil {
		t.Fatal(err)
	}
	sim.Close()
	if err := cfg.CheckNetworkList(tctx(t), n.list, rt); err == nil || !strings.Contains(err.Error(), "VMM") {
		t.Errorf("CHECK with the VMM gone = %v", err)
	}
	if err := cfg.DelNetworkList(tctx(t), n.list, rt); err != nil {
		t.Fatalf("DEL with the VMM gone: %v", err)
	}
	checkGone(t, n, netns, id, "eth0")
}

// TestSandboxIDFromArgs: VMNIC_SANDBOX_ID in CNI_ARGS names the record.
func TestSandboxIDFromArgs(t *testing.T) {
	n := newNet(t, "1.0.0", "ptp")
	netns := netfixture.Netns(t, netfixture.Name("vmnict-i"))
	id := netfixture.Name("vmnict-sb")
	if _, err := cnitool(t, n, "eth0", "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default;VMNIC_SANDBOX_ID="+id, "add", n.name, netns); err != nil {
		t.Fatal(err)
	}
	rec, err := n.store(t).Get(id)
	if err != nil {
		t.Fatalf("record %s: %v", id, err)
	}
	if rec.PodName != "web" || rec.PodNamespace != "default" || rec.CreatedBy != netsetup.CreatedByCNI || rec.NetnsOwned {
		t.Errorf("record %+v", rec)
	}
	// DEL without the args finds it through the netns.
	if _, err := cnitool(t, n, "eth0", "", "del", n.name, netns); err != nil {
		t.Fatal(err)
	}
	if _, err := n.store(t).Get(id); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("record after DEL: %v", err)
	}
}
