package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

// RestoreOptions say how a sandbox is prepared for a restored VM.
type RestoreOptions struct {
	Prepare PrepareOptions
	// KeepIPs: every ADD must bring the snapshot's IPs (the restored guest
	// keeps its network configuration). Without it only the MAC must
	// match: a clone whose guest is told its new addresses.
	KeepIPs bool
}

// PrepareRestore prepares sandbox id for a VM restored from the snapshot
// of man: a sandbox at zero NICs (Prepare) whose record expects man's
// NICs. The NICs are then added by ordinary CNI ADDs; each is matched to
// an expected NIC by ifname (and network), and its MAC (and IPs, with
// KeepIPs) must be the snapshot's. Several sandboxes may be prepared from
// one manifest (clones). Idempotent for the same manifest; a sandbox that
// has NICs or expects another snapshot is refused.
func (m *Manager) PrepareRestore(ctx context.Context, id string, man *netsetup.Manifest, o RestoreOptions) (*netsetup.NetSetup, error) {
	if err := man.Validate(); err != nil {
		return nil, coded(CodeInvalidConfig, err, "restore sandbox %s", id)
	}
	if man.NetBackend != "" && man.NetBackend != netsetup.BackendCNI {
		return nil, codedf(CodeInvalidConfig, "restore sandbox %s: the snapshot's NICs use the %s backend; only the cni backend can be restored", id, man.NetBackend)
	}
	want := &netsetup.Restore{From: man.SandboxID, KeepIPs: o.KeepIPs, Expected: man.NICs}
	if man.VMM != nil {
		want.VMMKind = man.VMM.Kind
	}
	if rec, err := m.Store.Get(id); err == nil {
		if len(rec.NetworkConfigs) > 0 && rec.Restore == nil {
			return nil, codedf(CodeInvalidConfig, "restore sandbox %s: it has NICs already; restore into a new sandbox", id)
		}
		if rec.Restore != nil && !sameRestore(rec.Restore, want) {
			return nil, codedf(CodeInvalidConfig, "restore sandbox %s: it was prepared for another snapshot (of %s)", id, rec.Restore.From)
		}
	}
	if _, err := m.Prepare(ctx, id, o.Prepare); err != nil {
		return nil, err
	}
	rec, err := m.Store.Update(ctx, id, func(r *netsetup.NetSetup) error {
		r.Restore = want
		return nil
	})
	if err != nil {
		return nil, coded(CodeIOFailure, err, "record the NICs sandbox %s expects", id)
	}
	m.log().Info("sandbox prepared for a restore", "sandbox", id, "from", man.SandboxID, "nics", len(man.NICs))
	return rec, nil
}

func sameRestore(a, b *netsetup.Restore) bool {
	if a.From != b.From || a.KeepIPs != b.KeepIPs || len(a.Expected) != len(b.Expected) {
		return false
	}
	for i := range a.Expected {
		x, y := a.Expected[i], b.Expected[i]
		if x.IfName != y.IfName || !strings.EqualFold(x.MAC, y.MAC) || x.Tap != y.Tap || x.VMMDeviceID != y.VMMDeviceID {
			return false
		}
	}
	return true
}

// matchRestore runs in the sandbox netns once the veth is read (MAC and
// MTU taken), before the TAP is claimed: when the sandbox expects a NIC at
// this ifname, the ADD must be for the same network and bring the
// snapshot's MAC (and IPs, when the restore keeps them), and the TAP gets
// the snapshot's name when that name is free in the netns, else another
// (recorded as SnapshotTap, the override the VMM's restore is given).
func (a *adding) matchRestore(veth netlink.Link) error {
	exp, ok := a.rec.ExpectedNIC(a.s.IfName)
	if !ok {
		return nil
	}
	s, from := a.s, a.rec.Restore.From
	if exp.Network != "" && s.Network != "" && exp.Network != s.Network {
		return codedf(CodeInvalidConfig, "CNI network %q: sandbox %s expects NIC %s of network %q (restored from the snapshot of %s)", s.Network, s.SandboxID, s.IfName, exp.Network, from)
	}
	if !strings.EqualFold(a.nic.MAC, exp.MAC) {
		return codedf(CodeInvalidConfig, "MAC mismatch for the restored NIC %s of sandbox %s: the main plugin gave %s the MAC %s, but the guest in the snapshot of %s has %s baked in; "+
			"ask the main plugin for it with the CNI \"mac\" capability (runtimeConfig {\"mac\": %q}) or CNI_ARGS MAC=%s",
			s.IfName, s.SandboxID, s.IfName, a.nic.MAC, from, exp.MAC, exp.MAC, exp.MAC)
	}
	if a.rec.Restore.KeepIPs && len(exp.IPs) > 0 && !sameAddrs(s.IPs, exp.IPs) {
		return codedf(CodeInvalidConfig, "IP mismatch for the restored NIC %s of sandbox %s: the main plugin gave %v, but the guest in the snapshot of %s keeps %v; "+
			"ask for them with the CNI \"ips\" capability (runtimeConfig {\"ips\": %s}) or, for a single address, CNI_ARGS IP=%s; or restore without keeping the IPs (vmnicctl restore --new-ips) and tell the guest its new addresses",
			s.IfName, s.SandboxID, s.IPs, from, exp.IPs, jsonList(exp.IPs), addrOnly(exp.IPs[:1]))
	}
	if exp.NumQueues > 0 && a.nic.NumQueues != exp.NumQueues {
		return codedf(CodeInvalidConfig, "queues: the restored NIC %s has %d queue pairs in the snapshot of %s, this ADD asks for %d; configure queues %d",
			s.IfName, exp.NumQueues/2, from, a.nic.QueuePairs(), exp.NumQueues/2)
	}
	if exp.MTU != 0 && a.nic.MTU != exp.MTU {
		a.m.log().Warn("the restored NIC's MTU differs from the snapshot's: the guest keeps its own", "sandbox", s.SandboxID, "ifname", s.IfName, "mtu", a.nic.MTU, "snapshot", exp.MTU)
	}
	if s.Backend != netsetup.BackendCNI {
		return codedf(CodeInvalidConfig, "backend %s: a restored NIC must use the cni backend (the snapshot's)", s.Backend)
	}
	a.nic.SnapshotTap = ""
	switch {
	case linkFree(exp.Tap):
		a.nic.Tap = exp.Tap
	default:
		tap, err := freeTapName(s.IfName)
		if err != nil {
			return err
		}
		a.nic.Tap, a.nic.SnapshotTap = tap, exp.Tap
		a.m.log().Info("the snapshot's TAP name is taken in the netns: another is used, and recorded as the override", "sandbox", s.SandboxID, "ifname", s.IfName, "snapshot", exp.Tap, "tap", tap)
	}
	a.restored = true
	a.vethPeer = veth.Attrs().ParentIndex
	return nil
}

func linkFree(name string) bool {
	_, err := netlink.LinkByName(name)
	return err != nil && hostnet.IsNotFound(err)
}

// freeTapName is a TAP name for ifname that is free in the calling thread's
// netns and is not the deterministic one (taken: that is why it is asked).
func freeTapName(ifname string) (string, error) {
	for i := 0; i < 16; i++ {
		sum := sha256.Sum256(fmt.Appendf(nil, "%s/restore/%d", ifname, i))
		name := "tapr" + hex.EncodeToString(sum[:5])
		if linkFree(name) {
			return name, nil
		}
	}
	return "", codedf(CodeInvalidEnv, "no free TAP name for the restored NIC %s", ifname)
}

func sameAddrs(got, want []string) bool {
	norm := func(l []string) []string {
		out := addrs(l)
		slices.Sort(out)
		return out
	}
	return slices.Equal(norm(got), norm(want))
}

func addrOnly(l []string) string { return strings.Join(addrs(l), ",") }

// addrs is l with each CIDR prefix cut to its address (others as they are).
func addrs(l []string) []string {
	var out []string
	for _, s := range l {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Addr().String())
		} else {
			out = append(out, s)
		}
	}
	return out
}

// checkClones runs in the host netns for a restored NIC: when the veth's
// peer is a port of a host bridge, no other sandbox may have a NIC with
// the same MAC on that bridge (clones of one snapshot share the guest's
// MAC, and one L2 segment cannot carry two). On point-to-point CNIs (ptp,
// routed) each veth is its own link and clones are fine.
//
// The check and the record of this NIC (with its L2Bridge) are one step
// for racing clone ADDs: the bridge's clone MAC lock (netsetup) is taken
// here and held until the ADD ends (releaseClones, deferred by AddNIC),
// after its one record write or its rollback.
func (a *adding) checkClones(ctx context.Context) error {
	if !a.restored || a.vethPeer == 0 {
		return nil
	}
	br := hostBridgeOfPeer(a.vethPeer)
	a.nic.L2Bridge = br
	if br == "" {
		return nil
	}
	l, err := a.m.Store.LockCloneMACs(ctx, br)
	if err != nil {
		return coded(CodeTryAgain, err, "check MAC %s of the restored NIC %s on bridge %s", a.nic.MAC, a.s.IfName, br)
	}
	a.cloneLock = l
	recs, err := a.m.Store.List()
	if err != nil {
		return coded(CodeIOFailure, err, "list the sandboxes to check MAC %s on bridge %s", a.nic.MAC, br)
	}
	for _, r := range recs {
		if r.SandboxID == a.s.SandboxID {
			continue
		}
		for _, n := range r.NetworkConfigs {
			if n.L2Bridge == br && strings.EqualFold(n.MAC, a.nic.MAC) {
				return codedf(CodeInvalidConfig, "MAC %s of the restored NIC %s is already on bridge %s (NIC %s of sandbox %s): two clones of one snapshot on one L2 bridge would share the guest's MAC; "+
					"use a point-to-point CNI (ptp) for clones, or a bridge per clone", a.nic.MAC, a.s.IfName, br, n.IfName, r.SandboxID)
			}
		}
	}
	return nil
}

// releaseClones releases the clone MAC lock checkClones took, if any.
func (a *adding) releaseClones() {
	a.cloneLock.Unlock()
	a.cloneLock = nil
}

// hostBridgeOfPeer is the bridge the host-side veth with index peer is a
// port of ("" when there is none, or peer is not that veth).
func hostBridgeOfPeer(peer int) string {
	l, err := netlink.LinkByIndex(peer)
	if err != nil || l.Type() != "veth" || l.Attrs().MasterIndex == 0 {
		return ""
	}
	br, err := netlink.LinkByIndex(l.Attrs().MasterIndex)
	if err != nil || br.Type() != "bridge" {
		return ""
	}
	return br.Attrs().Name
}

// RestoreNICs are the NICs of a restored sandbox as the VMM's restore
// needs them (connect.RestoreArgs): each expected NIC with its TAP now, its
// device id and TAP name in the snapshot. buses gives the QEMU root port of
// a device id (nil: none). Every expected NIC must be added first.
func RestoreNICs(rec *netsetup.NetSetup, buses map[string]string) ([]connect.RestoreNIC, error) {
	if rec.Restore == nil {
		return nil, fmt.Errorf("sandbox %s was not prepared for a restore (vmnicctl restore)", rec.SandboxID)
	}
	var nics []connect.RestoreNIC
	var missing []string
	for _, exp := range rec.Restore.Expected {
		n, ok := rec.NIC(exp.IfName)
		if !ok || !n.HostReady {
			missing = append(missing, exp.IfName)
			continue
		}
		snapTap := n.SnapshotTap
		if snapTap == "" {
			snapTap = exp.Tap
		}
		nics = append(nics, connect.RestoreNIC{NIC: AdapterNIC(*n), DeviceID: exp.VMMDeviceID, SnapshotTap: snapTap, BDF: exp.BDF, Bus: buses[exp.VMMDeviceID]})
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("sandbox %s: the expected NICs %s are not added yet: CNI ADD them first", rec.SandboxID, strings.Join(missing, ", "))
	}
	return nics, nil
}

func jsonList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
