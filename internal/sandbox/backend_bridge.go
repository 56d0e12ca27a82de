package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

// bridgeBackend is the bridge backend: the TAP lives in the host netns as a
// port of a host bridge, whose FORWARD rules vmnic keeps while a NIC uses
// it; the guest takes the veth's MAC and IP on that bridge, so the veth is
// parked (set down) while the NIC lives.
type bridgeBackend struct {
	m    *Manager
	spec *NICSpec        // the ADD's spec; nil for a removal
	host *netlink.Handle // on the host netns, usable from inside the sandbox netns (ADD)
	br   netlink.Link    // the host bridge (ADD)
	mac  string          // the TAP's MAC once made
}

// openBridge is openBackend for the bridge backend: it names the TAP and
// checks that the bridge exists and the TAP name is free on the host.
func (m *Manager) openBridge(s *NICSpec, nic *netsetup.NIC) (backend, func(), error) {
	host, err := netlink.NewHandle()
	if err != nil {
		return nil, nil, coded(CodeInternal, err, "netlink")
	}
	nic.Tap = hostnet.TapNameOnHost(s.SandboxID, s.IfName)
	br, err := hostnet.LookupBridge(s.Bridge)
	if err != nil {
		host.Close()
		return nil, nil, coded(CodeInvalidConfig, err, "conf bridge")
	}
	if l, err := netlink.LinkByName(nic.Tap); err == nil {
		host.Close()
		return nil, nil, codedf(CodeInvalidEnv, "TAP name %s is already taken on the host by a %s device", nic.Tap, l.Type())
	}
	return &bridgeBackend{m: m, spec: s, host: host, br: br}, host.Close, nil
}

// claim has nothing to check in the sandbox netns: the TAP goes on the host
// (checked by openBridge).
func (b *bridgeBackend) claim(*netsetup.NIC) error { return nil }

// setupInNetns parks the veth, so that it and the guest never answer at
// once on the bridge.
func (b *bridgeBackend) setupInNetns(_ *hostnet.Conn, veth netlink.Link, _ *netsetup.NIC) (undo, error) {
	var u undo
	back, where, err := parkVeth(veth, b.host, b.br)
	if err != nil {
		return u, coded(CodeInternal, err, "park %s", b.spec.IfName)
	}
	if where == "host" {
		u.host = append(u.host, back)
	} else {
		u.ns = append(u.ns, back)
	}
	return u, nil
}

// setupOnHost takes a share of the bridge's FORWARD rules, then makes the
// TAP on the host, a port of the bridge. The share comes first: its user
// "<sandbox>/<ifname>" in the state dir is what GC finds the host TAP of an
// ADD killed before its record write by (leftover.go).
func (b *bridgeBackend) setupOnHost(ctx context.Context, nic *netsetup.NIC) (undo, error) {
	var u undo
	s := b.spec
	user := bridgeUser(s.SandboxID, s.IfName)
	if err := b.m.forwardRules().Acquire(ctx, s.Bridge, user); err != nil {
		return u, coded(CodeInternal, err, "bridge %s forward rules", s.Bridge)
	}
	u.host = append(u.host, b.m.forwardRules().Undo(ctx, s.Bridge, user))
	mark := b.m.marker(s.SandboxID, s.IfName, hostnet.MarkerBridge)
	tap, err := hostnet.CreateTap(hostnet.TapSpec{Name: nic.Tap, MTU: nic.MTU, QueuePairs: s.QueuePairs, Owner: s.TapOwner, Group: s.TapGroup, Marker: mark, LinkGroup: tapGroup(s.SandboxID)})
	if err != nil {
		return u, tapError(err, nic.Tap, "the host netns")
	}
	u.host = append(u.host, func() error { return hostnet.DeleteTap(nic.Tap) })
	b.mac = tap.Attrs().HardwareAddr.String()
	if err := b.m.step("bridge-tap-created"); err != nil {
		return u, err
	}
	if err := hostnet.SetMaster(tap, b.br); err != nil {
		return u, coded(CodeInternal, err, "bridge port")
	}
	return u, nil
}

func (b *bridgeBackend) tapMAC() string { return b.mac }

// cleanup deletes the TAP on the host, gives back the NIC's share of the
// bridge's FORWARD rules and brings the parked veth back.
func (b *bridgeBackend) cleanup(ctx context.Context, rec *netsetup.NetSetup, nic netsetup.NIC) error {
	var errs []error
	if nic.Tap != "" {
		if err := hostnet.DeleteTap(nic.Tap); err != nil {
			errs = append(errs, err)
		}
	}
	if br := rec.ResolvedNetBridgeDev(); br != "" {
		if err := b.m.forwardRules().Release(ctx, br, bridgeUser(rec.SandboxID, nic.IfName)); err != nil {
			errs = append(errs, err)
		}
	}
	if rec.ResolvedNetnsPath() != "" {
		if err := b.m.unpark(rec, nic.IfName, rec.ResolvedNetBridgeDev()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func bridgeUser(id, ifname string) string { return id + "/" + ifname }

func (m *Manager) forwardRules() forwardRules { return forwardRules{m.Store} }

// parkVeth takes the veth out of the bridge backend's L2: the host-side
// peer goes down when it is a port of the bridge (the container side stays
// up, so the previous plugin's CHECK still passes), else the veth itself.
// It returns the undo and where it must run ("host" or "ns").
func parkVeth(veth netlink.Link, host *netlink.Handle, br netlink.Link) (func() error, string, error) {
	if peer := hostPeer(veth, host, br); peer != nil {
		if err := host.LinkSetDown(peer); err != nil {
			return nil, "", fmt.Errorf("set %s down: %w", peer.Attrs().Name, err)
		}
		idx := peer.Attrs().Index
		return func() error {
			l, err := netlink.LinkByIndex(idx)
			if err != nil {
				return nil
			}
			return netlink.LinkSetUp(l)
		}, "host", nil
	}
	name := veth.Attrs().Name
	if err := netlink.LinkSetDown(veth); err != nil {
		return nil, "", fmt.Errorf("set %s down: %w", name, err)
	}
	return func() error { return setUpIfPresent(name) }, "ns", nil
}

// hostPeer is veth's peer when it is a veth port of the host bridge br
// (nil otherwise). Call it inside the sandbox netns with a host handle.
func hostPeer(veth netlink.Link, host *netlink.Handle, br netlink.Link) netlink.Link {
	v, ok := veth.(*netlink.Veth)
	if !ok || br == nil {
		return nil
	}
	idx, err := netlink.VethPeerIndex(v)
	if err != nil || idx <= 0 {
		return nil
	}
	peer, err := host.LinkByIndex(idx)
	if err != nil {
		return nil
	}
	if _, ok := peer.(*netlink.Veth); !ok || peer.Attrs().MasterIndex != br.Attrs().Index {
		return nil
	}
	return peer
}

// unpark brings back the veth a bridge-backend NIC parked, in the
// recorded netns of rec.
func (m *Manager) unpark(rec *netsetup.NetSetup, ifname, bridge string) error {
	host, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer host.Close()
	br, _ := host.LinkByName(bridge)
	err = m.inRecordedNetns(rec, func() error { return unparkVeth(ifname, host, br) })
	if err != nil && !netns.IsGone(err) {
		return fmt.Errorf("bring %s back: %w", ifname, err)
	}
	return nil
}

// unparkVeth undoes parkVeth at DEL (inside the sandbox netns).
func unparkVeth(ifname string, host *netlink.Handle, br netlink.Link) error {
	veth, err := netlink.LinkByName(ifname)
	if err != nil {
		if hostnet.IsNotFound(err) {
			return nil
		}
		return err
	}
	if peer := hostPeer(veth, host, br); peer != nil && peer.Attrs().Flags&net.FlagUp == 0 {
		if err := host.LinkSetUp(peer); err != nil {
			return fmt.Errorf("set %s up again: %w", peer.Attrs().Name, err)
		}
	}
	if veth.Attrs().Flags&net.FlagUp == 0 {
		return netlink.LinkSetUp(veth)
	}
	return nil
}

func setUpIfPresent(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if hostnet.IsNotFound(err) {
			return nil
		}
		return err
	}
	return netlink.LinkSetUp(l)
}
