package datapath

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/internal/testkit/tapguest"
	"github.com/vmnic/vmnic/netsetup"
)

// Variant is one way of connecting a TAP to the host.
type Variant struct {
	Name     string
	Backend  netsetup.Backend
	DataPath hostnet.DataPathMode // cni backend only
	Queues   int                  // TAP queue pairs
	// Macvtap: not vmnic at all — a macvtap (bridge mode) on the veth's far
	// end, as Kata's macvtap endpoint makes, for comparison.
	Macvtap bool
	// Tweak is what an experiment changes on eth0 after vmnic's ADD (see
	// experiment.go); "" for vmnic as it is.
	Tweak Tweak
}

// The variants of a run. bridge is vmnic's bridge backend (the TAP is a
// port of the host bridge: the limit); cni-u32 and cni-bpf are the cni
// backend (bridge + veth, TAP joined to the veth) with each data path.
func defaultVariants() []Variant {
	return []Variant{
		{Name: "bridge", Backend: netsetup.BackendBridge, Queues: 1},
		{Name: "cni-u32", Backend: netsetup.BackendCNI, DataPath: hostnet.ModeU32, Queues: 1},
		{Name: "cni-bpf", Backend: netsetup.BackendCNI, DataPath: hostnet.ModeBPF, Queues: 1},
		{Name: "macvtap", Macvtap: true, Queues: 1},
	}
}

// nic is a variant set up: what the CNI bridge plugin would have made (a
// host bridge with the gateway address, a veth with the host end on it and
// eth0 with the pod's MAC and address in the pod netns), then vmnic's ADD.
type nic struct {
	v        Variant
	idx      int
	bridge   string
	hostVeth string
	nsPath   string
	tapNetns string // "" = the host (bridge backend)
	tap      string
	mac      net.HardwareAddr
	ip       netip.Prefix
	gateway  netip.Addr
	mtu      int
	dataPath string // what the record says
	sandbox  string
	macvtap  string // the macvtap's character device (macvtap variant)
}

// opener opens one queue of n's TAP (or macvtap).
func (n *nic) opener(multiQueue bool) func() (*tapguest.Tap, error) {
	if n.macvtap != "" {
		return func() (*tapguest.Tap, error) { return tapguest.OpenMacvtap(n.macvtap, n.tap) }
	}
	return func() (*tapguest.Tap, error) {
		return tapguest.OpenTap(tapguest.TapOptions{NetnsPath: n.tapNetns, Name: n.tap, MultiQueue: multiQueue})
	}
}

const mtu = 1500

// subnet of variant slot i: 10.211.<i>.0/24.
func addrs(i int) (gw netip.Addr, ip netip.Prefix) {
	gw = netip.AddrFrom4([4]byte{10, 211, byte(i), 1})
	ip = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 211, byte(i), 2}), 24)
	return
}

func disableIPv6(dev string) {
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+dev+"/disable_ipv6", []byte("1"), 0o644)
}

func setupNIC(ctx context.Context, m *sandbox.Manager, netnsDir string, v Variant, i int) (n *nic, err error) {
	if v.Macvtap {
		return setupMacvtap(netnsDir, v, i)
	}
	gw, ip := addrs(i)
	n = &nic{v: v, idx: i, bridge: fmt.Sprintf("%s%d", bridgePrefix, i), hostVeth: fmt.Sprintf("%s%dh", linkPrefix, i),
		ip: ip, gateway: gw, mtu: mtu, sandbox: fmt.Sprintf("vmnb-dp-%d-%d", os.Getpid(), i)}
	n.mac = net.HardwareAddr{0x02, 0x00, 10, 211, byte(i), 2}
	defer func() {
		if err != nil {
			n.teardown(ctx, m)
			n = nil
		}
	}()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridge, MTU: mtu}}
	if err := netlink.LinkAdd(br); err != nil {
		return n, fmt.Errorf("bridge %s: %w", n.bridge, err)
	}
	disableIPv6(n.bridge)
	brl, err := netlink.LinkByName(n.bridge)
	if err != nil {
		return n, err
	}
	if err := netlink.AddrAdd(brl, &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		return n, fmt.Errorf("address on %s: %w", n.bridge, err)
	}
	if err := netlink.LinkSetUp(brl); err != nil {
		return n, err
	}
	if n.nsPath, err = netns.Create(netnsDir, fmt.Sprintf("pod%d", i)); err != nil {
		return n, err
	}
	if err := netns.Do(n.nsPath, func() error {
		// No IPv6 in the pod netns (no DAD or router solicitations);
		// /proc/sys/net is the calling thread's netns's.
		return os.WriteFile("/proc/sys/net/ipv6/conf/all/disable_ipv6", []byte("1"), 0o644)
	}); err != nil && !errors.Is(err, os.ErrNotExist) {
		return n, err
	}
	nsh, err := vnetns.GetFromPath(n.nsPath)
	if err != nil {
		return n, err
	}
	defer nsh.Close()
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU, la.MasterIndex = n.hostVeth, mtu, brl.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: la, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(nsh)), PeerHardwareAddr: n.mac}
	if err := netlink.LinkAdd(veth); err != nil {
		return n, fmt.Errorf("veth %s: %w", n.hostVeth, err)
	}
	disableIPv6(n.hostVeth)
	hv, err := netlink.LinkByName(n.hostVeth)
	if err != nil {
		return n, err
	}
	if err := netlink.LinkSetUp(hv); err != nil {
		return n, err
	}
	if err := netns.Do(n.nsPath, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip.Addr().AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	}); err != nil {
		return n, fmt.Errorf("eth0 in %s: %w", n.nsPath, err)
	}
	spec := sandbox.NICSpec{
		SandboxID: n.sandbox, ContainerID: n.sandbox, Network: "vmnb-dp", IfName: "eth0", NetnsPath: n.nsPath,
		Backend: v.Backend, DataPath: v.DataPath, QueuePairs: v.Queues, TapOwner: -1, TapGroup: -1,
		IPs: []string{ip.String()}, Gateway: gw.String(),
	}
	if v.Backend == netsetup.BackendBridge {
		spec.Bridge = n.bridge
	}
	added, err := m.AddNIC(ctx, spec)
	if err != nil {
		return n, fmt.Errorf("vmnic ADD (%s): %w", v.Name, err)
	}
	n.tap, n.tapNetns, n.dataPath = added.NIC.Tap, added.Sandbox, added.NIC.DataPath
	if v.Backend == netsetup.BackendBridge {
		disableIPv6(n.tap)
	}
	if err := applyTweak(n); err != nil {
		return n, fmt.Errorf("tweak %s: %w", v.Tweak, err)
	}
	return n, nil
}

func (n *nic) teardown(ctx context.Context, m *sandbox.Manager) error {
	var errs []error
	if n.tap != "" && !n.v.Macvtap {
		if err := m.DelNIC(ctx, sandbox.DelSpec{SandboxID: n.sandbox, IfName: "eth0"}); err != nil {
			errs = append(errs, err)
		}
	}
	if n.nsPath != "" {
		if err := netns.Remove(n.nsPath); err != nil {
			errs = append(errs, err)
		}
	}
	if n.macvtap != "" {
		_ = os.Remove(n.macvtap)
	}
	for _, name := range []string{n.tap, n.hostVeth, n.bridge} {
		if name == "" || (name == n.tap && !n.v.Macvtap) {
			continue
		}
		if l, err := netlink.LinkByName(name); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// The benchmark's host links carry these prefixes (not the control-path
// benchmark's, whose stale-cleanup would take them away mid-run); pod
// netns are mounted in the run's private temp dir.
const (
	bridgePrefix = "vmndpbr"
	linkPrefix   = "vmndp"
)

// cleanupStale removes host links an interrupted run left (their pod netns
// went with the run's temp dir's mounts, or stay until reboot).
func cleanupStale() int {
	links, err := netlink.LinkList()
	if err != nil {
		return 0
	}
	n := 0
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, linkPrefix) {
			if netlink.LinkDel(l) == nil {
				n++
			}
		}
	}
	return n
}

// setupMacvtap makes the bridge and veth as for the cni backend, but keeps
// both veth ends on the host and puts a macvtap (bridge mode, the guest's
// MAC) on the far end: frames cross the veth and the macvlan rx handler,
// and the guest reads the macvtap's character device. (Kata makes the
// macvtap in the pod netns; the netns does not change the hops, and on the
// host the character device's number can be read from /sys.)
func setupMacvtap(dir string, v Variant, i int) (n *nic, err error) {
	gw, ip := addrs(i)
	n = &nic{v: v, idx: i, bridge: fmt.Sprintf("%s%d", bridgePrefix, i), hostVeth: fmt.Sprintf("%s%dh", linkPrefix, i),
		tap: fmt.Sprintf("%s%dm", linkPrefix, i), ip: ip, gateway: gw, mtu: mtu}
	n.mac = net.HardwareAddr{0x02, 0x00, 10, 211, byte(i), 2}
	defer func() {
		if err != nil {
			n.teardown(context.Background(), nil)
			n = nil
		}
	}()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.bridge, MTU: mtu}}
	if err := netlink.LinkAdd(br); err != nil {
		return n, fmt.Errorf("bridge %s: %w", n.bridge, err)
	}
	disableIPv6(n.bridge)
	brl, err := netlink.LinkByName(n.bridge)
	if err != nil {
		return n, err
	}
	if err := netlink.AddrAdd(brl, &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
		return n, err
	}
	if err := netlink.LinkSetUp(brl); err != nil {
		return n, err
	}
	lower := fmt.Sprintf("%s%dc", linkPrefix, i)
	la := netlink.NewLinkAttrs()
	la.Name, la.MTU, la.MasterIndex = n.hostVeth, mtu, brl.Attrs().Index
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: lower}); err != nil {
		return n, fmt.Errorf("veth %s: %w", n.hostVeth, err)
	}
	for _, name := range []string{n.hostVeth, lower} {
		disableIPv6(name)
		l, err := netlink.LinkByName(name)
		if err != nil {
			return n, err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return n, err
		}
	}
	lo, err := netlink.LinkByName(lower)
	if err != nil {
		return n, err
	}
	mla := netlink.NewLinkAttrs()
	mla.Name, mla.ParentIndex, mla.HardwareAddr, mla.MTU = n.tap, lo.Attrs().Index, n.mac, mtu
	if err := netlink.LinkAdd(&netlink.Macvtap{Macvlan: netlink.Macvlan{LinkAttrs: mla, Mode: netlink.MACVLAN_MODE_BRIDGE}}); err != nil {
		return n, fmt.Errorf("macvtap %s: %w", n.tap, err)
	}
	disableIPv6(n.tap)
	mv, err := netlink.LinkByName(n.tap)
	if err != nil {
		return n, err
	}
	if err := netlink.LinkSetUp(mv); err != nil {
		return n, err
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/class/net/%s/macvtap/tap%d/dev", n.tap, mv.Attrs().Index))
	if err != nil {
		return n, fmt.Errorf("macvtap %s character device: %w", n.tap, err)
	}
	var major, minor uint32
	if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "%d:%d", &major, &minor); err != nil {
		return n, fmt.Errorf("macvtap %s character device %q: %w", n.tap, b, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return n, err
	}
	n.macvtap = fmt.Sprintf("%s/tap%d", dir, mv.Attrs().Index)
	if err := unix.Mknod(n.macvtap, unix.S_IFCHR|0o600, int(unix.Mkdev(major, minor))); err != nil {
		return n, fmt.Errorf("mknod %s: %w", n.macvtap, err)
	}
	return n, nil
}
