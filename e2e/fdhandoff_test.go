package e2e

import (
	"net"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/netsetup"
)

// capNetAdmin is CAP_NET_ADMIN's bit in a capability set.
const capNetAdmin = 12

// Case i (issue 13): a VM pod whose VMM container has no /dev/net/tun and
// no capability at all gets its NICs through fd handoff. The pod runs with
// the fd handler (vmnic's tapHandoff "fd") and says its VMM is Cloud
// Hypervisor (vmnic.io/vmm), so vmnic-nri (tapHandoff "auto") injects no
// TUN device. The VMM container runs `vmmprobe ch`: the Cloud Hypervisor
// simulator on a socket in its runtime dir, which checks every fd it
// receives with TUNGETIFF, and a stand-in guest on those fds answering ARP
// and ping with the NIC's recorded MAC and IP. The host pings the pod IP
// through the bridge: an answer proves the fds work (the container could
// not have opened the TAP itself). A second network hot-added with libcni
// reaches the running VMM with fds too and answers; its DEL and the pod's
// removal leave the host clean.
func TestFdHandoffUnprivilegedVMM(t *testing.T) {
	e := needVmnic(t, true, true)
	needBinary(t, e.p.vmnic("vmnicctl"))
	p := e.RunPod(t, podName("fdvm"), podOpts{vm: true, handler: fdHandler, vmm: "cloud-hypervisor"})
	st := e.Status(t, p)
	rec := e.Record(t, p.ID)
	if rec == nil || rec.RuntimeDir == "" || len(rec.NetworkConfigs) != 1 {
		t.Fatalf("record %+v: want one NIC and a runtime dir", rec)
	}
	if eth0 := rec.NetworkConfigs[0]; eth0.TapHandoff != netsetup.HandoffFd {
		t.Errorf("eth0 tap_handoff %q, want %q (the fd handler's conf)", eth0.TapHandoff, netsetup.HandoffFd)
	}

	vmm := e.startCHVMM(t, p, rec.RuntimeDir, vmmOpts{dropAll: true})
	r := e.Probe(t, vmm.cid)
	if r.Tun.Exists || r.Tun.Opened {
		t.Errorf("the VMM container has /dev/net/tun (%+v): vmnic-nri injected it for a Cloud Hypervisor pod under tapHandoff auto", r.Tun)
	}
	if r.CapEff&(1<<capNetAdmin) != 0 || r.CapEff != 0 {
		t.Errorf("the VMM container's effective capabilities are %#x, want none (no CAP_NET_ADMIN)", r.CapEff)
	}
	if r.Env["VMNIC_RUNTIME_DIR"] != rec.RuntimeDir {
		t.Errorf("VMNIC_RUNTIME_DIR %q, record %s", r.Env["VMNIC_RUNTIME_DIR"], rec.RuntimeDir)
	}

	// The VMM is attached: eth0 goes to it as fds.
	e.vmnicctl(t, "attach-vmm", p.ID, "--kind", "cloud-hypervisor", "--socket", vmm.Socket())
	rec = e.Record(t, p.ID)
	eth0 := rec.NetworkConfigs[0]
	if rec.VMM == nil || rec.VMM.Kind != "cloud-hypervisor" || eth0.State != netsetup.NICAttached || eth0.Handoff != netsetup.HandoffFd {
		t.Fatalf("after attach-vmm: vmm %+v, eth0 state %q handoff %q; want eth0 attached by fd", rec.VMM, eth0.State, eth0.Handoff)
	}
	if ip := bareIP(eth0.IPs[0]); ip != st.IP {
		t.Errorf("eth0 IP %s, pod IP %s", ip, st.IP)
	}
	vmm.PingGuest(t, &eth0, st.IP)

	// Hot-add a second network (fd handoff) to the running VMM.
	e.hotplugConf(t, e.Net2FdConf, p, st.NetnsPath, "net1", true)
	delDone := false
	t.Cleanup(func() {
		if !delDone {
			e.hotplugConf(t, e.Net2FdConf, p, st.NetnsPath, "net1", false)
		}
	})
	rec = e.Record(t, p.ID)
	net1, ok := rec.NIC("net1")
	if !ok || net1.State != netsetup.NICAttached || net1.Handoff != netsetup.HandoffFd || len(net1.IPs) == 0 {
		t.Fatalf("net1 after the hot-add: %+v (ok %v); want attached by fd with an IP", net1, ok)
	}
	_, subnet, _ := net.ParseCIDR(net1Subnet)
	net1IP := bareIP(net1.IPs[0])
	if !subnet.Contains(net.ParseIP(net1IP)) {
		t.Errorf("net1 IP %s not in %s", net1IP, net1Subnet)
	}
	vmm.PingGuest(t, net1, net1IP)
	// The pod IP still answers from eth0's guest.
	vmm.PingGuest(t, &eth0, st.IP)

	// Hot-remove: the NIC leaves the VMM (its fds closed), TAP and lease go.
	e.hotplugConf(t, e.Net2FdConf, p, st.NetnsPath, "net1", false)
	delDone = true
	for _, n := range vmm.Status(t).Nets {
		if strings.EqualFold(n.MAC, net1.MAC) {
			t.Errorf("the VMM still has net1 after its DEL: %+v", n)
		}
	}
	if _, ok := OpenNetns(t, st.NetnsPath).Links(t)[net1.Tap]; ok {
		t.Errorf("TAP %s left after DEL", net1.Tap)
	}
	if l := e.Leases(t, net1Name); len(l) != 0 {
		t.Errorf("leases of %s after DEL: %v", net1Name, l)
	}
	if ping(net1IP, 2) {
		t.Errorf("%s still answers after net1's DEL", net1IP)
	}
	vmm.CheckSpec(t)

	e.RemovePod(t, p)
	e.AssertClean(t)
}
