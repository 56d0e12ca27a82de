package e2e

import (
	"encoding/json"
	"net"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/e2e/internal/probe"
	"github.com/vmnic/vmnic/netsetup"
)

// checkVMMContainer checks what the VMM container of a VM pod was given by
// the NRI plugin: /dev/net/tun, the runtime dir with the live copy of the
// NetSetup record in it, the VMNIC_* environment; and that it runs in netns
// (dev, ino).
func checkVMMContainer(t *testing.T, r probe.Report, p *Pod, rec *netsetup.NetSetup, dev, ino uint64) {
	t.Helper()
	if !r.Tun.Exists || !r.Tun.Char || r.Tun.Major != 10 || r.Tun.Minor != 200 {
		t.Errorf("VMM container /dev/net/tun: %+v, want char device 10:200", r.Tun)
	}
	if !r.Tun.Opened {
		t.Errorf("VMM container cannot open /dev/net/tun (device cgroup?): %v", r.Errors)
	}
	if got := r.Env["VMNIC_SANDBOX_ID"]; got != p.ID {
		t.Errorf("VMNIC_SANDBOX_ID = %q, want the sandbox id %s", got, p.ID)
	}
	if want := rec.MirrorPath(); r.Env["VMNIC_NETSETUP"] != want {
		t.Errorf("VMNIC_NETSETUP = %q, want %s (the record's copy in the runtime dir); env %v", r.Env["VMNIC_NETSETUP"], want, r.Env)
	}
	if r.NetSetup.Writable {
		t.Errorf("VMM container can open its NetSetup file %q for writing: it must be mounted read-only", r.NetSetup.Path)
	}
	if !r.NetSetup.Readable {
		t.Errorf("VMM container cannot read its NetSetup file %q: %v", r.NetSetup.Path, r.Errors)
	} else {
		var seen netsetup.NetSetup
		if err := json.Unmarshal(r.NetSetup.Content, &seen); err != nil {
			t.Errorf("NetSetup file seen in the container: %v", err)
		} else if seen.SandboxID != p.ID || len(seen.NetworkConfigs) != len(rec.NetworkConfigs) {
			t.Errorf("NetSetup file seen in the container: sandbox %q with %d NICs, want %s with %d",
				seen.SandboxID, len(seen.NetworkConfigs), p.ID, len(rec.NetworkConfigs))
		}
	}
	if rd := r.Env["VMNIC_RUNTIME_DIR"]; rd != "" {
		if !slices.Contains(r.Mounts, rd) {
			t.Errorf("runtime dir %s (VMNIC_RUNTIME_DIR) is not mounted in the VMM container; mounts %v", rd, r.Mounts)
		}
		if rec.RuntimeDir != "" && rd != rec.RuntimeDir {
			t.Errorf("VMNIC_RUNTIME_DIR %s, record says %s", rd, rec.RuntimeDir)
		}
		// On the host it is a tmpfs of its own, of the configured size,
		// so the VMM container cannot fill the host's /run.
		var st unix.Statfs_t
		if err := unix.Statfs(rd, &st); err != nil {
			t.Errorf("runtime dir %s on the host: %v", rd, err)
		} else if size := st.Blocks * uint64(st.Bsize); st.Type != unix.TMPFS_MAGIC || size != 512<<10 {
			t.Errorf("runtime dir %s on the host: fs type %#x, %d bytes; want a tmpfs of %s", rd, st.Type, size, runtimeDirSize)
		}
	}
	if r.NetnsDev != dev || r.NetnsIno != ino {
		t.Errorf("VMM container netns %d:%d, want the sandbox netns %d:%d", r.NetnsDev, r.NetnsIno, dev, ino)
	}
}

// Case a: a VM pod gets a TAP in its netns joined to the veth by tc
// redirect, a NetSetup record at phase configured with the pod's IP and the
// NRI plugin's pod data, and its VMM container gets the tun device, the
// record, the runtime dir and the environment.
func TestVMPod(t *testing.T) {
	e := needVmnic(t, true, true)
	p := e.RunPod(t, podName("vm"), podOpts{vm: true})
	st := e.Status(t, p)
	_, subnet, _ := net.ParseCIDR(net0Subnet)
	if ip := net.ParseIP(st.IP); ip == nil || !subnet.Contains(ip) {
		t.Fatalf("VM pod IP %q, want one in %s", st.IP, net0Subnet)
	}
	ns := OpenNetns(t, st.NetnsPath)
	dev, ino := ns.ID(t)
	links := ns.Links(t)
	eth0, ok := links["eth0"]
	if !ok || eth0.Type != "veth" {
		t.Fatalf("VM pod netns links %v: want veth eth0", links)
	}
	taps := Taps(links)
	if len(taps) != 1 {
		t.Fatalf("VM pod netns has TAPs %v, want exactly one", taps)
	}
	tap := taps[0]
	if tap.MTU != eth0.MTU {
		t.Errorf("TAP %s MTU %d, veth MTU %d", tap.Name, tap.MTU, eth0.MTU)
	}
	for _, l := range []Link{eth0, tap} {
		if !l.hasTCHook() || l.Filters == 0 {
			t.Errorf("%s: qdiscs %v, %d ingress filters; want an ingress/clsact qdisc with a redirect filter", l.Name, l.Qdiscs, l.Filters)
		}
	}

	rec := e.Record(t, p.ID)
	if rec == nil {
		t.Fatalf("no NetSetup record for VM pod %s", p.ID)
	}
	if rec.Phase != netsetup.PhaseConfigured {
		t.Errorf("record phase %q, want %q", rec.Phase, netsetup.PhaseConfigured)
	}
	if rec.PodName != p.Name || rec.PodNamespace != podNamespace || rec.PodUID != p.UID {
		t.Errorf("record pod %s/%s uid %s, want %s/%s uid %s (from the NRI plugin)",
			rec.PodNamespace, rec.PodName, rec.PodUID, podNamespace, p.Name, p.UID)
	}
	if rec.NetnsOwned {
		t.Errorf("record says vmnic owns the runtime's netns %s", rec.NetnsPath)
	}
	if id, err := netsetup.IdentifyNetns(rec.ResolvedNetnsPath()); err != nil || id.Dev != dev || id.Ino != ino {
		t.Errorf("record netns %s (%v, %v), want the pod netns %d:%d", rec.ResolvedNetnsPath(), id, err, dev, ino)
	}
	if len(rec.NetworkConfigs) != 1 {
		t.Fatalf("record NICs %+v, want one", rec.NetworkConfigs)
	}
	nic := rec.NetworkConfigs[0]
	if nic.IfName != "eth0" || nic.Tap != tap.Name || nic.Network != net0Name {
		t.Errorf("record NIC ifname %q tap %q network %q, want eth0 %s %s", nic.IfName, nic.Tap, nic.Network, tap.Name, net0Name)
	}
	if !slices.ContainsFunc(nic.IPs, func(s string) bool { return strings.HasPrefix(s, st.IP+"/") }) {
		t.Errorf("record NIC IPs %v, want the pod IP %s", nic.IPs, st.IP)
	}
	if !strings.EqualFold(nic.MAC, eth0.MAC) {
		t.Errorf("record NIC MAC %s, want the veth's %s (the guest uses it)", nic.MAC, eth0.MAC)
	}

	cid := e.StartVMM(t, p)
	r := e.Probe(t, cid)
	checkVMMContainer(t, r, p, rec, dev, ino)
}

// Case c: a host-network VM pod gets a netns vmnic creates and owns, at zero
// NICs, and its VMM container runs inside that netns.
func TestHostNetworkVMPod(t *testing.T) {
	e := needVmnic(t, false, true)
	p := e.RunPod(t, podName("hostvm"), podOpts{vm: true, hostNetwork: true})
	st := e.Status(t, p)
	if st.NetnsPath != "" {
		t.Fatalf("host-network pod has a runtime netns %q", st.NetnsPath)
	}
	rec := e.Record(t, p.ID)
	if rec == nil {
		t.Fatalf("no NetSetup record for host-network VM pod %s", p.ID)
	}
	if !rec.NetnsOwned || rec.Phase != netsetup.PhasePrepared || len(rec.NetworkConfigs) != 0 {
		t.Errorf("record owned=%v phase=%q NICs=%d, want an owned netns at phase prepared with 0 NICs",
			rec.NetnsOwned, rec.Phase, len(rec.NetworkConfigs))
	}
	if rec.PodName != p.Name || rec.PodUID != p.UID {
		t.Errorf("record pod %s uid %s, want %s uid %s", rec.PodName, rec.PodUID, p.Name, p.UID)
	}
	if !isNetnsMount(rec.NetnsPath) {
		t.Fatalf("owned netns %q is not a mounted netns", rec.NetnsPath)
	}
	ns := OpenNetns(t, rec.NetnsPath)
	dev, ino := ns.ID(t)
	if hd, hi := OpenNetns(t, "/proc/self/ns/net").ID(t); hd == dev && hi == ino {
		t.Fatalf("the owned netns is the host's")
	}
	if links := ns.Links(t); len(links) != 1 || links["lo"].Name != "lo" {
		t.Errorf("owned netns links %v, want only lo (zero NICs)", links)
	}

	cid := e.StartVMM(t, p)
	r := e.Probe(t, cid)
	checkVMMContainer(t, r, p, rec, dev, ino)

	e.RemovePod(t, p)
	if exists(rec.NetnsPath) {
		t.Errorf("owned netns %s left after RemovePodSandbox", rec.NetnsPath)
	}
	if e.Record(t, p.ID) != nil {
		t.Errorf("record of %s left after RemovePodSandbox", p.ID)
	}
}

// Case d: a pod that is not a VM pod is left alone: no record, no TAP, and
// its containers get nothing from vmnic.
func TestNonVMPodUntouched(t *testing.T) {
	e := needVmnic(t, false, true)
	p := e.RunPod(t, podName("novm"), podOpts{})
	st := e.Status(t, p)
	ns := OpenNetns(t, st.NetnsPath)
	dev, ino := ns.ID(t)
	if taps := Taps(ns.Links(t)); len(taps) != 0 {
		t.Errorf("non-VM pod has TAPs %v", taps)
	}
	if e.Record(t, p.ID) != nil {
		t.Errorf("non-VM pod %s has a NetSetup record", p.ID)
	}
	cid := e.StartVMM(t, p)
	r := e.Probe(t, cid)
	if r.Tun.Exists || len(r.Env) != 0 || r.NetSetup.Path != "" {
		t.Errorf("non-VM pod's container was wired: tun %+v env %v", r.Tun, r.Env)
	}
	if r.NetnsDev != dev || r.NetnsIno != ino {
		t.Errorf("container netns %d:%d, want the pod's %d:%d", r.NetnsDev, r.NetnsIno, dev, ino)
	}
	if e.Record(t, p.ID) != nil {
		t.Errorf("non-VM pod %s has a NetSetup record after CreateContainer", p.ID)
	}
}

// Case e: StopPodSandbox + RemovePodSandbox of a VM pod (with its VMM
// container) leave nothing: no TAP, qdisc or filter (checked inside the
// netns, held open so that its removal does not hide what the plugins left),
// no netns, no record, no lease, no runtime dir.
func TestVMPodTeardown(t *testing.T) {
	e := needVmnic(t, true, true)
	p := e.RunPod(t, podName("vmdel"), podOpts{vm: true})
	st := e.Status(t, p)
	ns := OpenNetns(t, st.NetnsPath)
	if taps := Taps(ns.Links(t)); len(taps) != 1 {
		t.Fatalf("VM pod TAPs %v, want one", taps)
	}
	rec := e.Record(t, p.ID)
	if rec == nil {
		t.Fatal("no record")
	}
	e.StartVMM(t, p)

	ctx, cancel := opCtx()
	defer cancel()
	if err := e.RS.StopPodSandbox(ctx, p.ID); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if taps := Taps(ns.Links(t)); len(taps) != 0 {
		t.Errorf("TAPs left after StopPodSandbox: %v", taps)
	}
	if err := e.RS.RemovePodSandbox(ctx, p.ID); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	links := ns.Links(t)
	for name, l := range links {
		if name != "lo" {
			t.Errorf("link left in the pod netns: %+v", l)
		}
		if l.hasTCHook() || l.Filters > 0 {
			t.Errorf("tc left on %s: qdiscs %v, %d filters", name, l.Qdiscs, l.Filters)
		}
	}
	if exists(st.NetnsPath) {
		t.Errorf("pod netns %s left", st.NetnsPath)
	}
	if e.Record(t, p.ID) != nil {
		t.Errorf("record of %s left", p.ID)
	}
	if slices.Contains(e.Leases(t, net0Name), st.IP) {
		t.Errorf("lease %s left", st.IP)
	}
	if rec.RuntimeDir != "" && exists(rec.RuntimeDir) {
		t.Errorf("runtime dir %s left", rec.RuntimeDir)
	}
	e.AssertClean(t)
}
