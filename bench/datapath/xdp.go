package datapath

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The experiments' XDP programs for the container-side veth (eth0), built
// at run time with cilium/ebpf's asm package like vmnic's tc programs
// (internal/hostnet/bpfredirect.go). What a native XDP program on a veth
// does to the path (drivers/net/veth.c, Linux 6.18):
//
//   - veth_xmit on the peer (the host-side veth) then always hands frames
//     to eth0's NAPI ring (veth_skb_is_eligible_for_gro: "rq->xdp_prog"),
//     not to the per-CPU backlog;
//   - veth_xdp_rcv_skb turns each skb into an xdp_buff
//     (veth_convert_skb_to_xdp_buff), copying it into page_pool pages when
//     the skb is shared or cloned, has frags, or has less than
//     XDP_PACKET_HEADROOM (256) bytes of headroom — which a frame from a
//     host socket has (LL_RESERVED_SPACE) and every TCP super-frame has
//     (its payload is in frags): a full copy of each 64 KiB super-frame;
//   - veth_xdp_set and veth_fix_features clear NETIF_F_GSO_SOFTWARE (TSO,
//     GSO) on the peer while any XDP program is attached, frags-aware or
//     not, so the host segments TCP before the veth (GRO on eth0 can merge
//     the segments again before the TAP);
//   - XDP_REDIRECT to a TAP ends in tun_xdp_xmit, which queues the
//     xdp_frame on the TAP's ring: the frame skips eth0's receive path and
//     the TAP's transmit path, but carries no checksum state, so only
//     frames whose checksums are complete may take it (ARP, ICMP, ICMPv6
//     from the host stack; not UDP/TCP with CHECKSUM_PARTIAL).

const (
	xdpPass          = 2 // XDP_PASS
	progNameXDPPass  = "vmnic_xdp_pass"
	progNameXDPRedir = "vmnic_xdp_redir"
)

// ne16 is the network-order 16-bit value v as a native 2-byte load reads it.
func ne16(v uint16) int32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return int32(binary.NativeEndian.Uint16(b[:]))
}

// xdpPassInsns passes every frame on to the stack (what it buys is the
// NAPI ring instead of the backlog).
func xdpPassInsns() asm.Instructions {
	return asm.Instructions{asm.Mov.Imm(asm.R0, xdpPass), asm.Return()}
}

// xdpRedirectInsns redirects ARP, ICMP and ICMPv6 frames of at most maxLen
// bytes (all buffers: bpf_xdp_get_buff_len) to ifindex with bpf_redirect
// and passes everything else (to eth0's tc hook, vmnic's redirect).
func xdpRedirectInsns(ifindex, maxLen int) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 34), // Ethernet + IPv4 header, the bytes read below
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R4, asm.R2, 12, asm.Half), // EtherType
		asm.JEq.Imm(asm.R4, ne16(unix.ETH_P_ARP), "redirect"),
		asm.JEq.Imm(asm.R4, ne16(unix.ETH_P_IP), "ipv4"),
		asm.JEq.Imm(asm.R4, ne16(unix.ETH_P_IPV6), "ipv6"),
		asm.Ja.Label("pass"),
		asm.LoadMem(asm.R4, asm.R2, 23, asm.Byte).WithSymbol("ipv4"), // protocol
		asm.JEq.Imm(asm.R4, unix.IPPROTO_ICMP, "len"),
		asm.Ja.Label("pass"),
		asm.LoadMem(asm.R4, asm.R2, 20, asm.Byte).WithSymbol("ipv6"), // next header
		asm.JNE.Imm(asm.R4, unix.IPPROTO_ICMPV6, "pass"),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("len"),
		asm.FnXdpGetBuffLen.Call(),
		asm.JGT.Imm(asm.R0, int32(maxLen), "pass"),
		asm.Mov.Imm(asm.R1, int32(ifindex)).WithSymbol("redirect"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRedirect.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	}
}

// loadXDP loads a frags-aware (BPF_F_XDP_HAS_FRAGS) XDP program: the veth
// then keeps its MTU and passes multi-buffer frames.
func loadXDP(name string, insns asm.Instructions) (*ebpf.Program, error) {
	p, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Name: name, Type: ebpf.XDP, Instructions: insns, License: "Apache-2.0",
		Flags: unix.BPF_F_XDP_HAS_FRAGS,
	}, ebpf.ProgramOptions{})
	if err != nil {
		return nil, fmt.Errorf("load XDP program %s: %w", name, err)
	}
	return p, nil
}

// attachXDP attaches the program to link in native (driver) mode; the
// link holds the program, the fd is closed.
func attachXDP(link netlink.Link, name string, insns asm.Instructions) error {
	p, err := loadXDP(name, insns)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := netlink.LinkSetXdpFdWithFlags(link, p.FD(), nl.XDP_FLAGS_DRV_MODE); err != nil {
		return fmt.Errorf("attach XDP %s to %s: %w", name, link.Attrs().Name, err)
	}
	return nil
}
