package e2e

import (
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/e2e/internal/probe"
	"github.com/vmnic/vmnic/internal/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
)

// vmnicctl runs bin/vmnicctl against the suite's state.
func (e *Env) vmnicctl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	full := append([]string{"--state-dir", e.VmnicState, "--netns-dir", e.OwnedNetnsDir(), "--vmm-socket-dirs", e.VmnicRun}, args...)
	out, err := exec.CommandContext(ctx, e.p.vmnic("vmnicctl"), full...).CombinedOutput()
	if err != nil {
		t.Fatalf("vmnicctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// hotplugNet adds (or deletes) the second network on a pod's netns through
// libcni, as Multus does for a dynamic network: CNI_CONTAINERID is the
// sandbox id, the pod's identity is in CNI_ARGS.
func (e *Env) hotplugNet(t testing.TB, p *Pod, netns, ifname string, add bool) {
	t.Helper()
	list, err := libcni.ConfListFromFile(e.Net2Conf)
	if err != nil {
		t.Fatal(err)
	}
	cninet := libcni.NewCNIConfigWithCacheDir([]string{e.CNIBin}, e.CNICache, nil)
	rt := &libcni.RuntimeConf{
		ContainerID: p.ID,
		NetNS:       netns,
		IfName:      ifname,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", podNamespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ID},
			{"K8S_POD_UID", p.UID},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if add {
		if _, err := cninet.AddNetworkList(ctx, list, rt); err != nil {
			t.Fatalf("CNI ADD %s on %s: %v", list.Name, p.Name, err)
		}
		return
	}
	if err := cninet.DelNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("CNI DEL %s on %s: %v", list.Name, p.Name, err)
	}
}

// containerNICs is the number of NICs in the NetSetup file the VMM
// container reads (VMNIC_NETSETUP); -1 when it cannot read it.
func containerNICs(t testing.TB, r probe.Report) int {
	t.Helper()
	if !r.NetSetup.Readable {
		t.Errorf("the VMM container cannot read its NetSetup file %q: %v", r.NetSetup.Path, r.Errors)
		return -1
	}
	var seen netsetup.NetSetup
	if err := json.Unmarshal(r.NetSetup.Content, &seen); err != nil {
		t.Errorf("the VMM container's NetSetup file: %v", err)
		return -1
	}
	return len(seen.NetworkConfigs)
}

// simNIC returns the simulated VMM's NIC on TAP tap.
func simNIC(ch *vmmsim.CH, tap string) (vmmsim.CHNet, bool) {
	for _, n := range ch.Net() {
		if n.Tap == tap {
			return n, true
		}
	}
	return vmmsim.CHNet{}, false
}

// Case b: a second network is hot-added to a running VM pod whose VMM is
// attached (a Cloud Hypervisor simulator serving its API socket in the
// sandbox's runtime dir, attached with `vmnicctl attach-vmm`): the NIC is
// recorded and hot-added into the VMM; deleting the network hot-removes it
// and leaves nothing of it.
func TestHotAddSecondNetwork(t *testing.T) {
	e := needVmnic(t, true, true)
	needBinary(t, e.p.vmnic("vmnicctl"))
	p := e.RunPod(t, podName("hot"), podOpts{vm: true})
	st := e.Status(t, p)
	ns := OpenNetns(t, st.NetnsPath)
	rec := e.Record(t, p.ID)
	if rec == nil || rec.RuntimeDir == "" || len(rec.NetworkConfigs) != 1 {
		t.Fatalf("record %+v: want one NIC and a runtime dir", rec)
	}
	cid := e.StartVMM(t, p)

	// The VMM: its API socket in the runtime dir the VMM container sees.
	ch, err := vmmsim.StartCH(rec.RuntimeDir+"/ch.sock", vmmsim.CHConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close() })
	if r := e.Probe(t, cid); !slices.Contains(r.RuntimeDir, "ch.sock") {
		t.Errorf("the VMM container does not see the API socket in its runtime dir: %v %v", r.RuntimeDir, r.Errors)
	}

	e.vmnicctl(t, "attach-vmm", p.ID, "--kind", "cloud-hypervisor", "--socket", ch.Socket())
	rec = e.Record(t, p.ID)
	eth0 := rec.NetworkConfigs[0]
	if rec.VMM == nil || !rec.VMM.Booted || eth0.State != netsetup.NICAttached || eth0.VMMDeviceID == "" {
		t.Fatalf("after attach-vmm: vmm %+v, eth0 %+v; want a booted VMM and eth0 attached", rec.VMM, eth0)
	}
	if _, ok := simNIC(ch, eth0.Tap); !ok {
		t.Fatalf("the VMM has no NIC on %s: %+v", eth0.Tap, ch.Net())
	}

	// Hot-add the second network, as Multus does.
	e.hotplugNet(t, p, st.NetnsPath, "net1", true)
	delDone := false
	t.Cleanup(func() {
		if !delDone {
			e.hotplugNet(t, p, st.NetnsPath, "net1", false)
		}
	})
	rec = e.Record(t, p.ID)
	net1, ok := rec.NIC("net1")
	if !ok || len(rec.NetworkConfigs) != 2 || rec.NetworkConfigs[0].IfName != "eth0" {
		t.Fatalf("record NICs %+v: want eth0 then net1", rec.NetworkConfigs)
	}
	_, subnet, _ := net.ParseCIDR(net1Subnet)
	if len(net1.IPs) == 0 || !subnet.Contains(net.ParseIP(strings.Split(net1.IPs[0], "/")[0])) || net1.Network != net1Name {
		t.Errorf("net1 record %+v: want an IP in %s on network %s", net1, net1Subnet, net1Name)
	}
	if net1.State != netsetup.NICAttached || net1.VMMDeviceID == "" {
		t.Errorf("net1 state %q device %q: want attached to the running VMM", net1.State, net1.VMMDeviceID)
	}
	if n, ok := simNIC(ch, net1.Tap); !ok {
		t.Errorf("the VMM has no NIC on %s: %+v", net1.Tap, ch.Net())
	} else if !strings.EqualFold(n.MAC, net1.MAC) {
		t.Errorf("VMM NIC MAC %s, record %s", n.MAC, net1.MAC)
	}
	links := ns.Links(t)
	if tap, ok := links[net1.Tap]; !ok || tap.Type != "tuntap" || !tap.hasTCHook() || links["net1"].Filters == 0 {
		t.Errorf("pod netns links %v: want TAP %s with tc redirect to net1", links, net1.Tap)
	}
	if ports := BridgePorts(t, net1Bridge); len(ports) != 1 {
		t.Errorf("bridge %s ports %v, want one", net1Bridge, ports)
	}
	if l := e.Leases(t, net1Name); len(l) != 1 {
		t.Errorf("leases of %s: %v, want one", net1Name, l)
	}
	// The VMM container reads its record: it must see the new NIC.
	if n := containerNICs(t, e.Probe(t, cid)); n != 2 {
		t.Errorf("the VMM container's NetSetup file shows %d NICs after the hot-add, the record on the host %d",
			n, len(rec.NetworkConfigs))
	}

	// Hot-remove: CNI DEL of the second network.
	e.hotplugNet(t, p, st.NetnsPath, "net1", false)
	delDone = true
	rec = e.Record(t, p.ID)
	if _, ok := rec.NIC("net1"); ok || len(rec.NetworkConfigs) != 1 {
		t.Errorf("record NICs after DEL: %+v, want eth0 only", rec.NetworkConfigs)
	}
	if _, ok := simNIC(ch, net1.Tap); ok {
		t.Errorf("the VMM still has the NIC on %s after DEL", net1.Tap)
	}
	if _, ok := ns.Links(t)[net1.Tap]; ok {
		t.Errorf("TAP %s left after DEL", net1.Tap)
	}
	if n := containerNICs(t, e.Probe(t, cid)); n != 1 {
		t.Errorf("the VMM container's NetSetup file shows %d NICs after the DEL, want 1", n)
	}
	if l := e.Leases(t, net1Name); len(l) != 0 {
		t.Errorf("leases of %s after DEL: %v", net1Name, l)
	}
	if v := ch.Violations(); len(v) > 0 {
		t.Errorf("requests to the VMM that violate its API spec: %v", v)
	}

	// The pod goes: the VMM container is stopped first (the VMM dies), then
	// the sandbox; nothing is left.
	ch.Close()
	e.RemovePod(t, p)
	e.AssertClean(t)
}
