package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/vmnic/vmnic/netsetup"
)

// Teardown removes the sandbox's NICs (from the VMM, bounded, then from the
// host), recorded ones and those an interrupted ADD left unrecorded (found
// by name, leftover.go), then, unless o.KeepNetns, its owned netns and its record; with
// KeepNetns the record stays at zero NICs (phase prepared, no VMM). It is
// idempotent: a missing record is success and a gone netns is fine. A
// failure half way leaves the record invalid with the error; a retried
// teardown finishes the job.
func (m *Manager) Teardown(ctx context.Context, id string, o TeardownOptions) error {
	if err := netsetup.ValidateSandboxID(id); err != nil {
		return err
	}
	tx, err := m.Store.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer tx.Unlock()
	// No record (a lost state dir) or an unreadable one: what the host
	// still has of the sandbox (its owned netns, its marked TAPs) is
	// recorded again and torn down.
	rec, err := m.loadOrRebuild(ctx, tx, "")
	if err != nil || rec == nil {
		return err
	}
	return m.teardownLocked(ctx, tx, rec, o)
}

// teardownLocked is Teardown of rec under tx.
func (m *Manager) teardownLocked(ctx context.Context, tx *netsetup.Tx, rec *netsetup.NetSetup, o TeardownOptions) error {
	id := rec.SandboxID
	if o.IfNetnsGone && !RecordedNetnsGone(rec) {
		m.log().Info("not torn down: its netns is there again", "sandbox", id, "netns", rec.ResolvedNetnsPath())
		return nil
	}
	rec.Phase = netsetup.PhaseTearingDown
	if err := tx.Save(rec); err != nil {
		return fmt.Errorf("teardown sandbox %s: %w", id, err)
	}
	var errs []error
	if err := m.step("teardown-saved"); err != nil {
		errs = append(errs, err)
	}
	var cids, ifnames []string
	for _, n := range rec.NetworkConfigs {
		cids, ifnames = append(cids, n.ContainerID), append(ifnames, n.IfName)
	}
	errs = append(errs, m.removeNICs(ctx, tx, rec, ifnames, false, func() error { return m.step("teardown-nic") })...)
	// Then what ADDs killed before their record write left (by name).
	strays, err := m.unrecordedNICs(rec)
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range strays {
		if err := m.removeLeftover(ctx, rec, n); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 && !o.KeepNetns && rec.NetnsOwned {
		if err := m.step("teardown-netns"); err != nil {
			errs = append(errs, err)
		} else if err := m.removeOwnedNetns(rec); err != nil {
			errs = append(errs, err)
		} else if err := m.step("netns-removed"); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		err := errors.Join(errs...)
		rec.Phase = netsetup.PhaseInvalid
		rec.Error = "teardown failed: " + err.Error()
		if serr := tx.Save(rec); serr != nil {
			err = errors.Join(err, serr)
		}
		return fmt.Errorf("teardown sandbox %s: %w", id, err)
	}
	if o.KeepNetns {
		rec.Phase = netsetup.PhasePrepared
		rec.Error = ""
		rec.VMM = nil
		if b := rec.ResolvedNetBackend(); b != netsetup.BackendCNI && b != netsetup.BackendBridge {
			// At zero NICs the backend is the next ADD's to set; one this
			// version does not know would not validate as prepared.
			rec.NetBackend = netsetup.BackendCNI
		}
		if err := tx.Save(rec); err != nil {
			return fmt.Errorf("teardown sandbox %s: %w", id, err)
		}
		m.unindexContainers(id, rec, cids...)
		m.log().Info("sandbox stopped", "sandbox", id)
		return nil
	}
	if err := tx.Delete(); err != nil {
		return fmt.Errorf("teardown sandbox %s: %w", id, err)
	}
	m.unindexContainers(id, nil, cids...)
	m.log().Info("sandbox removed", "sandbox", id)
	return nil
}

// RecordedNetnsGone says whether the recorded netns of rec is no longer at
// its path (missing, not a namespace, or another namespace). A record
// without a netns path (bridge backend) never qualifies.
func RecordedNetnsGone(rec *netsetup.NetSetup) bool {
	path := rec.ResolvedNetnsPath()
	if path == "" {
		return false
	}
	cur, err := netsetup.IdentifyNetns(path)
	if err != nil {
		return true
	}
	return rec.NetnsID != nil && *rec.NetnsID != cur
}

// lockRecord locks sandbox id and loads its record. A sandbox without a
// record gives a nil record and no error, and is unlocked already; else
// the caller unlocks tx.
func (m *Manager) lockRecord(ctx context.Context, id string) (*netsetup.Tx, *netsetup.NetSetup, error) {
	tx, rec, err := m.Store.LockLoad(ctx, id)
	if errors.Is(err, netsetup.ErrNotFound) {
		return nil, nil, nil
	}
	return tx, rec, err
}
