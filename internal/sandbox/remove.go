package sandbox

import (
	"context"
	"errors"
	"log/slog"

	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// DelSpec names a NIC to remove: the CNI DEL.
type DelSpec struct {
	SandboxID   string
	ContainerID string // when set, a NIC recorded for another container is left alone
	IfName      string
	// NetnsPath is CNI_NETNS ("" when the runtime gave none): where a DEL
	// whose record is lost or unreadable finds the NIC's marked TAP, and
	// where a NIC no record lists is looked for. Backend and Bridge are the
	// conf's, for a NIC no record lists (empty: the cni backend).
	NetnsPath string
	Backend   netsetup.Backend
	Bridge    string
}

// DelNIC removes a NIC: from the VMM first (bounded), then its host side
// (vmnic's filters and qdisc, the TAP, the bridge rules), then its record
// entry. It is idempotent: a missing record, NIC or netns is success. A NIC
// no record lists is looked for by its TAP's marker (recover.go) and, for
// the bridge backend, by its FORWARD-rule share (leftover.go), and what an
// interrupted ADD left of it is removed. The sandbox's record stays at zero
// NICs unless a CNI ADD created it.
func (m *Manager) DelNIC(ctx context.Context, d DelSpec) error {
	if err := netsetup.ValidateSandboxID(d.SandboxID); err != nil {
		return coded(CodeInvalidEnv, err, "sandbox id")
	}
	tx, err := m.Store.Lock(ctx, d.SandboxID)
	if err != nil {
		return coded(CodeTryAgain, err, "sandbox %s", d.SandboxID)
	}
	defer tx.Unlock()
	// A lost or unreadable record is made again from the host (the TAPs'
	// markers in CNI_NETNS, the owned netns, bridge TAPs on the host), so
	// the DEL removes what the ADD made.
	rec, err := m.loadOrRebuild(ctx, tx, d.NetnsPath)
	if err == nil && rec == nil {
		// No record and nothing of the sandbox on the host to rebuild it
		// from: what a killed first ADD left that only names find (a
		// FORWARD-rule share taken before the host TAP).
		if err := m.removeUnrecordedByName(ctx, nil, d); err != nil {
			return err
		}
	}
	if err != nil {
		return coded(CodeIOFailure, err, "load the record of sandbox %s", d.SandboxID)
	}
	if rec == nil {
		m.unindexContainers(d.SandboxID, nil, d.ContainerID)
		return nil
	}
	nic, ok := rec.NIC(d.IfName)
	if !ok {
		// An ADD killed before it recorded the NIC leaves a marked TAP (and,
		// for the bridge backend, its FORWARD-rule share; after its hot-add,
		// the VMM device).
		if err := m.removeUnrecorded(ctx, rec, d); err != nil {
			// A VMM that still holds the device keeps its code (try again).
			return asCoded(err, "remove the unrecorded NIC %s of sandbox %s", d.IfName, d.SandboxID)
		}
		if err := m.removeUnrecordedByName(ctx, rec, d); err != nil {
			return err
		}
		m.unindexContainers(d.SandboxID, rec, d.ContainerID)
		return nil
	}
	if d.ContainerID != "" && nic.ContainerID != "" && nic.ContainerID != d.ContainerID {
		m.log().Info("DEL for a NIC of another container: nothing to do", "sandbox", d.SandboxID, "ifname", d.IfName, "container", d.ContainerID, "recorded", nic.ContainerID)
		return nil
	}
	return m.removeNIC(ctx, tx, rec, d.IfName, true)
}

// removeNIC takes the NIC ifname out of the VMM and off the host and drops
// it from the record (saved): DEL calls it, GC and teardown go through
// removeNICs. dropCNIRecord deletes a record a CNI ADD made once its last
// NIC is gone.
func (m *Manager) removeNIC(ctx context.Context, tx *netsetup.Tx, rec *netsetup.NetSetup, ifname string, dropCNIRecord bool) error {
	p, ok := rec.NIC(ifname)
	if !ok {
		return nil
	}
	nic := *p
	if nic.State == netsetup.NICQuiesced {
		nic.State = nic.ResumeState // removed as what it was before (quiesce.go)
	}
	if err := m.releaseNIC(ctx, tx, rec, nic); err != nil {
		return err
	}
	return m.finishRemoveNIC(ctx, tx, rec, nic, dropCNIRecord)
}

// releaseNIC takes nic out of the VMM of rec, when the VMM has it: the
// first part of a NIC's removal, before anything on the host goes.
func (m *Manager) releaseNIC(ctx context.Context, tx *netsetup.Tx, rec *netsetup.NetSetup, nic netsetup.NIC) error {
	if nic.State == netsetup.NICQuiesced {
		nic.State = nic.ResumeState // removed as what it was before (quiesce.go)
	}
	switch {
	case rec.VMM != nil && (nic.State == netsetup.NICAttached || nic.State == netsetup.NICDetaching) && nic.VMMDeviceID != "":
		return m.detach(ctx, tx, rec, nic)
	case rec.VMM != nil && nic.State == netsetup.NICPending:
		return m.removeStray(ctx, rec, nic)
	case rec.VMM != nil && !knownNICState(nic.State) && nic.VMMDeviceID != "":
		// A state a newer vmnic wrote (only a teardown gets here with one):
		// the device may be in the VMM, so it is taken out like one that
		// is detaching.
		return m.detach(ctx, tx, rec, nic)
	}
	return nil
}

// finishRemoveNIC removes the host side of nic (released from the VMM)
// and drops it from the record.
func (m *Manager) finishRemoveNIC(ctx context.Context, tx *netsetup.Tx, rec *netsetup.NetSetup, nic netsetup.NIC, dropCNIRecord bool) error {
	ifname := nic.IfName
	if err := m.step("remove-host"); err != nil {
		return asCoded(err, "remove NIC %s", ifname)
	}
	if err := m.backendOf(rec).cleanup(ctx, rec, nic); err != nil {
		return coded(CodeInternal, err, "remove NIC %s of sandbox %s", ifname, rec.SandboxID)
	}
	if err := m.step("host-removed"); err != nil {
		return asCoded(err, "remove NIC %s", ifname)
	}
	rec.RemoveNIC(ifname)
	if dropCNIRecord && len(rec.NetworkConfigs) == 0 && rec.CreatedBy == netsetup.CreatedByCNI {
		if err := tx.Delete(); err != nil {
			return coded(CodeIOFailure, err, "remove the record of sandbox %s", rec.SandboxID)
		}
		m.unindexContainers(rec.SandboxID, nil, nic.ContainerID)
	} else {
		if err := tx.Save(rec); err != nil {
			return coded(CodeIOFailure, err, "record the removal of NIC %s", ifname)
		}
		m.unindexContainers(rec.SandboxID, rec, nic.ContainerID)
	}
	m.log().Info("NIC removed", "sandbox", rec.SandboxID, "ifname", ifname, "tap", nic.Tap)
	return nil
}

// knownNICState: a NIC state this version of vmnic knows.
func knownNICState(s netsetup.NICState) bool {
	return s == netsetup.NICPending || s == netsetup.NICAttached || s == netsetup.NICDetaching
}

// detach takes nic (attached or detaching) out of the VMM of rec, bounded.
// A VMM that is gone, or cannot hot-remove, lets the removal go on.
func (m *Manager) detach(ctx context.Context, tx *netsetup.Tx, rec *netsetup.NetSetup, nic netsetup.NIC) error {
	fresh := nic.State == netsetup.NICAttached
	if fresh {
		// Say "detaching" first: a retry after a crash or a timeout waits
		// for the device instead of asking the VMM again.
		if p, ok := rec.NIC(nic.IfName); ok {
			p.State = netsetup.NICDetaching
		}
		if err := tx.Save(rec); err != nil {
			return coded(CodeIOFailure, err, "record NIC %s as detaching", nic.IfName)
		}
		if err := m.step("detaching-saved"); err != nil {
			return asCoded(err, "remove NIC %s", nic.IfName)
		}
	}
	// Also for a NIC already detaching: the removal may never have been
	// sent (a crash right after recording "detaching"). The adapters make a
	// repeated remove safe: Cloud Hypervisor's sends remove-device only
	// while config.net still lists the id, QEMU's waits for a device_del in
	// progress, Firecracker's DELETE of a missing id is success.
	rctx := ctx
	if nic.GuestAcked {
		rctx = vmmadapter.WithGuestAcked(ctx)
	}
	err := m.vmmRemove(rctx, rec.VMM, nic.VMMDeviceID)
	if err != nil {
		o := vmmRemoveOutcome(err)
		if o.code != 0 {
			if p, ok := rec.NIC(nic.IfName); ok && (o.note || o.stillAttached && fresh) {
				if o.note {
					// Firecracker: nothing was sent. The NIC stays detaching
					// with a note saying what the guest and the VM manager
					// must do; the retry after "vmnicctl guest-acked"
					// removes it.
					p.Note = err.Error()
				}
				if o.stillAttached && fresh {
					p.State = netsetup.NICAttached
				}
				_ = tx.Save(rec)
			}
			return coded(o.code, err, "remove NIC %s from the %s VMM of sandbox %s", nic.IfName, rec.VMM.Kind, rec.SandboxID)
		}
		m.log().Log(ctx, o.level, o.msg, "sandbox", rec.SandboxID, "ifname", nic.IfName, "error", err)
	}
	if err := m.step("vmm-removed"); err != nil {
		return asCoded(err, "remove NIC %s", nic.IfName)
	}
	return nil
}

// removeOutcome is what a failed hot-remove means for the removal.
type removeOutcome struct {
	code uint // 0: the removal goes on to the host side; else it fails with this code
	// level and msg log why the removal goes on.
	level slog.Level
	msg   string
	// stillAttached: the device is still in the VMM as far as vmnic knows
	// (a NIC just recorded detaching goes back to attached).
	stillAttached bool
	// note: the error says what the guest must do; it becomes the NIC's note.
	note bool
}

// vmmRemoveOutcome classifies the error of a hot-remove.
func vmmRemoveOutcome(err error) removeOutcome {
	switch {
	case errors.Is(err, vmmadapter.ErrUnavailable):
		return removeOutcome{level: slog.LevelInfo, msg: "VMM gone: cleaning up the host side only"}
	case errors.Is(err, vmmadapter.ErrHotplugUnsupported):
		return removeOutcome{level: slog.LevelWarn, msg: "the VMM cannot hot-remove NICs: the guest keeps a dead NIC"}
	case errors.Is(err, vmmadapter.ErrEjectTimeout):
		return removeOutcome{code: CodeTryAgain}
	case errors.Is(err, vmmadapter.ErrGuestMustAct):
		return removeOutcome{code: CodeTryAgain, note: true}
	case errors.Is(err, vmmadapter.ErrVMPaused):
		// Refused before anything was sent: the NIC is still attached.
		return removeOutcome{code: CodeTryAgain, stillAttached: true}
	default:
		return removeOutcome{code: CodeInternal, stillAttached: true}
	}
}

// removeStray takes a NIC recorded pending (or not recorded at all) out of
// the VMM when the VMM has it anyway: the leftover of an ADD (or attach)
// killed between the hot-add and the record update. A VMM that cannot be asked is logged and the host
// side is removed regardless; only a guest still holding the device makes
// the removal fail (to be retried).
func (m *Manager) removeStray(ctx context.Context, rec *netsetup.NetSetup, nic netsetup.NIC) error {
	if rec.VMM == nil || nic.ID == "" {
		return nil
	}
	a, err := m.openVMM(rec.VMM)
	if err == nil {
		defer a.Close()
		lctx, cancel := context.WithTimeout(ctx, m.callTimeout())
		var have []string
		have, err = a.NICs(lctx)
		cancel()
		if err == nil {
			id, ok := vmmHas(have, nic.ID)
			if !ok {
				return nil
			}
			m.log().Warn("the VMM has a NIC recorded pending (an interrupted ADD): removing it", "sandbox", rec.SandboxID, "ifname", nic.IfName, "device", id)
			// The NIC was never recorded attached, so the guest was never
			// told of it (for Firecracker: asked to rescan): no guest step.
			rctx, cancel := context.WithTimeout(vmmadapter.WithGuestAcked(ctx), m.removeTimeout()+2*m.callTimeout())
			err = a.RemoveNIC(rctx, id)
			cancel()
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, vmmadapter.ErrEjectTimeout):
		return coded(CodeTryAgain, err, "remove NIC %s from the %s VMM of sandbox %s", nic.IfName, rec.VMM.Kind, rec.SandboxID)
	}
	m.log().Warn("cannot check the VMM for a NIC left by an interrupted ADD; removing the host side only", "sandbox", rec.SandboxID, "ifname", nic.IfName, "error", err)
	return nil
}
