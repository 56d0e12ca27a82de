package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/e2e/internal/probe"
	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
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
	e.hotplugConf(t, e.Net2Conf, p, netns, ifname, add)
}

// hotplugConf is hotplugNet with the conflist file conf.
func (e *Env) hotplugConf(t testing.TB, conf string, p *Pod, netns, ifname string, add bool) {
	t.Helper()
	list, err := libcni.ConfListFromFile(conf)
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

// hotVMM is the VMM case b attaches to the sandbox: the real QEMU guest
// where it can boot, else the Cloud Hypervisor simulator.
type hotVMM interface {
	Kind() string   // vmnicctl attach-vmm --kind
	Socket() string // its API socket, in the sandbox's runtime dir
	// HasNIC fails t unless the VMM (and its guest) has nic.
	HasNIC(t testing.TB, nic *netsetup.NIC)
	// NICGone fails t unless nic has left the VMM (and its guest).
	NICGone(t testing.TB, nic *netsetup.NIC)
	// Close stops the VMM and fails t if anything of it is left; safe twice.
	Close(t testing.TB)
}

// simVMM is the Cloud Hypervisor simulator.
type simVMM struct {
	ch     *vmmsim.CH
	closed bool
}

func startSimVMM(t testing.TB, runtimeDir string) *simVMM {
	t.Helper()
	ch, err := vmmsim.StartCH(filepath.Join(runtimeDir, "ch.sock"), vmmsim.CHConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ch.Close() })
	return &simVMM{ch: ch}
}

func (s *simVMM) Kind() string   { return "cloud-hypervisor" }
func (s *simVMM) Socket() string { return s.ch.Socket() }

func (s *simVMM) nic(tap string) (vmmsim.CHNet, bool) {
	for _, n := range s.ch.Net() {
		if n.Tap == tap {
			return n, true
		}
	}
	return vmmsim.CHNet{}, false
}

func (s *simVMM) HasNIC(t testing.TB, nic *netsetup.NIC) {
	t.Helper()
	if n, ok := s.nic(nic.Tap); !ok {
		t.Errorf("the VMM has no NIC on %s: %+v", nic.Tap, s.ch.Net())
	} else if !strings.EqualFold(n.MAC, nic.MAC) {
		t.Errorf("VMM NIC MAC %s, record %s", n.MAC, nic.MAC)
	}
}

func (s *simVMM) NICGone(t testing.TB, nic *netsetup.NIC) {
	t.Helper()
	if _, ok := s.nic(nic.Tap); ok {
		t.Errorf("the VMM still has the NIC on %s after DEL", nic.Tap)
	}
}

func (s *simVMM) Close(t testing.TB) {
	t.Helper()
	if s.closed {
		return
	}
	s.closed = true
	if v := s.ch.Violations(); len(v) > 0 {
		t.Errorf("requests to the VMM that violate its API spec: %v", v)
	}
	s.ch.Close()
}

// qemuBootTimeout bounds the guest's boot (TCG: a few seconds when warm).
const qemuBootTimeout = 2 * time.Minute

// qemuVMM is a real QEMU guest booted in the pod's netns; its public QMP
// socket is in the sandbox's runtime dir (vmnic's socket confinement), the
// harness's own QMP socket and logs in a temp dir.
type qemuVMM struct {
	g      *qemuguest.Guest
	pid    int
	guests map[string]string // MAC → guest interface name
	closed bool
}

func startQEMUVMM(t testing.TB, e *Env, netnsPath, runtimeDir string) *qemuVMM {
	t.Helper()
	cache := qemuguest.DefaultCacheDir()
	if os.Getenv("VMNIC_TOOLS") == "" {
		cache = filepath.Join(e.p.repo, ".tools", "guest")
	}
	ctx, cancel := context.WithTimeout(context.Background(), qemuBootTimeout+30*time.Second)
	defer cancel()
	g, err := qemuguest.Boot(ctx, qemuguest.Config{
		Netns:       netnsPath,
		CacheDir:    cache,
		QMPSocket:   filepath.Join(runtimeDir, "qmp.sock"),
		BootTimeout: qemuBootTimeout,
		Logf:        t.Logf,
	})
	if err != nil {
		t.Fatalf("boot QEMU in %s: %v", netnsPath, err)
	}
	q := &qemuVMM{g: g, pid: g.PID(), guests: map[string]string{}}
	t.Cleanup(func() { g.Close() })
	t.Logf("QEMU pid %d booted in %v", q.pid, g.BootTime())
	if links, err := q.links(); err != nil || strings.Join(links, " ") != "lo" {
		t.Fatalf("guest links before attach: %v %v; want only lo", links, err)
	}
	return q
}

func (q *qemuVMM) Kind() string   { return "qemu" }
func (q *qemuVMM) Socket() string { return q.g.QMPSocket() }

func (q *qemuVMM) links() ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return q.g.Links(ctx)
}

func (q *qemuVMM) HasNIC(t testing.TB, nic *netsetup.NIC) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	name, err := q.g.WaitForMAC(ctx, nic.MAC)
	if err != nil {
		t.Errorf("%s (MAC %s, device %s) never appeared in the guest: %v", nic.IfName, nic.MAC, nic.VMMDeviceID, err)
		return
	}
	q.guests[strings.ToLower(nic.MAC)] = name
	t.Logf("%s (MAC %s, device %s, TAP %s) is %s in the guest", nic.IfName, nic.MAC, nic.VMMDeviceID, nic.Tap, name)
}

func (q *qemuVMM) NICGone(t testing.TB, nic *netsetup.NIC) {
	t.Helper()
	name, ok := q.guests[strings.ToLower(nic.MAC)]
	if !ok {
		t.Errorf("%s (MAC %s) was never seen in the guest", nic.IfName, nic.MAC)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := q.g.WaitForLinkGone(ctx, name); err != nil {
		links, _ := q.links()
		t.Errorf("guest still has %s (MAC %s) after DEL: %v (links %v)", name, nic.MAC, err, links)
	}
}

func (q *qemuVMM) Close(t testing.TB) {
	t.Helper()
	if q.closed {
		return
	}
	q.closed = true
	if err := q.g.Close(); err != nil {
		t.Errorf("stop QEMU: %v", err)
	}
	if err := syscall.Kill(q.pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
		t.Errorf("QEMU pid %d still running", q.pid)
	}
	if exists(q.Socket()) {
		t.Errorf("QMP socket %s left", q.Socket())
	}
}

// Case b: a second network is hot-added to a running VM pod whose VMM is
// attached with `vmnicctl attach-vmm` (a real QEMU guest booted in the pod's
// netns where QEMU is available, else a Cloud Hypervisor simulator; either
// serves its API socket in the sandbox's runtime dir): the NIC is recorded
// and hot-added into the VMM (with QEMU: it appears in the guest with the
// recorded MAC); deleting the network hot-removes it and leaves nothing of it.
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
	var vmm hotVMM
	if err := qemuguest.Available(); err == nil {
		vmm = startQEMUVMM(t, e, st.NetnsPath, rec.RuntimeDir)
	} else {
		t.Logf("QEMU guest unavailable (%v): the VMM is the Cloud Hypervisor simulator", err)
		vmm = startSimVMM(t, rec.RuntimeDir)
	}
	t.Cleanup(func() { vmm.Close(t) })
	if r := e.Probe(t, cid); !slices.Contains(r.RuntimeDir, filepath.Base(vmm.Socket())) {
		t.Errorf("the VMM container does not see the API socket in its runtime dir: %v %v", r.RuntimeDir, r.Errors)
	}

	e.vmnicctl(t, "attach-vmm", p.ID, "--kind", vmm.Kind(), "--socket", vmm.Socket())
	rec = e.Record(t, p.ID)
	eth0 := rec.NetworkConfigs[0]
	if rec.VMM == nil || !rec.VMM.Booted || rec.VMM.Kind != vmm.Kind() || eth0.State != netsetup.NICAttached || eth0.VMMDeviceID == "" {
		t.Fatalf("after attach-vmm: vmm %+v, eth0 %+v; want a booted %s VMM and eth0 attached", rec.VMM, eth0, vmm.Kind())
	}
	vmm.HasNIC(t, &eth0)
	if t.Failed() {
		t.FailNow()
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
	vmm.HasNIC(t, net1)
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
	vmm.NICGone(t, net1)
	if _, ok := ns.Links(t)[net1.Tap]; ok {
		t.Errorf("TAP %s left after DEL", net1.Tap)
	}
	if n := containerNICs(t, e.Probe(t, cid)); n != 1 {
		t.Errorf("the VMM container's NetSetup file shows %d NICs after the DEL, want 1", n)
	}
	if l := e.Leases(t, net1Name); len(l) != 0 {
		t.Errorf("leases of %s after DEL: %v", net1Name, l)
	}

	// The pod goes: the VMM container is stopped first (the VMM dies), then
	// the sandbox; nothing is left.
	vmm.Close(t)
	e.RemovePod(t, p)
	e.AssertClean(t)
}
