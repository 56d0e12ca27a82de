package sandbox

import (
	"context"

	"github.com/vmnic/vmnic/netsetup"
)

// removeNICs removes several NICs of rec, in three passes: each out of the
// VMM (before is called first for each, when set; an error from it or from
// the VMM skips that NIC), then, when that is every NIC of rec, their TAPs
// in one kernel batch (deleteTapsTogether), then each NIC's host side and record entry
// (removeNIC's second half, which finds the batched TAPs gone). The order
// of a single removal holds for each NIC: VMM, host, record. A crash after
// the batch leaves the NICs recorded with their TAPs gone, which a retry
// finishes (a gone TAP is fine for cleanup, and the VMM removal is safe to
// repeat, as for a crash after "detaching" was recorded).
func (m *Manager) removeNICs(ctx context.Context, tx *netsetup.Tx, rec *netsetup.NetSetup, ifnames []string, dropCNIRecord bool, before func() error) []error {
	var errs []error
	var released []netsetup.NIC
	for _, name := range ifnames {
		p, ok := rec.NIC(name)
		if !ok {
			continue
		}
		nic := *p
		if before != nil {
			if err := before(); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if err := m.releaseNIC(ctx, tx, rec, nic); err != nil {
			errs = append(errs, err)
			continue
		}
		released = append(released, nic)
	}
	if len(released) == 0 {
		return errs
	}
	batched, err := false, error(nil)
	if len(released) == len(rec.NetworkConfigs) {
		// The whole sandbox's NICs go: its link group goes with them.
		batched, err = m.deleteTapsTogether(rec, released)
	}
	switch {
	case err != nil:
		m.log().Warn("cannot delete the sandbox's TAPs in one batch: deleting each", "sandbox", rec.SandboxID, "error", err)
	case batched:
		m.log().Debug("TAPs deleted in one batch", "sandbox", rec.SandboxID, "taps", len(released))
		if err := m.step("taps-deleted"); err != nil {
			return append(errs, asCoded(err, "remove the NICs of sandbox %s", rec.SandboxID))
		}
	}
	for _, nic := range released {
		if err := m.finishRemoveNIC(ctx, tx, rec, nic, dropCNIRecord); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}
