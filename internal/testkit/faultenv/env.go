// Package faultenv makes isolated vmnic installations for crash, fault and
// soak runs: the failpoint builds of vmnic's programs (Build), an Env with
// its own state, netns, IPAM, CNI cache and runtime directories and host
// bridge, CNI chains (bridge/ptp + host-local + vmnic) driven through
// libcni by an exec that tells a killed plugin from a failed one, direct
// plugin runs with exactly the environment given (RunPlugin), and the
// Env's audit scope (internal/testkit/hostaudit) that proves nothing
// leaked.
//
// The soak program (soak/, a module of its own) and the reliability tests
// (test/reliability) share it. Names: netns vmnr-*, bridges vmnbrr*,
// subnets 10.207.0.0/16 (bridge chains) and 10.217.0.0/16 (ptp chains).
package faultenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/failpoint"
	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
)

// Name prefixes of everything the harness makes.
const (
	NetnsPrefix  = "vmnr-"
	BridgePrefix = "vmnbrr"
)

// Subnets of the harness: bridge chains take a /24 of the first, ptp chains
// of the second.
var (
	BridgeSubnets = netip.MustParsePrefix("10.207.0.0/16")
	PtpSubnets    = netip.MustParsePrefix("10.217.0.0/16")
)

// VMMSocketDirsEnv tells vmnicctl where VMM API sockets may live.
const VMMSocketDirsEnv = "VMNIC_VMM_SOCKET_DIRS"

// Env is one isolated vmnic installation: its own state, netns, IPAM, CNI
// cache and runtime directories, a host bridge and a /24 of each subnet.
type Env struct {
	Root       string
	StateDir   string // vmnic stateDir
	NetnsDir   string // the "runtime's" netns and vmnicctl's owned ones
	IPAMDir    string // host-local dataDir
	CacheDir   string // libcni's cache
	RuntimeDir string // per-sandbox VMM socket dirs
	FPLog      string // failpoint firings
	Bridge     string
	Slot       int // picks the /24s: 10.207.<Slot>.0/24, 10.217.<Slot>.0/24
	Bins       *Binaries
	RefCNI     string // reference plugins (bridge, ptp, host-local)

	mu       sync.Mutex
	hostTaps []string // bridge-backend TAP names of the sandboxes used
}

// Track adds the host TAP name the bridge backend would give the NIC ifname
// of sandbox id to the audit (a TAP that never joined the bridge is not a
// bridge port, so only its name finds it).
func (e *Env) Track(id, ifname string) {
	e.mu.Lock()
	e.hostTaps = append(e.hostTaps, hostnet.TapNameOnHost(id, ifname))
	e.mu.Unlock()
}

// RandHex returns n random bytes in hex.
func RandHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) //nolint:errcheck
	return hex.EncodeToString(b)
}

// NewEnv creates the directories and the bridge under root.
func NewEnv(root string, bins *Binaries, refCNI string, slot int) (*Env, error) {
	e := &Env{
		Root:       root,
		StateDir:   filepath.Join(root, "state"),
		NetnsDir:   filepath.Join(root, "netns"),
		IPAMDir:    filepath.Join(root, "ipam"),
		CacheDir:   filepath.Join(root, "cnicache"),
		RuntimeDir: filepath.Join(root, "run"),
		FPLog:      filepath.Join(root, "failpoints.log"),
		Bridge:     BridgePrefix + RandHex(3),
		Slot:       slot % 256,
		Bins:       bins,
		RefCNI:     refCNI,
	}
	for _, d := range []string{e.NetnsDir, e.IPAMDir, e.CacheDir, e.RuntimeDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(e.StateDir, 0o700); err != nil {
		return nil, err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: e.Bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("add bridge %s: %w", e.Bridge, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		e.Close()
		return nil, fmt.Errorf("bridge %s up: %w", e.Bridge, err)
	}
	return e, nil
}

// BridgeSubnet and PtpSubnet are the env's /24s.
func (e *Env) BridgeSubnet() string { return fmt.Sprintf("10.207.%d.0/24", e.Slot) }
func (e *Env) PtpSubnet() string    { return fmt.Sprintf("10.217.%d.0/24", e.Slot) }

// Close removes every namespace under NetnsDir, the bridge, vmnic's FORWARD
// rules for it and the directories. It is the safety net after a test: the
// audit, not Close, is what proves nothing leaked.
func (e *Env) Close() error {
	var errs []error
	if ents, err := os.ReadDir(e.NetnsDir); err == nil {
		for _, ent := range ents {
			if err := netns.Remove(filepath.Join(e.NetnsDir, ent.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if l, err := netlink.LinkByName(e.Bridge); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, err)
		}
	}
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			continue
		}
		spec := []string{"-i", e.Bridge, "-o", e.Bridge, "-m", "comment", "--comment", "vmnic", "-j", "ACCEPT"}
		for {
			ok, err := ipt.Exists("filter", "FORWARD", spec...)
			if err != nil || !ok {
				break
			}
			if err := ipt.Delete("filter", "FORWARD", spec...); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	if err := os.RemoveAll(e.Root); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Scope is what the env's audit covers.
func (e *Env) Scope() hostaudit.Scope {
	e.mu.Lock()
	links := append([]string{e.Bridge}, e.hostTaps...)
	e.mu.Unlock()
	sc := hostaudit.Scope{
		NetnsDirs:       []string{e.NetnsDir},
		HostLinks:       links,
		HostSubnets:     []netip.Prefix{netip.MustParsePrefix(e.PtpSubnet())},
		StateDirs:       []string{e.StateDir, e.CacheDir},
		RuntimeDirs:     []string{e.RuntimeDir},
		IPAMDirs:        []string{e.IPAMDir},
		IPTablesMarkers: []string{e.Bridge},
	}
	if e.Bins != nil {
		sc.ProcExes = []string{e.Bins.Plugin, e.Bins.Vmnicctl, e.Bins.NRI}
	}
	return sc
}

// Audit takes a snapshot of the env's scope.
func (e *Env) Audit() (hostaudit.Snapshot, error) { return hostaudit.Take(e.Scope()) }

// NewNetns creates a namespace standing in for one a runtime made.
func (e *Env) NewNetns(tag string) (string, error) {
	return netns.Create(e.NetnsDir, NetnsPrefix+tag)
}

// RemoveNetns deletes a namespace (as a runtime does when a sandbox goes).
func (e *Env) RemoveNetns(path string) error { return netns.Remove(path) }

// VmnicConf is the vmnic entry of the env's chains, plus extra keys.
func (e *Env) VmnicConf(extra map[string]any) map[string]any {
	c := map[string]any{"stateDir": e.StateDir, "vmmTimeout": "2s", "removeTimeout": "2s", "logLevel": "debug",
		"logFile": filepath.Join(e.Root, "vmnic.log"), "vmmSocketDirs": []string{e.RuntimeDir}}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

// BridgeChain is bridge + host-local + vmnic on the env's bridge.
func (e *Env) BridgeChain(name string, vmnic map[string]any) (*Chain, error) {
	return NewChain(BridgeConflist(name, e.Bridge, e.BridgeSubnet(), e.IPAMDir, e.VmnicConf(vmnic)), e.pluginPath(), e.CacheDir)
}

// PtpChain is ptp + host-local + vmnic.
func (e *Env) PtpChain(name string, vmnic map[string]any) (*Chain, error) {
	return NewChain(PtpConflist(name, e.PtpSubnet(), e.IPAMDir, e.VmnicConf(vmnic)), e.pluginPath(), e.CacheDir)
}

func (e *Env) pluginPath() []string {
	var p []string
	if e.Bins != nil {
		p = append(p, e.Bins.Dir)
	}
	return append(p, e.RefCNI)
}

// Arm returns the environment that arms one failpoint (and logs firings
// to FPLog).
func (e *Env) Arm(name string, a failpoint.Action) []string {
	return []string{failpoint.Env + "=" + failpoint.Spec(name, a), failpoint.LogEnv + "=" + e.FPLog}
}

// FiredNames lists the names of the points that fired, in order.
func (e *Env) FiredNames() []string {
	data, _ := os.ReadFile(e.FPLog)
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			out = append(out, f[0])
		}
	}
	return out
}

// ClearFired empties the failpoint log.
func (e *Env) ClearFired() { os.Remove(e.FPLog) }

// CtlResult is one vmnicctl run.
type CtlResult struct {
	Stdout, Stderr string
	Crashed        bool // killed by a signal (an injected crash)
	ExitCode       int
}

// Vmnicctl runs the failpoint build of vmnicctl on the env's directories,
// with extra environment (e.g. Arm's).
func (e *Env) Vmnicctl(ctx context.Context, env []string, args ...string) (CtlResult, error) {
	full := append([]string{"--state-dir", e.StateDir, "--netns-dir", e.NetnsDir}, args...)
	cmd := exec.CommandContext(ctx, e.Bins.Vmnicctl, full...)
	cmd.Env = append(append(os.Environ(), VMMSocketDirsEnv+"="+e.RuntimeDir), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := CtlResult{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.ExitCode = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			r.Crashed = true
			r.ExitCode = 128 + int(ws.Signal())
		}
		return r, fmt.Errorf("vmnicctl %s: exit %d: %s", strings.Join(args, " "), r.ExitCode, strings.TrimSpace(r.Stderr))
	}
	return r, err
}

// HostHasLink reports whether the host has a link called name.
func HostHasLink(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// LinkInNetns returns the link name in the netns at path (nil when absent).
func LinkInNetns(path, name string) (netlink.Link, error) {
	h, err := netnsHandle(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return nil, nil
	}
	return l, err
}

// Veth makes a veth pair: ifname (up, with mac when given) in the netns at
// path, its peer in a fresh netns of the env (like a previous CNI plugin
// would have left, without any IPAM).
func (e *Env) Veth(path, ifname, mac string) error {
	peerNS, err := e.NewNetns("peer-" + RandHex(4))
	if err != nil {
		return err
	}
	a, err := netnsFd(path)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := netnsFd(peerNS)
	if err != nil {
		return err
	}
	defer b.Close()
	la := netlink.NewLinkAttrs()
	la.Name, la.Namespace = ifname, netlink.NsFd(int(a.Fd()))
	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return err
		}
		la.HardwareAddr = hw
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: "peer0", PeerNamespace: netlink.NsFd(int(b.Fd()))}); err != nil {
		return fmt.Errorf("add veth %s: %w", ifname, err)
	}
	for _, x := range []struct{ ns, name string }{{path, ifname}, {peerNS, "peer0"}} {
		h, err := netnsHandle(x.ns)
		if err != nil {
			return err
		}
		l, err := h.LinkByName(x.name)
		if err == nil {
			err = h.LinkSetUp(l)
		}
		h.Close()
		if err != nil {
			return fmt.Errorf("veth %s up: %w", x.name, err)
		}
	}
	return nil
}

func netnsFd(path string) (*os.File, error) { return os.Open(path) }
