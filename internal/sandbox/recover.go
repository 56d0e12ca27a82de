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

// This file is the recovery from the host: the host objects are the truth
// and the record is a journal of them. Every TAP vmnic makes carries a
// marker (internal/hostnet/marker.go) naming this installation, the sandbox
// and the ifname; from the markers, the netns vmnic owns (vmnic-<id>), the
// netns index and the netns a caller names (CNI_NETNS), a record that was
// quarantined or lost is made again (rebuild), and GC finds what no record
// names (SweepMarked).

// install is this installation's id in the markers.
func (m *Manager) install() string { return hostnet.InstallID(m.Store.Dir()) }

// marker is the marker of the TAP for ifname of sandbox id.
func (m *Manager) marker(id, ifname string, backend byte) hostnet.Marker {
	return hostnet.Marker{Install: m.install(), Backend: backend, IfName: ifname, Sandbox: id}
}

// rebuildNote is the note on every NIC a rebuild made.
const rebuildNote = "rebuilt from the host after the record was lost or quarantined: IPs, routes, DNS and the VMM device are not known"

// rebuild is the store's RebuildFunc: the record of sandbox id made from
// what the host still has of it (nil when nothing).
func (m *Manager) rebuild(ctx context.Context, id, hint string) (*netsetup.NetSetup, error) {
	return m.fromHost(ctx, id, hint)
}

// fromHost makes the record of sandbox id from the host: its netns (hint,
// the owned vmnic-<id>, or a namespace the netns index names for id), every
// TAP in it with this installation's cni marker for id, and every TAP on
// the host with its bridge marker for id. It is nil when the host has no
// NIC of the sandbox and no netns vmnic owns for it. Bridge NICs get their
// share of the bridge's FORWARD rules again (their users file may be lost
// with the state dir), so that their removal gives the rules back.
func (m *Manager) fromHost(ctx context.Context, id, hint string) (*netsetup.NetSetup, error) {
	install := m.install()
	rec := netsetup.New(id)
	path, nsid := m.findNetns(id, hint)
	vethMACs := map[string]string{}
	if path != "" {
		rec.NetnsPath, rec.NetnsID = path, &nsid
		rec.NetnsOwned = path == m.OwnedNetnsPath(id)
		err := netns.Do(path, func() error {
			taps, err := hostnet.MarkedTaps(install)
			if err != nil {
				return err
			}
			for _, t := range taps {
				if veth, err := netlink.LinkByName(t.IfName); err == nil {
					vethMACs[t.IfName] = veth.Attrs().HardwareAddr.String()
				}
				if t.Sandbox == id && t.Backend == hostnet.MarkerCNI {
					rec.PutNIC(recoveredNIC(t, vethMACs[t.IfName]))
				}
			}
			// A bridge NIC's veth stays in the netns; its MAC is the guest's.
			links, err := netlink.LinkList()
			if err != nil {
				return err
			}
			for _, l := range links {
				if _, ok := vethMACs[l.Attrs().Name]; !ok {
					vethMACs[l.Attrs().Name] = l.Attrs().HardwareAddr.String()
				}
			}
			return nil
		})
		if err != nil && !netns.IsGone(err) {
			return nil, fmt.Errorf("rebuild sandbox %s from netns %s: %w", id, path, err)
		}
	}
	if len(rec.NetworkConfigs) == 0 {
		taps, err := hostnet.MarkedTaps(install)
		if err != nil {
			return nil, fmt.Errorf("rebuild sandbox %s from the host netns: %w", id, err)
		}
		for _, t := range taps {
			if t.Sandbox != id || t.Backend != hostnet.MarkerBridge {
				continue
			}
			br := ""
			if idx := t.Link.Attrs().MasterIndex; idx > 0 {
				if l, err := netlink.LinkByIndex(idx); err == nil {
					br = l.Attrs().Name
				}
			}
			if br == "" {
				// Killed before the TAP became a port (failpoint
				// bridge-tap-created): its share of a bridge's FORWARD
				// rules, taken before the TAP was made, names the bridge.
				br = m.forwardBridgeOf(bridgeUser(id, t.IfName))
			}
			if rec.NetBridgeDev != "" && br != rec.NetBridgeDev {
				continue // one bridge per sandbox: a stray TAP is left to GC
			}
			rec.NetBackend, rec.NetBridgeDev = netsetup.BackendBridge, br
			rec.PutNIC(recoveredNIC(t, vethMACs[t.IfName]))
			if br != "" {
				if err := m.forwardRules().Acquire(ctx, br, bridgeUser(id, t.IfName)); err != nil {
					return nil, fmt.Errorf("rebuild sandbox %s: %w", id, err)
				}
			}
		}
	}
	if len(rec.NetworkConfigs) == 0 && !rec.NetnsOwned {
		return nil, nil
	}
	if !rec.NetnsOwned {
		rec.CreatedBy = netsetup.CreatedByCNI
	}
	m.log().Warn("sandbox rebuilt from its host objects", "sandbox", id, "netns", path, "nics", len(rec.NetworkConfigs), "backend", rec.ResolvedNetBackend())
	return rec, nil
}

// forwardBridgeOf is the bridge whose FORWARD-rule users in the state dir
// include user ("" when none does, or more than one).
func (m *Manager) forwardBridgeOf(user string) string {
	bridges, err := m.Store.BridgeForwardBridges()
	if err != nil {
		return ""
	}
	found := ""
	for _, br := range bridges {
		users, err := m.forwardRules().Users(br)
		if err != nil || !slices.Contains(users, user) {
			continue
		}
		if found != "" {
			return ""
		}
		found = br
	}
	return found
}

// recoveredNIC is the record entry of a marked TAP.
func recoveredNIC(t hostnet.MarkedTap, mac string) netsetup.NIC {
	a := t.Link.Attrs()
	pairs := 1
	if tt, ok := t.Link.(*netlink.Tuntap); ok && tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 && a.NumTxQueues > 1 {
		pairs = a.NumTxQueues
	}
	return netsetup.NIC{
		ID:             NICID(t.IfName),
		IfName:         t.IfName,
		Tap:            a.Name,
		MAC:            mac,
		MTU:            a.MTU,
		NumQueues:      2 * pairs,
		QueueSize:      DefaultQueueSize,
		State:          netsetup.NICPending,
		HostReady:      true,
		VethQdiscOwned: t.QdiscOwned,
		Recovered:      true,
		Note:           rebuildNote,
	}
}

// findNetns is the netns of sandbox id as the host tells it: hint (the
// caller's CNI_NETNS), the owned <NetnsDir>/vmnic-<id>, or a namespace in
// NetnsDir that the netns index names for id. ("", zero) when none is.
func (m *Manager) findNetns(id, hint string) (string, netsetup.NetnsID) {
	for _, p := range []string{hint, m.OwnedNetnsPath(id)} {
		if p == "" {
			continue
		}
		if nsid, err := netsetup.IdentifyNetns(p); err == nil {
			return p, nsid
		}
	}
	indexed := m.Store.IndexedNetns(id)
	if len(indexed) == 0 {
		return "", netsetup.NetnsID{}
	}
	// The netns dir first, then every namespace bind-mounted anywhere.
	paths, _ := netns.List(m.netnsDir(), "")
	mounted, _ := netns.Mounted()
	for _, p := range append(paths, mounted...) {
		nsid, err := netsetup.IdentifyNetns(p)
		if err != nil {
			continue
		}
		for _, want := range indexed {
			if nsid == want {
				return p, nsid
			}
		}
	}
	return "", netsetup.NetnsID{}
}

// loadOrRebuild loads sandbox id's record under tx (an unreadable one is
// quarantined and rebuilt by the store); a missing record is rebuilt from
// the host (a lost state dir) and saved when the host still has the
// sandbox. It returns nil, nil when there is nothing.
func (m *Manager) loadOrRebuild(ctx context.Context, tx *netsetup.Tx, hint string) (*netsetup.NetSetup, error) {
	tx.SetHint(hint)
	rec, err := tx.Load()
	if err == nil {
		return rec, nil
	}
	if !errors.Is(err, netsetup.ErrNotFound) {
		return nil, err
	}
	if tx.Recovery() != nil {
		return nil, nil // quarantined: the store rebuilt what there was
	}
	rec, err = m.fromHost(ctx, tx.ID(), hint)
	if err != nil || rec == nil {
		return nil, err
	}
	if err := tx.Save(rec); err != nil {
		return nil, fmt.Errorf("save the record of sandbox %s rebuilt from the host: %w", tx.ID(), err)
	}
	return rec, nil
}

// SandboxOfMarkers is the sandbox whose marked TAP for ifname is in the
// netns at path ("" when there is none): a DEL whose sandbox has no record
// (a lost state dir) finds it from the host.
func (m *Manager) SandboxOfMarkers(path, ifname string) string {
	if path == "" {
		return ""
	}
	install := m.install()
	var id string
	_ = netns.Do(path, func() error {
		taps, err := hostnet.MarkedTaps(install)
		if err != nil {
			return err
		}
		for _, t := range taps {
			if t.IfName == ifname && netsetup.ValidateSandboxID(t.Sandbox) == nil {
				id = t.Sandbox
				return nil
			}
		}
		return nil
	})
	return id
}

// Marked is a TAP of this installation that GC found with no record
// naming it.
type Marked struct {
	Sandbox, IfName, Tap string
	Netns                string // "" for the host netns
}

func (k Marked) String() string {
	where := "the host netns"
	if k.Netns != "" {
		where = "netns " + k.Netns
	}
	return fmt.Sprintf("TAP %s (sandbox %s, %s) in %s", k.Tap, k.Sandbox, k.IfName, where)
}

// SweepMarked finds the TAPs of this installation (by their marker) in the
// host netns and in every netns of NetnsDir that no record names, and,
// unless dryRun, removes them with what goes with them (vmnic's filters,
// its qdisc, the bridge's FORWARD share, an owned netns of a sandbox with
// no record). TAPs without vmnic's marker, or with another installation's,
// are never touched. Each sandbox is judged again under its lock: a live
// ADD holds it, and an unreadable record is rebuilt (kept), never removed.
func (m *Manager) SweepMarked(ctx context.Context, dryRun bool) ([]Marked, error) {
	found, err := m.markedTaps()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	var out []Marked
	for _, k := range found {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		stray, err := m.sweepOne(ctx, k, dryRun)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
		}
		if stray {
			out = append(out, k)
		}
	}
	return out, errors.Join(errs...)
}

// markedTaps lists this installation's marked TAPs in the host netns and
// in every netns of NetnsDir.
func (m *Manager) markedTaps() ([]Marked, error) {
	install := m.install()
	var out []Marked
	var errs []error
	taps, err := hostnet.MarkedTaps(install)
	if err != nil {
		errs = append(errs, err)
	}
	for _, t := range taps {
		if t.Backend == hostnet.MarkerBridge {
			out = append(out, Marked{Sandbox: t.Sandbox, IfName: t.IfName, Tap: t.Link.Attrs().Name})
		}
	}
	paths, err := netns.List(m.netnsDir(), "")
	if err != nil {
		errs = append(errs, err)
	}
	for _, p := range paths {
		if strings.HasPrefix(filepathBase(p), ".") {
			continue
		}
		err := netns.Do(p, func() error {
			taps, err := hostnet.MarkedTaps(install)
			for _, t := range taps {
				if t.Backend == hostnet.MarkerCNI {
					out = append(out, Marked{Sandbox: t.Sandbox, IfName: t.IfName, Tap: t.Link.Attrs().Name, Netns: p})
				}
			}
			return err
		})
		if err != nil && !netns.IsGone(err) {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// sweepWait bounds the wait for a sandbox's lock in SweepMarked: a lock
// held longer is a live call, and its sandbox is left alone.
const sweepWait = 2 * time.Second

// sweepOne judges one marked TAP under its sandbox's lock and removes it
// when no record names it. stray reports that no record does.
func (m *Manager) sweepOne(ctx context.Context, k Marked, dryRun bool) (stray bool, err error) {
	if netsetup.ValidateSandboxID(k.Sandbox) != nil {
		return false, nil
	}
	lctx, cancel := context.WithTimeout(ctx, sweepWait)
	defer cancel()
	tx, err := m.Store.Lock(lctx, k.Sandbox)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return false, nil // busy: a live call holds it
		}
		return false, err
	}
	defer tx.Unlock()
	tx.SetHint(k.Netns)
	rec, err := tx.Load()
	switch {
	case err == nil:
		if n, ok := rec.NIC(k.IfName); ok && n.Tap == k.Tap && m.sameNetns(rec, k) {
			return false, nil // recorded (or rebuilt from the quarantine)
		}
	case !errors.Is(err, netsetup.ErrNotFound):
		return false, err
	}
	if dryRun {
		return true, nil
	}
	if rec != nil {
		// The record does not list this TAP (an ADD killed before its
		// save): remove the TAP alone, the record stays as it is.
		return true, m.removeMarked(ctx, rec, k)
	}
	// No record: the sandbox's record is made again from the host, and
	// then torn down as a teardown would.
	rec, err = m.fromHost(ctx, k.Sandbox, k.Netns)
	if err != nil || rec == nil {
		return true, err
	}
	m.log().Warn("gc: removing a sandbox no record names, found by its marked TAPs", "sandbox", k.Sandbox, "netns", rec.NetnsPath, "nics", len(rec.NetworkConfigs))
	if err := tx.Save(rec); err != nil {
		return true, err
	}
	return true, m.teardownLocked(ctx, tx, rec, TeardownOptions{})
}

// sameNetns says whether the marked TAP k is where rec's NICs live.
func (m *Manager) sameNetns(rec *netsetup.NetSetup, k Marked) bool {
	if k.Netns == "" {
		return rec.ResolvedNetBackend() == netsetup.BackendBridge
	}
	if rec.ResolvedNetBackend() != netsetup.BackendCNI {
		return false
	}
	a, err1 := netsetup.IdentifyNetns(k.Netns)
	b, err2 := netsetup.IdentifyNetns(rec.ResolvedNetnsPath())
	return err1 == nil && err2 == nil && a == b
}

// removeMarked removes a marked TAP that rec does not list, with vmnic's
// filters on its veth (and the veth's qdisc when the marker says vmnic
// added it).
func (m *Manager) removeMarked(ctx context.Context, rec *netsetup.NetSetup, k Marked) error {
	nic := netsetup.NIC{IfName: k.IfName, Tap: k.Tap}
	if k.Netns == "" {
		r := *rec
		r.NetBackend = netsetup.BackendBridge
		return (&bridgeBackend{m: m}).cleanup(ctx, &r, nic)
	}
	_ = netns.Do(k.Netns, func() error {
		if l, err := netlink.LinkByName(k.Tap); err == nil {
			if mk, ok := hostnet.ParseMarker(l.Attrs().Alias); ok {
				nic.VethQdiscOwned = mk.QdiscOwned
			}
		}
		return nil
	})
	r := *rec
	r.NetnsPath = k.Netns
	return (&cniBackend{m: m}).cleanup(ctx, &r, nic)
}

func filepathBase(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

// removeUnrecorded removes the TAP of ifname that carries this
// installation's marker for sandbox rec.SandboxID but that rec does not
// list (an ADD killed between making the TAP and recording the NIC): in the
// sandbox netns (rec's, or the DEL's CNI_NETNS) and on the host.
func (m *Manager) removeUnrecorded(ctx context.Context, rec *netsetup.NetSetup, d DelSpec) error {
	install := m.install()
	var errs []error
	// The VMM first, as for a recorded NIC: an ADD killed after its hot-add
	// (failpoint vmm-added) left the device NICID(ifname) in the VMM, and it
	// goes before the TAP it was given (removeStray, once).
	strayChecked := false
	stray := func() error {
		if strayChecked {
			return nil
		}
		strayChecked = true
		return m.removeStray(ctx, rec, unrecordedNIC(rec, d.IfName))
	}
	for _, path := range uniq(rec.ResolvedNetnsPath(), d.NetnsPath) {
		var found []Marked
		err := netns.Do(path, func() error {
			taps, err := hostnet.MarkedTaps(install)
			for _, t := range taps {
				if t.Sandbox == rec.SandboxID && t.IfName == d.IfName && t.Backend == hostnet.MarkerCNI {
					found = append(found, Marked{Sandbox: t.Sandbox, IfName: t.IfName, Tap: t.Link.Attrs().Name, Netns: path})
				}
			}
			return err
		})
		if err != nil && !netns.IsGone(err) {
			errs = append(errs, err)
		}
		for _, k := range found {
			if err := stray(); err != nil {
				return err
			}
			m.log().Warn("removing a marked TAP the record does not list (an interrupted ADD)", "sandbox", rec.SandboxID, "ifname", d.IfName, "tap", k.Tap, "netns", path)
			errs = append(errs, m.removeMarked(ctx, rec, k))
		}
	}
	if tap := hostnet.TapNameOnHost(rec.SandboxID, d.IfName); tap != "" {
		if l, err := netlink.LinkByName(tap); err == nil && hostnet.IsTap(l) {
			if mk, ok := hostnet.ParseMarker(l.Attrs().Alias); ok && mk.Install == install && mk.Sandbox == rec.SandboxID && mk.IfName == d.IfName {
				if err := stray(); err != nil {
					return err
				}
				m.log().Warn("removing a marked host TAP the record does not list (an interrupted ADD)", "sandbox", rec.SandboxID, "ifname", d.IfName, "tap", tap)
				errs = append(errs, m.removeMarked(ctx, rec, Marked{Sandbox: mk.Sandbox, IfName: mk.IfName, Tap: tap}))
			}
		}
	}
	return errors.Join(errs...)
}

// uniq is the non-empty paths of ps, each once.
func uniq(ps ...string) []string {
	var out []string
	for _, p := range ps {
		if p != "" && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}
