package sandbox

import (
	"context"
	"errors"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/netsetup"
)

// backend is the host side of a NIC, one implementation per
// netsetup.Backend: cniBackend (backend_cni.go) puts the TAP in the sandbox
// netns and joins it to the veth with tc redirects; bridgeBackend
// (backend_bridge.go) parks the veth and makes the TAP a port of a host
// bridge with FORWARD rules.
//
// AddNIC calls claim, then setupInNetns and setupOnHost, and records the
// NIC once they made its host side; the removal of a NIC calls cleanup,
// also for a NIC an ADD killed before its record write left (leftover.go).
type backend interface {
	// claim runs in the sandbox netns once the veth is known, before any
	// host change: it refuses, changing nothing, a NIC whose TAP setup
	// could not make.
	claim(nic *netsetup.NIC) error
	// setupInNetns (in the sandbox netns) and then setupOnHost (in the host
	// netns) make the NIC's host side. Each returns the undo of what it
	// made, also when it fails part way. c is a netlink socket in the
	// sandbox netns, for setupInNetns's requests there.
	setupInNetns(c *hostnet.Conn, veth netlink.Link, nic *netsetup.NIC) (undo, error)
	setupOnHost(ctx context.Context, nic *netsetup.NIC) (undo, error)
	// tapMAC is the MAC of the TAP setup made ("" before).
	tapMAC() string
	// cleanup removes the host side of the recorded NIC nic of rec (DEL,
	// teardown, GC, a NIC an interrupted ADD left pending). It is
	// idempotent: what is gone already, netns included, is fine.
	cleanup(ctx context.Context, rec *netsetup.NetSetup, nic netsetup.NIC) error
}

// backendOf is the backend of the NICs of rec, for their removal.
// A backend this version does not know (a newer vmnic's; only a teardown
// gets here with one) is removed as the cni backend: vmnic's filters and
// the recorded TAP in the recorded netns.
func (m *Manager) backendOf(rec *netsetup.NetSetup) backend {
	switch rec.ResolvedNetBackend() {
	case netsetup.BackendBridge:
		return &bridgeBackend{m: m}
	case netsetup.BackendCNI:
	default:
		m.log().Warn("a net_backend this version does not know: removing its NICs as the cni backend's", "sandbox", rec.SandboxID, "backend", rec.NetBackend)
	}
	return &cniBackend{m: m}
}

// openBackend is the backend of an ADD with spec s (validated): it names
// the TAP (nic.Tap) and checks, in the host netns and changing nothing,
// what the backend needs there. release frees what it holds.
func (m *Manager) openBackend(s *NICSpec, nic *netsetup.NIC) (b backend, release func(), err error) {
	if s.Backend == netsetup.BackendBridge {
		return m.openBridge(s, nic)
	}
	nic.Tap = hostnet.TapNameInNetns(s.IfName)
	return &cniBackend{m: m, spec: s}, func() {}, nil
}

// undo is a rollback stack; steps that must run inside the sandbox netns are
// kept apart from those that run in the host netns.
type undo struct {
	ns, host []func() error
}

// add puts the steps of v on top of u.
func (u *undo) add(v undo) {
	u.ns = append(u.ns, v.ns...)
	u.host = append(u.host, v.host...)
}

func runReverse(steps []func() error) error {
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func tapError(err error, tap, where string) error {
	if errors.Is(err, hostnet.ErrNameTaken) {
		return coded(CodeInvalidEnv, err, "TAP name %s is already taken in %s", tap, where)
	}
	return coded(CodeInternal, err, "create TAP %s", tap)
}
