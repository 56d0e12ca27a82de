package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

// QuiesceOptions say why a sandbox's NICs leave the data path.
type QuiesceOptions struct {
	// Reason is recorded on each NIC (NIC.QuiesceReason).
	Reason string
	// VMMGone: the VMM process that had the NICs is gone (stopped, killed,
	// its container stopped), so a NIC it had comes back pending on resume:
	// the next VMM gets it from vmm-args, attach-vmm or a restore. Without
	// it (a pause) an attached NIC comes back attached.
	VMMGone bool
}

// Quiesce takes every NIC of sandbox id out of the data path
// (hostnet.Quiesce: a drop filter replaces the veth -> TAP redirect, so
// frames for a guest that cannot read its TAP are dropped at the veth) and
// records each as quiesced with the state it returns to. The record is
// written before the host changes, so a crash leaves a NIC recorded
// quiesced with the redirect still in place: a retried Quiesce, a Resume, a
// DEL or a teardown all finish from there. Idempotent: a quiesced NIC is
// quiesced again (host side re-applied). Bridge-backend NICs are only
// recorded: a bridge never forwards to a TAP port without carrier, so no
// mirred is involved. A NIC still pending its host setup or detaching is
// left alone. It returns the record as saved.
func (m *Manager) Quiesce(ctx context.Context, id string, o QuiesceOptions) (*netsetup.NetSetup, error) {
	tx, rec, err := m.lifecycleLock(ctx, id, "quiesce")
	if err != nil {
		return nil, err
	}
	defer tx.Unlock()
	var todo []netsetup.NIC
	for i := range rec.NetworkConfigs {
		n := &rec.NetworkConfigs[i]
		if !n.HostReady || n.State == netsetup.NICDetaching {
			continue
		}
		if n.State != netsetup.NICQuiesced {
			n.ResumeState = n.State
			n.State = netsetup.NICQuiesced
		}
		if o.VMMGone {
			n.ResumeState = netsetup.NICPending
			n.VMMDeviceID, n.BDF = "", ""
		}
		if o.Reason != "" {
			n.QuiesceReason = o.Reason
		}
		todo = append(todo, *n)
	}
	if len(todo) == 0 {
		return rec, nil
	}
	if err := tx.Save(rec); err != nil {
		return nil, coded(CodeIOFailure, err, "record the NICs of sandbox %s as quiesced", id)
	}
	if err := m.step("quiesce-saved"); err != nil {
		return nil, asCoded(err, "quiesce sandbox %s", id)
	}
	if err := m.applyDataPath(rec, todo, false); err != nil {
		return nil, coded(CodeInternal, err, "quiesce sandbox %s", id)
	}
	m.log().Info("sandbox quiesced", "sandbox", id, "nics", len(todo), "reason", o.Reason, "vmmGone", o.VMMGone)
	return rec, nil
}

// Resume puts the quiesced NICs of sandbox id back into the data path
// (redirect first, then the drop goes) and records each at its resume
// state. The host changes come before the record, so a crash leaves a NIC
// recorded quiesced whose redirect is back: a retried Resume finishes it.
// Idempotent; a sandbox without quiesced NICs is left as it is.
func (m *Manager) Resume(ctx context.Context, id string) (*netsetup.NetSetup, error) {
	tx, rec, err := m.lifecycleLock(ctx, id, "resume")
	if err != nil {
		return nil, err
	}
	defer tx.Unlock()
	var todo []netsetup.NIC
	for _, n := range rec.NetworkConfigs {
		if n.State == netsetup.NICQuiesced {
			todo = append(todo, n)
		}
	}
	if len(todo) == 0 {
		return rec, nil
	}
	if err := m.applyDataPath(rec, todo, true); err != nil {
		return nil, coded(CodeInternal, err, "resume sandbox %s", id)
	}
	if err := m.step("resume-host"); err != nil {
		return nil, asCoded(err, "resume sandbox %s", id)
	}
	for i := range rec.NetworkConfigs {
		n := &rec.NetworkConfigs[i]
		if n.State != netsetup.NICQuiesced {
			continue
		}
		n.State = n.ResumeState
		if n.State != netsetup.NICAttached || n.VMMDeviceID == "" {
			n.State = netsetup.NICPending
		}
		n.ResumeState, n.QuiesceReason = "", ""
	}
	if err := tx.Save(rec); err != nil {
		return nil, coded(CodeIOFailure, err, "record the NICs of sandbox %s as resumed", id)
	}
	m.log().Info("sandbox resumed", "sandbox", id, "nics", len(todo))
	return rec, nil
}

// lifecycleLock locks and loads the record of sandbox id for op; a missing
// record or one being torn down is a clear error.
func (m *Manager) lifecycleLock(ctx context.Context, id, op string) (*netsetup.Tx, *netsetup.NetSetup, error) {
	if err := netsetup.ValidateSandboxID(id); err != nil {
		return nil, nil, coded(CodeInvalidEnv, err, "sandbox id")
	}
	tx, rec, err := m.lockRecord(ctx, id)
	switch {
	case err != nil:
		return nil, nil, coded(CodeTryAgain, err, "%s sandbox %s", op, id)
	case rec == nil:
		return nil, nil, codedf(CodeInvalidEnv, "%s sandbox %s: it has no record", op, id)
	}
	if rec.Phase == netsetup.PhaseInvalid || rec.Phase == netsetup.PhaseTearingDown {
		tx.Unlock()
		return nil, nil, codedf(CodeInvalidEnv, "%s sandbox %s: it is %s (%s); only a teardown may follow", op, id, rec.Phase, rec.Error)
	}
	return tx, rec, nil
}

// applyDataPath quiesces (resume false) or resumes the cni-backend NICs
// nics of rec in its netns, after checking the netns is still the recorded
// one. A gone netns is fine (nothing is left to flood).
func (m *Manager) applyDataPath(rec *netsetup.NetSetup, nics []netsetup.NIC, resume bool) error {
	if rec.ResolvedNetBackend() != netsetup.BackendCNI {
		return nil
	}
	path := rec.ResolvedNetnsPath()
	if path == "" {
		return nil
	}
	if rec.NetnsID != nil {
		got, err := netsetup.IdentifyNetns(path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return fmt.Errorf("netns %s: %w", path, err)
		}
		if got != *rec.NetnsID {
			return fmt.Errorf("netns %s is %s now, not the recorded namespace %s: refusing to change it", path, got, rec.NetnsID)
		}
	}
	err := netns.Do(path, func() error {
		var errs []error
		for _, n := range nics {
			veth, err := netlink.LinkByName(n.IfName)
			if err != nil {
				errs = append(errs, fmt.Errorf("NIC %s: look up the veth: %w", n.IfName, err))
				continue
			}
			if !resume {
				if err := hostnet.Quiesce(veth); err != nil {
					errs = append(errs, fmt.Errorf("NIC %s: %w", n.IfName, err))
				}
				continue
			}
			tap, err := netlink.LinkByName(n.Tap)
			if err != nil {
				errs = append(errs, fmt.Errorf("NIC %s: look up TAP %s: %w", n.IfName, n.Tap, err))
				continue
			}
			if err := hostnet.Resume(veth, tap, hostnet.DataPath(n.DataPath)); err != nil {
				errs = append(errs, fmt.Errorf("NIC %s: %w", n.IfName, err))
			}
		}
		return errors.Join(errs...)
	})
	if err != nil && netns.IsGone(err) {
		return nil
	}
	return err
}
