package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

// cniBackend is the cni backend: the TAP lives in the sandbox netns next to
// the veth, and a tc redirect each way joins the two. The veth's ingress
// qdisc is vmnic's (and removed with the NIC) only when vmnic added it.
type cniBackend struct {
	m    *Manager
	spec *NICSpec // the ADD's spec; nil for a removal
	mac  string   // the TAP's MAC once made
}

// claim has nothing to look up: CreateTap (IFF_TUN_EXCL) refuses a name any
// device has, changing nothing, and setupInNetns reports it (tapError).
func (b *cniBackend) claim(*netsetup.NIC) error { return nil }

// setupInNetns makes the TAP and the redirects veth -> TAP and TAP -> veth,
// every request on c: a qdisc dump of the veth, the TAP (one ioctl
// sequence and one RTM_NEWLINK), then Join's qdiscs and filters.
func (b *cniBackend) setupInNetns(c *hostnet.Conn, veth netlink.Link, nic *netsetup.NIC) (undo, error) {
	var u undo
	s := b.spec
	// The marker says up front whether vmnic will own the veth's ingress
	// qdisc (there is none yet), so a crash at any later step leaves a TAP
	// that tells DEL and GC what to remove.
	kind, err := c.IngressKind(veth)
	if err != nil {
		return u, coded(CodeInternal, err, "tc on %s", s.IfName)
	}
	mark := b.m.marker(s.SandboxID, s.IfName, hostnet.MarkerCNI)
	mark.QdiscOwned = kind == ""
	// The TAP joins its sandbox's link group (tapgroup.go) in the request
	// that brings it up.
	tap, err := hostnet.CreateTap(hostnet.TapSpec{Name: nic.Tap, MTU: nic.MTU, QueuePairs: s.QueuePairs, Owner: s.TapOwner, Group: s.TapGroup, Marker: mark, LinkGroup: tapGroup(s.SandboxID)})
	if err != nil {
		return u, tapError(err, nic.Tap, s.NetnsPath)
	}
	u.ns = append(u.ns, func() error { return hostnet.DeleteTap(nic.Tap) })
	b.mac = tap.Attrs().HardwareAddr.String()
	if err := b.m.step("tap-created"); err != nil {
		return u, err
	}
	// The ingress qdiscs (where there are none) and the redirects both
	// ways, by the data path the conf and the kernel allow (cls_bpf direct
	// action where it loads, else u32 + mirred): Join removes what it
	// added when it fails.
	j, err := hostnet.Join(veth, tap, hostnet.JoinOptions{Mode: s.DataPath, Log: b.m.log(), Step: b.m.step, Conn: c, Preload: s.preload})
	if err != nil {
		if errors.Is(err, hostnet.ErrBPFUnavailable) {
			return u, coded(CodeNotAvailable, err, "join %s and %s", s.IfName, nic.Tap)
		}
		return u, asCoded(err, "join %s and %s", s.IfName, nic.Tap)
	}
	if j.VethQdiscOwned {
		u.ns = append(u.ns, func() error { return hostnet.RemoveIngressIfEmpty(veth) })
	}
	u.ns = append(u.ns, func() error { return hostnet.DelRedirect(veth) })
	nic.VethQdiscOwned = j.VethQdiscOwned
	nic.DataPath = string(j.DataPath)
	if j.VethQdiscOwned != mark.QdiscOwned {
		// Another process changed the veth's qdisc since the dump.
		mark.QdiscOwned = j.VethQdiscOwned
		if err := hostnet.SetMarker(tap, mark); err != nil {
			return u, coded(CodeInternal, err, "TAP %s", nic.Tap)
		}
	}
	return u, nil
}

// setupOnHost has nothing to do: the cni backend changes only the sandbox
// netns.
func (b *cniBackend) setupOnHost(context.Context, *netsetup.NIC) (undo, error) { return undo{}, nil }

func (b *cniBackend) tapMAC() string { return b.mac }

// cleanup removes vmnic's filter (and its own ingress qdisc) from the veth
// and the TAP. A netns that is gone took everything in it along.
func (b *cniBackend) cleanup(_ context.Context, rec *netsetup.NetSetup, nic netsetup.NIC) error {
	path := rec.ResolvedNetnsPath()
	if path == "" {
		return nil
	}
	err := b.m.inRecordedNetns(rec, func() error {
		var errs []error
		veth, err := netlink.LinkByName(nic.IfName)
		switch {
		case err == nil:
			if err := hostnet.DelRedirect(veth); err != nil {
				errs = append(errs, err)
			} else if nic.VethQdiscOwned {
				if err := hostnet.RemoveIngressIfEmpty(veth); err != nil {
					errs = append(errs, err)
				}
			}
		case !hostnet.IsNotFound(err):
			errs = append(errs, fmt.Errorf("look up %s: %w", nic.IfName, err))
		}
		if nic.Tap != "" {
			if err := hostnet.DeleteTap(nic.Tap); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	if err != nil && !netns.IsGone(err) {
		return err
	}
	return nil
}
