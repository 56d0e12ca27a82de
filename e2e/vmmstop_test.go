package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/netsetup"
)

// Case h (issue 12): the VMM container of a VM pod stops and a new one
// starts (CRI cannot restart a container: a kubelet creates a new one with
// the next attempt number). vmnic-nri's StopContainer quiesces the pod's
// NICs: the record says quiesced, the veth's redirect into the TAP is
// replaced by vmnic's drop, and the host's pings to the pod IP are dropped
// at the veth (the TAP sends nothing, not even to drop it: no mirred into a
// TAP nobody reads). PostStartContainer of the new VMM container resumes
// them: the redirect is back, and the NIC waits (pending) for the new VMM,
// which attach-vmm hands it to; the guest answers again.
func TestVMMContainerStopStart(t *testing.T) {
	e := needVmnic(t, true, true)
	needBinary(t, e.p.vmnic("vmnicctl"))
	p := e.RunPod(t, podName("vmmstop"), podOpts{vm: true, vmm: "cloud-hypervisor"})
	st := e.Status(t, p)
	ns := OpenNetns(t, st.NetnsPath)
	rec := e.Record(t, p.ID)
	if rec == nil || rec.RuntimeDir == "" || len(rec.NetworkConfigs) != 1 {
		t.Fatalf("record %+v: want one NIC and a runtime dir", rec)
	}
	tap := rec.NetworkConfigs[0].Tap

	// Running: the VMM has eth0 (fds) and its guest answers the pod IP.
	vmm := e.startCHVMM(t, p, rec.RuntimeDir, vmmOpts{dropAll: true})
	e.vmnicctl(t, "attach-vmm", p.ID, "--kind", "cloud-hypervisor", "--socket", vmm.Socket())
	rec = e.Record(t, p.ID)
	eth0 := rec.NetworkConfigs[0]
	if eth0.State != netsetup.NICAttached {
		t.Fatalf("eth0 %q after attach-vmm, want attached", eth0.State)
	}
	if redirect, drop := tcRedirects(tcIngress(t, st.NetnsPath, "eth0")); !redirect || drop {
		t.Fatalf("eth0 ingress before the stop: redirect %v, drop %v; want the redirect only", redirect, drop)
	}
	vmm.PingGuest(t, &eth0, st.IP)
	if ns.Tx(t, tap).Packets == 0 {
		t.Errorf("TAP %s sent nothing to the guest although it answered", tap)
	}

	vmm.CheckSpec(t)

	// The VMM container stops: its NICs are quiesced.
	e.stopContainer(t, vmm.cid)
	var nic netsetup.NIC
	if !waitFor(context.Background(), 10*time.Second, func() bool {
		nic = e.Record(t, p.ID).NetworkConfigs[0]
		return nic.State == netsetup.NICQuiesced
	}) {
		t.Fatalf("eth0 %q after the VMM container stopped, want quiesced", nic.State)
	}
	if !strings.Contains(nic.QuiesceReason, "VMM container vmm stopped") || nic.ResumeState != netsetup.NICPending || nic.VMMDeviceID != "" {
		t.Errorf("quiesced eth0: reason %q, resume state %q, device %q; want the NRI reason, pending (the VMM is gone), no device",
			nic.QuiesceReason, nic.ResumeState, nic.VMMDeviceID)
	}
	if out := e.vmnicctl(t, "show", p.ID); !strings.Contains(out, "quiesced") {
		t.Errorf("vmnicctl show does not say quiesced:\n%s", out)
	}
	out := tcIngress(t, st.NetnsPath, "eth0")
	if redirect, drop := tcRedirects(out); redirect || !drop {
		t.Errorf("eth0 ingress while quiesced: redirect %v, drop %v; want vmnic's drop only:\n%s", redirect, drop, out)
	}
	if _, ok := ns.Links(t)[tap]; !ok {
		t.Errorf("TAP %s gone while quiesced: it must stay for the next VMM", tap)
	}
	before := ns.Tx(t, tap)
	if ping(st.IP, 5) {
		t.Errorf("the pod IP %s answers while its VMM is stopped (the sandbox netns' own stack must not answer for the guest)", st.IP)
	}
	if after := ns.Tx(t, tap); after != before {
		t.Errorf("TAP %s tx counters went from %+v to %+v while quiesced: traffic still reaches the TAP", tap, before, after)
	}

	// A new VMM container (what a kubelet does): the NICs are resumed and
	// wait for the new VMM.
	vmm2 := e.startCHVMM(t, p, rec.RuntimeDir, vmmOpts{dropAll: true, attempt: 1})
	if !waitFor(context.Background(), 10*time.Second, func() bool {
		nic = e.Record(t, p.ID).NetworkConfigs[0]
		return nic.State != netsetup.NICQuiesced
	}) || nic.State != netsetup.NICPending || nic.QuiesceReason != "" {
		t.Fatalf("eth0 state %q reason %q after the new VMM container started, want pending (resumed, no VMM attached yet)", nic.State, nic.QuiesceReason)
	}
	out = tcIngress(t, st.NetnsPath, "eth0")
	if redirect, drop := tcRedirects(out); !redirect || drop {
		t.Errorf("eth0 ingress after the resume: redirect %v, drop %v; want the redirect only:\n%s", redirect, drop, out)
	}
	e.vmnicctl(t, "attach-vmm", p.ID, "--kind", "cloud-hypervisor", "--socket", vmm2.Socket())
	rec = e.Record(t, p.ID)
	eth0 = rec.NetworkConfigs[0]
	if eth0.State != netsetup.NICAttached || eth0.VMMDeviceID == "" || eth0.Handoff != netsetup.HandoffFd {
		t.Fatalf("eth0 after attaching the new VMM: state %q device %q handoff %q; want attached by fd", eth0.State, eth0.VMMDeviceID, eth0.Handoff)
	}
	vmm2.PingGuest(t, &eth0, st.IP)
	vmm2.CheckSpec(t)

	e.RemovePod(t, p)
	e.AssertClean(t)
}
