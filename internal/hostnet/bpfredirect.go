package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The BPF data path: a cls_bpf filter in direct-action mode on each side's
// ingress hook, at vmnic's priority (FilterPriority) and handle, running a
// two-instruction program built here with cilium/ebpf's asm package (no
// compiler, no object file):
//
//	r1 = <target ifindex>; r2 = 0; call bpf_redirect | bpf_redirect_peer; exit
//
// The helper's return value (TC_ACT_REDIRECT, or TC_ACT_SHOT for bad
// flags) is the filter's verdict. The target is an immediate, so each NIC
// gets its own pair of programs; CHECK recognises them by their kernel tag.
//
// Which helper, per direction (net/core/filter.c: bpf_redirect,
// bpf_redirect_peer, skb_do_redirect; include/uapi/linux/bpf.h):
//
//   - veth ingress → TAP: bpf_redirect(tap, 0) sends the frame out of the
//     TAP (dev_queue_xmit, the TAP's queue to the VMM), as mirred egress
//     redirect does. bpf_redirect_peer cannot be used: it only targets a
//     device with a peer (veth, netkit), and a TAP has none.
//   - TAP ingress → veth: bpf_redirect_peer(veth, 0) switches the frame to
//     the ingress of the veth's *peer* (the host-side end, in another
//     netns) within the same receive call: skb_do_redirect sets skb->dev to
//     the peer and returns -EAGAIN, and __netif_receive_skb_core takes
//     another round on it. The frame never passes the veth's transmit path
//     (veth_xmit → __netif_rx), i.e. it skips the per-CPU backlog queue
//     and the softirq that drains it — the hop the u32 path pays. The
//     kernel allows it only at the tc ingress hook (the TAP's is one; the
//     TAP and the container-side veth share a netns, so the ifindex
//     resolves there), for a target whose device has ndo_get_peer_dev
//     (veth, netkit), and only when the peer is up and in a different
//     netns than the device the frame arrived on; otherwise it drops the
//     frame. When the veth's peer is in the same netns, or the device is
//     not a veth or netkit, the TAP side uses bpf_redirect(veth, 0)
//     instead (the same hop as u32 + mirred).
//
// What redirect_peer changes besides the backlog: skb_do_redirect scrubs
// the frame with skb_scrub_packet(skb, false), which sets pkt_type to
// PACKET_HOST (a veth transmit runs eth_type_trans on the peer instead)
// and drops dst and conntrack state; mark and timestamp are kept. The
// peer's rx counters are updated; the container-side veth's tx counters
// are not (the frame never left through it).

// FilterHandle is the handle of vmnic's cls_bpf filters (cls_bpf needs one;
// the u32 filters get a kernel-assigned handle).
const FilterHandle uint32 = 1

// TC_ACT_REDIRECT (include/uapi/linux/pkt_cls.h); bpf_redirect* return it.
const tcActRedirect = 7

// The tc filter names (TCA_BPF_NAME) of vmnic's programs, and their BPF
// program names (16 bytes at most).
const (
	bpfNameRedirect = "vmnic-redirect"
	bpfNamePeer     = "vmnic-redirect-peer"
	progNameRedir   = "vmnic_redirect"
	progNamePeer    = "vmnic_peer"
)

// BPFHelper is the redirect helper a cls_bpf program calls.
type BPFHelper int

const (
	// HelperRedirect is bpf_redirect(ifindex, 0): out of the target (egress).
	HelperRedirect BPFHelper = iota
	// HelperRedirectPeer is bpf_redirect_peer(ifindex, 0): into the ingress
	// of the target's peer (veth, netkit) in another netns.
	HelperRedirectPeer
)

func (h BPFHelper) String() string {
	if h == HelperRedirectPeer {
		return "bpf_redirect_peer"
	}
	return "bpf_redirect"
}

// redirectInsns is the program that redirects every frame to ifindex with
// helper h.
func redirectInsns(ifindex int, h BPFHelper) asm.Instructions {
	fn := asm.FnRedirect
	if h == HelperRedirectPeer {
		fn = asm.FnRedirectPeer
	}
	return asm.Instructions{
		asm.Mov.Imm(asm.R1, int32(ifindex)),
		asm.Mov.Imm(asm.R2, 0),
		fn.Call(),
		asm.Return(),
	}
}

func redirectSpec(ifindex int, h BPFHelper) *ebpf.ProgramSpec {
	name := progNameRedir
	if h == HelperRedirectPeer {
		name = progNamePeer
	}
	return &ebpf.ProgramSpec{
		Name:         name,
		Type:         ebpf.SchedCLS,
		Instructions: redirectInsns(ifindex, h),
		// Neither helper is GPL-only; the string is informational.
		License: "Apache-2.0",
	}
}

func loadRedirect(ifindex int, h BPFHelper) (*ebpf.Program, error) {
	if ifindex <= 0 || ifindex > 1<<31-1 {
		return nil, fmt.Errorf("load %s program: ifindex %d out of range", h, ifindex)
	}
	p, err := ebpf.NewProgramWithOptions(redirectSpec(ifindex, h), ebpf.ProgramOptions{LogDisabled: true})
	if err != nil {
		return nil, &bpfLoadError{fmt.Errorf("load %s program: %w", h, err)}
	}
	return p, nil
}

// bpfLoadError is a program the kernel would not load. The programs are
// fixed, so this is a property of the kernel (no BPF syscall, no
// privilege, no sched_cls type or helper), not of a device.
type bpfLoadError struct{ err error }

func (e *bpfLoadError) Error() string { return e.err.Error() }
func (e *bpfLoadError) Unwrap() error { return e.err }

var bpfProbe struct {
	once sync.Once
	err  error
}

// ProbeBPF reports whether this kernel loads vmnic's redirect programs (the
// BPF syscall and privilege, the sched_cls program type and the helpers):
// nil when it does. It loads the bpf_redirect_peer program, whose helper
// (Linux 5.10) is the newest either program calls (bpf_redirect is from
// 4.4); one load costs about 0.1 ms, once per process: the answer is
// cached. Whether cls_bpf can be attached is learnt by the first attach
// (AddBPFRedirect's error says so; see IsBPFUnsupported), on which Join
// in mode auto falls back too.
func ProbeBPF() error {
	bpfProbe.once.Do(func() {
		p, err := loadRedirect(1, HelperRedirectPeer)
		if err != nil {
			bpfProbe.err = err
			return
		}
		p.Close()
	})
	return bpfProbe.err
}

// PeerHelper is the helper for the TAP → link direction: bpf_redirect_peer
// when link is a veth or netkit device whose peer is in another netns (the
// kernel reports the peer's netns id then), else bpf_redirect.
func PeerHelper(link netlink.Link) BPFHelper {
	switch link.Type() {
	case "veth", "netkit":
		if link.Attrs().NetNsID >= 0 {
			return HelperRedirectPeer
		}
	}
	return HelperRedirect
}

// AddBPFRedirect adds vmnic's cls_bpf direct-action filter on from's
// ingress hook, redirecting every frame to to with helper h. The program's
// fd is closed once the filter holds it: the filter keeps the program
// loaded until it is deleted.
func AddBPFRedirect(from, to netlink.Link, h BPFHelper) error {
	return (*Conn)(nil).AddBPFRedirect(from, to, h)
}

// AddBPFRedirect is the package's AddBPFRedirect on c.
func (c *Conn) AddBPFRedirect(from, to netlink.Link, h BPFHelper) error {
	prog, err := loadRedirect(to.Attrs().Index, h)
	if err != nil {
		return fmt.Errorf("redirect %s -> %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	defer prog.Close()
	return c.attachBPFRedirect(from, to, h, prog)
}

// redirectPrograms are the two programs of a BPF join, loaded before
// anything is attached; shared is toVeth when it came from a Preload (its
// owner closes it).
type redirectPrograms struct {
	toTap, toVeth *ebpf.Program
	shared        bool
}

// loadRedirects loads the programs veth -> tap (bpf_redirect) and tap ->
// veth (helper h), the latter from pre when pre holds it for veth and h. A
// program the kernel refuses is an error IsBPFUnsupported recognises;
// nothing is left loaded then.
func loadRedirects(veth, tap netlink.Link, h BPFHelper, pre *Preload) (p redirectPrograms, err error) {
	if pre.serves(veth, h) {
		if pre.err != nil {
			return p, fmt.Errorf("redirect %s -> %s: %w", tap.Attrs().Name, veth.Attrs().Name, pre.err)
		}
		p.toVeth, p.shared = pre.prog, true
	}
	if p.toTap, err = loadRedirect(tap.Attrs().Index, HelperRedirect); err != nil {
		return redirectPrograms{}, fmt.Errorf("redirect %s -> %s: %w", veth.Attrs().Name, tap.Attrs().Name, err)
	}
	if p.toVeth == nil {
		if p.toVeth, err = loadRedirect(veth.Attrs().Index, h); err != nil {
			p.close()
			return redirectPrograms{}, fmt.Errorf("redirect %s -> %s: %w", tap.Attrs().Name, veth.Attrs().Name, err)
		}
	}
	return p, nil
}

// close closes the programs' fds (an attached filter keeps its program),
// but not a Preload's.
func (p redirectPrograms) close() {
	if p.toTap != nil {
		p.toTap.Close()
	}
	if p.toVeth != nil && !p.shared {
		p.toVeth.Close()
	}
}

// Preload is the TAP -> veth program of a BPF Join, loaded ahead of it: it
// depends only on the veth (its index and the helper PeerHelper picks), so
// it can be loaded as soon as the veth is looked up, before the TAP exists.
// The first program load of a process is also the costly one (cilium/ebpf's
// feature tests, its BPF-token lookup in /proc/self/mountinfo, cold code:
// about 0.4 ms against 0.04 ms for the next), so a CNI ADD pays it while it
// reads its files (sandbox.PrepareNetns). Join takes it through
// JoinOptions.Preload; the owner closes it after the Join.
type Preload struct {
	vethIndex int
	helper    BPFHelper
	prog      *ebpf.Program
	err       error // the load's error (Join reports it, or falls back)
}

// PreloadJoin loads the TAP -> veth program of a Join of veth in mode (""
// = $VMNIC_DATAPATH, else auto); nil when that mode does not use BPF. A
// load the kernel refuses is kept for Join to report or fall back on.
func PreloadJoin(veth netlink.Link, mode DataPathMode) *Preload {
	m, err := JoinOptions{Mode: mode}.ResolvedMode()
	if err != nil || m == ModeU32 {
		return nil
	}
	h := PeerHelper(veth)
	prog, err := loadRedirect(veth.Attrs().Index, h)
	return &Preload{vethIndex: veth.Attrs().Index, helper: h, prog: prog, err: err}
}

// serves reports whether p holds the program for veth with helper h.
func (p *Preload) serves(veth netlink.Link, h BPFHelper) bool {
	return p != nil && p.vethIndex == veth.Attrs().Index && p.helper == h
}

// Close closes the program's fd (a filter that runs it keeps it loaded).
// A nil Preload is fine.
func (p *Preload) Close() {
	if p != nil && p.prog != nil {
		p.prog.Close()
	}
}

// attachBPFRedirect adds the cls_bpf filter on from's ingress hook running
// prog, the program that redirects to to with helper h.
func (c *Conn) attachBPFRedirect(from, to netlink.Link, h BPFHelper, prog *ebpf.Program) error {
	name := bpfNameRedirect
	if h == HelperRedirectPeer {
		name = bpfNamePeer
	}
	f := &netlink.BpfFilter{
		FilterAttrs:  ingressAttrs(from, FilterPriority),
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	f.Handle = FilterHandle
	if err := c.handle().FilterAdd(f); err != nil {
		return &bpfAttachError{fmt.Errorf("add cls_bpf redirect filter %s -> %s (%s): %w", from.Attrs().Name, to.Attrs().Name, h, err)}
	}
	return nil
}

// bpfAttachError is a failed cls_bpf filter add.
type bpfAttachError struct{ err error }

func (e *bpfAttachError) Error() string { return e.err.Error() }
func (e *bpfAttachError) Unwrap() error { return e.err }

// IsBPFUnsupported reports whether err (from AddBPFRedirect or ProbeBPF)
// says this kernel cannot run the BPF data path at all — no BPF syscall or
// permission, no sched_cls programs or helper, no cls_bpf classifier — as
// opposed to a failure of this one device.
func IsBPFUnsupported(err error) bool {
	if err == nil {
		return false
	}
	var le *bpfLoadError
	if errors.Is(err, ebpf.ErrNotSupported) || errors.As(err, &le) {
		return true
	}
	var ae *bpfAttachError
	if errors.As(err, &ae) {
		// tc answers ENOENT for an unknown filter kind (no cls_bpf module:
		// tcf_proto_lookup_ops) and EOPNOTSUPP for what the classifier
		// does not offer.
		return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EOPNOTSUPP)
	}
	return false
}

// DelBPFRedirect removes vmnic's cls_bpf filter (its priority) from link's
// ingress hook. Nothing to remove is not an error.
func DelBPFRedirect(link netlink.Link) error {
	f := &netlink.BpfFilter{FilterAttrs: ingressAttrs(link, FilterPriority)}
	err := netlink.FilterDel(f)
	if err == nil || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENODEV) {
		return nil
	}
	return fmt.Errorf("remove cls_bpf redirect filter on %s: %w", link.Attrs().Name, err)
}

// HasBPFRedirect reports whether link's ingress hook has vmnic's cls_bpf
// direct-action filter running the program that redirects to toIndex with
// helper h (recognised by its kernel tag).
func HasBPFRedirect(link netlink.Link, toIndex int, h BPFHelper) (bool, error) {
	return hasFilter(link, func(f netlink.Filter) (bool, error) { return isBPFRedirect(f, toIndex, h) })
}

// isBPFRedirect: f is vmnic's cls_bpf filter redirecting to toIndex with h.
func isBPFRedirect(f netlink.Filter, toIndex int, h BPFHelper) (bool, error) {
	b, ok := f.(*netlink.BpfFilter)
	if !ok || b.Priority != FilterPriority || !b.DirectAction || b.Tag == "" || toIndex <= 0 {
		return false, nil
	}
	ok, err := redirectInsns(toIndex, h).HasTag(b.Tag, hostByteOrder())
	if err != nil {
		return false, fmt.Errorf("tag of the %s program: %w", h, err)
	}
	return ok, nil
}

// hostByteOrder is binary.LittleEndian or binary.BigEndian, whichever this
// machine is (cilium/ebpf takes only those two, not binary.NativeEndian).
func hostByteOrder() binary.ByteOrder {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], 1)
	if b[0] == 1 {
		return binary.LittleEndian
	}
	return binary.BigEndian
}

// redirectFilterKind is the kind ("u32", "bpf") of vmnic's filter on link's
// ingress hook, "" when there is none.
func redirectFilterKind(link netlink.Link) (string, error) {
	fs, err := ingressFilters(link)
	if err != nil {
		return "", err
	}
	for _, f := range fs {
		if f.Attrs().Priority == FilterPriority {
			return f.Type(), nil
		}
	}
	return "", nil
}
