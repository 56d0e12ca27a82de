package datapath

import (
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

// Tweak is an experiment on the cni backend's host → guest hop (issue 15:
// the host-side veth's veth_xmit queues each frame to eth0 through the
// per-CPU backlog, eth0 receives it again, then vmnic's tc redirect sends
// it to the TAP). Each is applied to eth0 in the pod netns after vmnic's
// ADD with the bpf data path; none is in vmnic's data path: they are
// measured here (-experiments) to decide whether one should be.
type Tweak string

const (
	// TweakNone is vmnic as it is.
	TweakNone Tweak = ""
	// TweakGRO switches on rx-gro and rx-udp-gro-forwarding on eth0.
	// veth_xmit then uses eth0's NAPI ring instead of the backlog for the
	// frames veth_skb_is_eligible_for_gro accepts: all of them when the
	// host-side veth has no TSO, else only frames of a local socket whose
	// destructor is sock_wfree (UDP, ICMP, raw: the pinger's echo
	// requests) and only when eth0 has rx-gro-list or
	// rx-udp-gro-forwarding. TCP (tcp_wfree) and forwarded frames keep the
	// backlog.
	TweakGRO Tweak = "gro"
	// TweakXDPPass attaches a pass-everything XDP program to eth0 (and
	// rx-gro, to merge what the host now segments): every frame takes
	// eth0's NAPI ring; see xdp.go for what it costs.
	TweakXDPPass Tweak = "xdp-pass"
	// TweakXDPRedirect attaches an XDP program to eth0 that XDP_REDIRECTs
	// ARP and ICMP frames to the TAP (tun_xdp_xmit) and passes the rest to
	// vmnic's tc redirect (and rx-gro, as TweakXDPPass).
	TweakXDPRedirect Tweak = "xdp-redirect"
)

// experimentVariants are the cni-bpf variant with each tweak.
func experimentVariants() []Variant {
	return []Variant{
		{Name: "cni-bpf-gro", Backend: netsetup.BackendCNI, DataPath: hostnet.ModeBPF, Queues: 1, Tweak: TweakGRO},
		{Name: "cni-bpf-xdppass", Backend: netsetup.BackendCNI, DataPath: hostnet.ModeBPF, Queues: 1, Tweak: TweakXDPPass},
		{Name: "cni-bpf-xdpredir", Backend: netsetup.BackendCNI, DataPath: hostnet.ModeBPF, Queues: 1, Tweak: TweakXDPRedirect},
	}
}

// applyTweak applies n's variant's tweak to eth0 in n's pod netns.
func applyTweak(n *nic) error {
	t := n.v.Tweak
	if t == TweakNone {
		return nil
	}
	return netns.Do(n.nsPath, func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		feat := map[string]bool{"rx-gro": true}
		if t == TweakGRO {
			feat["rx-udp-gro-forwarding"] = true
		}
		if err := setFeatures("eth0", feat); err != nil {
			return err
		}
		switch t {
		case TweakGRO:
			return nil
		case TweakXDPPass:
			return attachXDP(eth0, progNameXDPPass, xdpPassInsns())
		case TweakXDPRedirect:
			tap, err := netlink.LinkByName(n.tap)
			if err != nil {
				return err
			}
			return attachXDP(eth0, progNameXDPRedir, xdpRedirectInsns(tap.Attrs().Index, tap.Attrs().MTU+14))
		}
		return fmt.Errorf("unknown tweak %q", t)
	})
}
