package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/e2e/internal/probe"
	"github.com/vmnic/vmnic/internal/testkit/openapi"
	"github.com/vmnic/vmnic/netsetup"
)

// chVMM is `vmmprobe ch` running as a pod's VMM container: the Cloud
// Hypervisor simulator serving its API in the sandbox's runtime dir, with a
// stand-in guest on the TAP fds it is handed. The host sees its status file
// in the runtime dir.
type chVMM struct {
	cid      string
	rtDir    string
	instance string
}

// chStartTimeout bounds the wait for the simulator's socket.
const chStartTimeout = 30 * time.Second

// startCHVMM starts a VMM container running `vmmprobe ch` in pod p (whose
// record names runtime dir rtDir) and waits until it serves its API.
func (e *Env) startCHVMM(t testing.TB, p *Pod, rtDir string, o vmmOpts) *chVMM {
	t.Helper()
	old := ""
	if st, err := readCHStatus(rtDir); err == nil {
		old = st.Instance
	}
	o.ch = true
	c := &chVMM{cid: e.StartVMMWith(t, p, o), rtDir: rtDir}
	var st probe.CHStatus
	var err error
	if !waitFor(context.Background(), chStartTimeout, func() bool {
		st, err = readCHStatus(rtDir)
		return err == nil && st.Instance != old && !st.Closed && isSocket(st.Socket)
	}) {
		t.Fatalf("vmmprobe ch in container %s did not serve its API in %s within %s: status %+v (%v)", c.cid, rtDir, chStartTimeout, st, err)
	}
	c.instance = st.Instance
	if st.Socket != c.Socket() {
		t.Fatalf("vmmprobe ch serves %s, want %s", st.Socket, c.Socket())
	}
	// The image ships the Cloud Hypervisor spec: where the host has it,
	// the simulator in the container must validate every request too.
	if _, herr := openapi.SpecPath(openapi.CloudHypervisorSpec); herr == nil && !st.SpecLoaded {
		t.Errorf("the simulator in the VMM container runs without the API spec (%s); rebuild the image (make e2e-images)", st.SpecError)
	} else if !st.SpecLoaded {
		t.Logf("no Cloud Hypervisor spec: requests are not validated (%s)", st.SpecError)
	}
	return c
}

func isSocket(p string) bool {
	st, err := os.Lstat(p)
	return err == nil && st.Mode()&os.ModeSocket != 0
}

func readCHStatus(rtDir string) (probe.CHStatus, error) {
	var st probe.CHStatus
	data, err := os.ReadFile(filepath.Join(rtDir, probe.CHStatusName))
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(data, &st)
}

// Socket is the simulator's API socket (the same path on the host).
func (c *chVMM) Socket() string { return filepath.Join(c.rtDir, probe.CHSocketName) }

// Status reads the simulator's status; it fails t unless it is this
// container's.
func (c *chVMM) Status(t testing.TB) probe.CHStatus {
	t.Helper()
	st, err := readCHStatus(c.rtDir)
	if err != nil {
		t.Fatalf("status of vmmprobe ch: %v", err)
	}
	if st.Instance != c.instance {
		t.Fatalf("the status file in %s is another simulator's (%s, want %s)", c.rtDir, st.Instance, c.instance)
	}
	return st
}

// WaitGuest waits until the VMM has nic, came with TAP fds for it, and
// runs its stand-in guest on them with the NIC's recorded IP.
func (c *chVMM) WaitGuest(t testing.TB, nic *netsetup.NIC) probe.CHNet {
	t.Helper()
	var got probe.CHNet
	var st probe.CHStatus
	ok := waitFor(context.Background(), 10*time.Second, func() bool {
		st = c.Status(t)
		for _, n := range st.Nets {
			if strings.EqualFold(n.MAC, nic.MAC) {
				got = n
				return n.Guest != nil && n.Guest.Error == "" && n.Guest.IP != ""
			}
		}
		return false
	})
	if !ok {
		t.Fatalf("the VMM has no working guest on %s (MAC %s, TAP %s): nets %+v, errors %v", nic.IfName, nic.MAC, nic.Tap, st.Nets, st.Errors)
	}
	if got.Fds != nic.QueuePairs() || got.Tap != nic.Tap {
		t.Errorf("%s reached the VMM with %d fds of TAP %q (TUNGETIFF), want %d of %s", nic.IfName, got.Fds, got.Tap, nic.QueuePairs(), nic.Tap)
	}
	if len(nic.IPs) == 0 || got.Guest.IP != nic.IPs[0] {
		t.Errorf("guest on %s has IP %s, record %v", nic.IfName, got.Guest.IP, nic.IPs)
	}
	return got
}

// PingGuest pings ip from the host until it answers and checks that the
// answers came from the stand-in guest on nic's fds (its echo count grew).
func (c *chVMM) PingGuest(t testing.TB, nic *netsetup.NIC, ip string) {
	t.Helper()
	before := c.WaitGuest(t, nic).Guest.EchoAnswered
	pingEventually(t, ip)
	var g *probe.Guest
	if !waitFor(context.Background(), 5*time.Second, func() bool {
		g = c.WaitGuest(t, nic).Guest
		return g.EchoAnswered > before
	}) {
		t.Errorf("ping to %s was answered, but not by the guest on %s's fds: %+v", ip, nic.IfName, g)
	}
}

// CheckSpec fails t on requests to the simulator that violate the spec.
func (c *chVMM) CheckSpec(t testing.TB) {
	t.Helper()
	if v := c.Status(t).Violations; len(v) > 0 {
		t.Errorf("requests to the VMM that violate its API spec: %v", v)
	}
}

// Stop stops the VMM container through the CRI (SIGTERM: the simulator
// closes its socket and every fd it holds).
func (e *Env) stopContainer(t testing.TB, cid string) {
	t.Helper()
	ctx, cancel := opCtx()
	defer cancel()
	if err := e.RS.StopContainer(ctx, cid, 10); err != nil {
		t.Fatalf("StopContainer %s: %v", cid, err)
	}
}

// ping sends count echo requests to ip from the host (through the
// bridge) and reports whether any was answered.
func ping(ip string, count int) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(count+5)*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "ping", "-n", "-q", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "1", ip).Run() == nil
}

// pingEventually pings ip until it answers (the first exchange waits for
// ARP), bounded.
func pingEventually(t testing.TB, ip string) {
	t.Helper()
	if !waitFor(context.Background(), 10*time.Second, func() bool { return ping(ip, 1) }) {
		t.Fatalf("ping %s from the host: no answer within 10s", ip)
	}
}

func bareIP(cidr string) string {
	ip, _, err := net.ParseCIDR(cidr)
	if err != nil {
		return cidr
	}
	return ip.String()
}

// tcIngress is `tc filter show dev dev ingress` in the netns at path.
func tcIngress(t testing.TB, netnsPath, dev string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+netnsPath, "tc", "filter", "show", "dev", dev, "ingress").CombinedOutput()
	if err != nil {
		t.Fatalf("tc filter show dev %s ingress in %s: %v: %s", dev, netnsPath, err, out)
	}
	return string(out)
}

// tcRedirects says whether tc filter output has vmnic's veth→TAP redirect
// (the cls_bpf program vmnic-redirect, or u32 with mirred) and vmnic's
// quiesce drop (the cls_bpf program vmnic_quiesce).
func tcRedirects(out string) (redirect, drop bool) {
	return strings.Contains(out, "vmnic-redirect") || strings.Contains(out, "mirred"), strings.Contains(out, "vmnic_quiesce")
}

// TxCounts is what a link has sent (for a TAP: towards the guest) and
// dropped on the way out.
type TxCounts struct{ Packets, Dropped uint64 }

// Tx reads the tx counters of link name.
func (n *Netns) Tx(t testing.TB, name string) TxCounts {
	t.Helper()
	h, err := netlink.NewHandleAt(n.h)
	if err != nil {
		t.Fatalf("netlink in %s: %v", n.Path, err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s in %s: %v", name, n.Path, err)
	}
	s := l.Attrs().Statistics
	if s == nil {
		t.Fatalf("link %s has no statistics", name)
	}
	return TxCounts{Packets: s.TxPackets, Dropped: s.TxDropped}
}
