package sandbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

// Attachment is a (container id, ifname) pair a runtime still uses.
type Attachment struct{ ContainerID, IfName string }

// GC removes the NICs of network that CNI made (they carry a container
// id) and whose attachment is not in valid, and the records a CNI ADD made
// once they have no NIC left; prepared sandboxes keep their record at zero
// NICs. It also removes the bridge-backend host TAPs that ADDs killed before
// their record write left, found by their FORWARD-rule users
// (gcForwardLeftovers; a cni-backend leftover is in the sandbox netns and
// goes with it, or with the DEL). It goes on past errors and returns them
// joined.
func (m *Manager) GC(ctx context.Context, network string, valid []Attachment) error {
	keep := make(map[Attachment]bool, len(valid))
	for _, a := range valid {
		keep[a] = true
	}
	ids, err := m.Store.IDs()
	if err != nil {
		return coded(CodeIOFailure, err, "gc")
	}
	var errs []error
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if err := m.gcSandbox(ctx, id, network, keep); err != nil {
			errs = append(errs, fmt.Errorf("sandbox %s: %w", id, err))
		}
	}
	if err := m.gcForwardLeftovers(ctx, keep); err != nil {
		errs = append(errs, err)
	}
	if err := m.PruneStale(ctx); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return coded(CodeInternal, errors.Join(errs...), "gc of network %s", network)
	}
	return nil
}

func (m *Manager) gcSandbox(ctx context.Context, id, network string, keep map[Attachment]bool) error {
	tx, err := m.Store.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer tx.Unlock()
	rec, err := tx.Load()
	switch {
	case errors.Is(err, netsetup.ErrNotFound):
		return nil
	case err != nil:
		// Record recovery's business: GC never acts on a record it cannot read.
		m.log().Warn("gc: leaving an unreadable record to record recovery", "sandbox", id, "error", err)
		return nil
	}
	var gone []string
	for _, n := range rec.NetworkConfigs {
		if n.ContainerID == "" || n.Network != network || keep[Attachment{n.ContainerID, n.IfName}] {
			continue
		}
		m.log().Info("gc: removing a NIC no runtime uses", "sandbox", id, "ifname", n.IfName, "container", n.ContainerID)
		gone = append(gone, n.IfName)
	}
	errs := m.removeNICs(ctx, tx, rec, gone, true, nil)
	if len(errs) == 0 && len(rec.NetworkConfigs) == 0 && rec.CreatedBy == netsetup.CreatedByCNI {
		if err := tx.Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// PruneStale removes what a process killed half way leaves in the state
// directory without a sandbox to go with it: netns index entries and
// container index entries of sandboxes that have no record (or no NIC that
// uses them), temp files, and an older vmnic's lock files
// (netsetup.Store.Prune). Each is removed
// under its sandbox's lock; one held by a live process is left alone.
func (m *Manager) PruneStale(ctx context.Context) error {
	removed, err := m.Store.Prune(ctx, time.Second)
	if len(removed) > 0 {
		m.log().Info("pruned state left by interrupted calls", "removed", removed)
	}
	return err
}

// OrphanNetns lists the owned vmnic-* namespaces in NetnsDir that no record
// names (including leftover mount points that hold no namespace). A netns
// whose sandbox has a record that cannot be read is not listed: it is left
// to record recovery (logged). The list is read without locks: remove its
// entries with RemoveOrphanNetns, which checks again under the lock.
func (m *Manager) OrphanNetns(ctx context.Context) ([]string, error) {
	paths, err := netns.List(m.netnsDir(), OwnedNetnsPrefix)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		nsid, err := netsetup.IdentifyNetns(p)
		if err == nil {
			if _, err := m.Store.FindByNetns(nsid); err == nil {
				continue
			}
		}
		// The record named after the netns may still point at it by path.
		// An unreadable record is quarantined and rebuilt by Get; a record
		// that cannot be read for another reason keeps its netns.
		id := filepath.Base(p)[len(OwnedNetnsPrefix):]
		rec, err := m.Store.Get(id)
		if err == nil && rec.ResolvedNetnsPath() == p {
			continue
		}
		if err != nil && !errors.Is(err, netsetup.ErrNotFound) && netsetup.ValidateSandboxID(id) == nil {
			m.log().Warn("gc: leaving the netns of an unreadable record to record recovery", "netns", p, "sandbox", id, "error", err)
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// RemoveOrphanNetns removes an owned netns that OrphanNetns listed, under
// the lock of the sandbox it is named after and after checking again: a
// sandbox being prepared (Prepare makes the netns before it saves the
// record, holding the lock), one recorded meanwhile, one whose record
// cannot be read (record recovery's) or that another sandbox's record
// names keeps it. It reports whether it removed the netns.
func (m *Manager) RemoveOrphanNetns(ctx context.Context, path string) (bool, error) {
	if filepath.Dir(path) != filepath.Clean(m.netnsDir()) || !strings.HasPrefix(filepath.Base(path), OwnedNetnsPrefix) {
		return false, fmt.Errorf("%s is not an owned netns of %s", path, m.netnsDir())
	}
	id := filepath.Base(path)[len(OwnedNetnsPrefix):]
	if netsetup.ValidateSandboxID(id) == nil {
		tx, err := m.Store.Lock(ctx, id)
		if err != nil {
			return false, err
		}
		defer tx.Unlock()
		switch rec, err := tx.Load(); {
		case err == nil:
			if rec.ResolvedNetnsPath() == path {
				return false, nil // recorded meanwhile
			}
			// The sandbox has a record, and another netns: this one is a
			// leftover all the same (checked against the index below).
		case !errors.Is(err, netsetup.ErrNotFound):
			m.log().Warn("gc: leaving the netns of an unreadable record to record recovery", "netns", path, "sandbox", id, "error", err)
			return false, nil
		}
	}
	if nsid, err := netsetup.IdentifyNetns(path); err == nil {
		switch other, err := m.Store.FindByNetns(nsid); {
		case err == nil:
			m.log().Info("gc: an owned netns another sandbox's record names is not an orphan", "netns", path, "sandbox", other)
			return false, nil
		case !errors.Is(err, netsetup.ErrNotFound):
			return false, err
		}
	}
	if err := netns.Remove(path); err != nil {
		return false, err
	}
	return true, nil
}

// RemoveNetns unmounts and removes a bind-mounted netns (missing is fine).
// It checks nothing: callers hold the sandbox's lock and have checked that
// no record names it (else use RemoveOrphanNetns).
func (m *Manager) RemoveNetns(path string) error { return netns.Remove(path) }
