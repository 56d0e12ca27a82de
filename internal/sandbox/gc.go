package sandbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

// Attachment is a (container id, ifname) pair a runtime still uses.
type Attachment struct{ ContainerID, IfName string }

// GC removes the NICs of network that CNI made (they carry a container
// id) and whose attachment is not in valid, and the records a CNI ADD made
// once they have no NIC left; prepared sandboxes keep their record at zero
// NICs. It goes on past errors and returns them joined.
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
	if err := m.PruneStale(ctx); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return coded(CodeInternal, errors.Join(errs...), "gc of network %s", network)
	}
	return nil
}

func (m *Manager) gcSandbox(ctx context.Context, id, network string, keep map[Attachment]bool) error {
	tx, rec, err := m.lockRecord(ctx, id)
	if err != nil || rec == nil {
		return err
	}
	defer tx.Unlock()
	var errs []error
	for _, n := range append([]netsetup.NIC(nil), rec.NetworkConfigs...) {
		if n.ContainerID == "" || n.Network != network || keep[Attachment{n.ContainerID, n.IfName}] {
			continue
		}
		m.log().Info("gc: removing a NIC no runtime uses", "sandbox", id, "ifname", n.IfName, "container", n.ContainerID)
		if err := m.removeNIC(ctx, tx, rec, n.IfName, true); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 && len(rec.NetworkConfigs) == 0 && rec.CreatedBy == netsetup.CreatedByCNI {
		if err := tx.Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// PruneStale removes what a process killed half way leaves in the state
// directory without a sandbox to go with it: lock files, netns index entries
// and container index entries of sandboxes that have no record (or no NIC
// that uses them), and temp files (netsetup.Store.Prune). Each is removed
// under its sandbox's lock; one held by a live process is left alone.
func (m *Manager) PruneStale(ctx context.Context) error {
	removed, err := m.Store.Prune(ctx, time.Second)
	if len(removed) > 0 {
		m.log().Info("pruned state left by interrupted calls", "removed", removed)
	}
	return err
}

// OrphanNetns lists the owned vmnic-* namespaces in NetnsDir that no record
// names (including leftover mount points that hold no namespace).
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
			m.log().Warn("gc: keeping an owned netns whose record cannot be read", "netns", p, "error", err)
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// RemoveNetns unmounts and removes a bind-mounted netns (missing is fine).
func (m *Manager) RemoveNetns(path string) error { return netns.Remove(path) }
