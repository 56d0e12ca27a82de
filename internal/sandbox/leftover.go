package sandbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

// This file finds and removes the leftovers of an ADD killed before its one
// record write (add.go): host objects no record lists. They are found by
// their deterministic names, which a record is not needed to compute, and
// a TAP counts only when it carries this installation's marker for the
// sandbox and ifname (hostnet.Marker):
//   - cni backend: the TAP hostnet.TapNameInNetns(ifname) in the sandbox
//     netns, and vmnic's redirect filters (hostnet.FilterPriority) on the
//     veth ifname;
//   - bridge backend: the host TAP hostnet.TapNameOnHost(sandbox, ifname)
//     and the FORWARD-rule user "<sandbox>/<ifname>" in the state dir (taken
//     before the TAP is made, so it names every host TAP a killed ADD left);
//   - the VMM device NICID(ifname), when the sandbox's record names a VMM.
// The removal is the recorded NIC's (backend cleanup, removeStray), for a
// NIC entry rebuilt from those names (unrecordedNIC).

// leftoverLockWait bounds how long GC waits for a sandbox's lock before it
// leaves the sandbox alone (a live ADD holds it).
const leftoverLockWait = time.Second

// unrecordedNIC is the entry NIC ifname of rec would have, had the ADD that
// made its host side lived to record it. Whether that ADD added the veth's
// ingress qdisc is not known: the qdisc is taken for vmnic's, and so
// removed, when it is a plain ingress qdisc without filters once vmnic's
// are off.
func unrecordedNIC(rec *netsetup.NetSetup, ifname string) netsetup.NIC {
	nic := netsetup.NIC{ID: NICID(ifname), IfName: ifname, State: netsetup.NICPending, VethQdiscOwned: true}
	if rec.ResolvedNetBackend() == netsetup.BackendBridge {
		nic.Tap = hostnet.TapNameOnHost(rec.SandboxID, ifname)
	} else {
		nic.Tap = hostnet.TapNameInNetns(ifname)
	}
	return nic
}

// delTarget is the sandbox a DEL of a NIC that rec (nil: no record) does
// not list cleans up in: rec's netns, backend and bridge, or the DEL's own
// when rec does not say (no record, or one at zero NICs).
func delTarget(rec *netsetup.NetSetup, d DelSpec) *netsetup.NetSetup {
	var t netsetup.NetSetup
	if rec != nil {
		t = *rec
	} else {
		t.SandboxID = d.SandboxID
	}
	if t.ResolvedNetnsPath() == "" {
		t.NetnsPath = d.NetnsPath
	}
	if len(t.NetworkConfigs) == 0 && d.Backend != "" {
		t.NetBackend, t.NetBridgeDev = d.Backend, ""
		if d.Backend == netsetup.BackendBridge {
			t.NetBridgeDev = d.Bridge
		}
	}
	return &t
}

// removeUnrecordedByName is the DEL of a bridge-backend NIC d.IfName when
// rec (nil: no record) does not list it: it removes what a killed ADD left
// for it that only the state dir names — its FORWARD-rule share (taken
// before the host TAP is made) and the host TAP when it carries this
// installation's marker. Nothing found is success. A cni-backend NIC has
// nothing of the kind: its marked TAP in the sandbox netns is
// removeUnrecorded's (recover.go), which DEL calls first.
func (m *Manager) removeUnrecordedByName(ctx context.Context, rec *netsetup.NetSetup, d DelSpec) error {
	t := delTarget(rec, d)
	if t.ResolvedNetBackend() != netsetup.BackendBridge {
		return nil
	}
	nic := unrecordedNIC(t, d.IfName)
	found, err := m.bridgeLeftoverFound(t, nic)
	if err != nil {
		return coded(CodeInternal, err, "look for the leftovers of NIC %s of sandbox %s", d.IfName, d.SandboxID)
	}
	if !found {
		return nil
	}
	return m.removeLeftover(ctx, t, nic)
}

// bridgeLeftoverFound reports whether anything of nic (an unrecordedNIC of
// the bridge-backend rec) is there: its FORWARD-rule user, or its marked
// host TAP.
func (m *Manager) bridgeLeftoverFound(rec *netsetup.NetSetup, nic netsetup.NIC) (bool, error) {
	if br := rec.ResolvedNetBridgeDev(); br != "" {
		users, err := m.forwardRules().Users(br)
		if err != nil {
			return false, err
		}
		if slices.Contains(users, bridgeUser(rec.SandboxID, nic.IfName)) {
			return true, nil
		}
	}
	return m.isOwnTap(nic.Tap, rec.SandboxID, nic.IfName)
}

// isOwnTap reports whether the calling thread's netns has a TAP called
// name that carries this installation's marker for NIC ifname of sandbox
// id: a TAP without it (another install's, another plugin's) is never
// taken for vmnic's.
func (m *Manager) isOwnTap(name, id, ifname string) (bool, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if hostnet.IsNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("look up %s: %w", name, err)
	}
	return hostnet.IsTap(l) && m.ownMarker(l, id, ifname), nil
}

// ownMarker reports whether link carries this installation's marker for
// NIC ifname of sandbox id.
func (m *Manager) ownMarker(l netlink.Link, id, ifname string) bool {
	mk, ok := hostnet.ParseMarker(l.Attrs().Alias)
	return ok && mk.Install == m.install() && mk.Sandbox == id && mk.IfName == ifname
}

// removeLeftover removes nic, an unrecordedNIC of rec: from the VMM when
// rec names one (the device NICID(ifname), if the VMM has it), then its
// host side.
func (m *Manager) removeLeftover(ctx context.Context, rec *netsetup.NetSetup, nic netsetup.NIC) error {
	m.log().Warn("removing what an interrupted ADD left of an unrecorded NIC (found by name)", "sandbox", rec.SandboxID, "ifname", nic.IfName, "tap", nic.Tap)
	if err := m.removeStray(ctx, rec, nic); err != nil {
		return err
	}
	if err := m.backendOf(rec).cleanup(ctx, rec, nic); err != nil {
		return coded(CodeInternal, err, "remove the leftovers of NIC %s of sandbox %s", nic.IfName, rec.SandboxID)
	}
	return nil
}

// unrecordedNICs lists the NICs of rec's sandbox that have host objects but
// no record entry (teardown removes them with the recorded ones): cni
// backend, each interface X of the netns with a TAP TapNameInNetns(X);
// bridge backend, each FORWARD-rule user "<sandbox>/X" of rec's bridge.
func (m *Manager) unrecordedNICs(rec *netsetup.NetSetup) ([]netsetup.NIC, error) {
	recorded := func(ifname string) bool { _, ok := rec.NIC(ifname); return ok }
	var ifnames []string
	if rec.ResolvedNetBackend() == netsetup.BackendBridge {
		br := rec.ResolvedNetBridgeDev()
		if br == "" {
			return nil, nil
		}
		users, err := m.forwardRules().Users(br)
		if err != nil {
			return nil, err
		}
		for _, u := range users {
			if ifname, ok := strings.CutPrefix(u, rec.SandboxID+"/"); ok && !recorded(ifname) {
				ifnames = append(ifnames, ifname)
			}
		}
	} else if path := rec.ResolvedNetnsPath(); path != "" {
		err := netns.Do(path, func() error {
			links, err := netlink.LinkList()
			if err != nil {
				return err
			}
			taps := map[string]netlink.Link{}
			for _, l := range links {
				if hostnet.IsTap(l) {
					taps[l.Attrs().Name] = l
				}
			}
			for _, l := range links {
				name := l.Attrs().Name
				tap, ok := taps[hostnet.TapNameInNetns(name)]
				if !hostnet.IsTap(l) && ok && m.ownMarker(tap, rec.SandboxID, name) && !recorded(name) {
					ifnames = append(ifnames, name)
				}
			}
			return nil
		})
		if err != nil && !netns.IsGone(err) {
			return nil, fmt.Errorf("list the links of netns %s: %w", path, err)
		}
	}
	nics := make([]netsetup.NIC, 0, len(ifnames))
	for _, ifname := range ifnames {
		nics = append(nics, unrecordedNIC(rec, ifname))
	}
	return nics, nil
}

// gcForwardLeftovers removes the bridge-backend NICs that a killed ADD left
// without a record entry and whose attachment no runtime uses: each
// FORWARD-rule user "<sandbox>/<ifname>" that is not in keep (as container
// id and ifname) and that the sandbox's record does not list, checked under
// the sandbox's lock (a sandbox whose lock is held, by a live ADD, is left
// alone). Their host TAP goes, and the user with it.
func (m *Manager) gcForwardLeftovers(ctx context.Context, keep map[Attachment]bool) error {
	bridges, err := m.Store.BridgeForwardBridges()
	if err != nil {
		return err
	}
	var errs []error
	for _, br := range bridges {
		users, err := m.forwardRules().Users(br)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, u := range users {
			id, ifname, ok := strings.Cut(u, "/")
			if !ok || keep[Attachment{id, ifname}] || netsetup.ValidateSandboxID(id) != nil {
				continue
			}
			if err := m.gcForwardLeftover(ctx, br, id, ifname); err != nil {
				errs = append(errs, fmt.Errorf("sandbox %s: %w", id, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) gcForwardLeftover(ctx context.Context, bridge, id, ifname string) error {
	lctx, cancel := context.WithTimeout(ctx, leftoverLockWait)
	tx, err := m.Store.Lock(lctx, id)
	cancel()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return nil // a live call holds the sandbox
		}
		return err
	}
	defer tx.Unlock()
	rec, err := tx.Load()
	switch {
	case errors.Is(err, netsetup.ErrNotFound):
		rec = nil
	case err != nil:
		return nil // unreadable: left for an operator
	}
	if rec != nil {
		if _, ok := rec.NIC(ifname); ok {
			return nil
		}
	}
	t := delTarget(rec, DelSpec{SandboxID: id, IfName: ifname, Backend: netsetup.BackendBridge, Bridge: bridge})
	if t.ResolvedNetBackend() != netsetup.BackendBridge || t.ResolvedNetBridgeDev() != bridge {
		return nil
	}
	m.log().Info("gc: removing a bridge NIC an interrupted ADD left unrecorded", "sandbox", id, "ifname", ifname, "bridge", bridge)
	return m.removeLeftover(ctx, t, unrecordedNIC(t, ifname))
}
