package sandbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

// OwnedNetnsPath is where Prepare creates the owned netns of sandbox id.
func (m *Manager) OwnedNetnsPath(id string) string {
	return filepath.Join(m.netnsDir(), OwnedNetnsPrefix+id)
}

// Prepare makes sure sandbox id has a network namespace and a record (at
// zero NICs when new), in one record write. It adopts o.NetnsPath when given, else creates and
// owns <NetnsDir>/vmnic-<id>. It is idempotent; a record made by a CNI ADD
// becomes a prepared one (kept at zero NICs). A sandbox that is invalid or
// being torn down is refused.
func (m *Manager) Prepare(ctx context.Context, id string, o PrepareOptions) (*netsetup.NetSetup, error) {
	if err := netsetup.ValidateSandboxID(id); err != nil {
		return nil, err
	}
	var adopt *netsetup.NetnsID
	if o.NetnsPath != "" {
		nsid, err := netsetup.IdentifyNetns(o.NetnsPath)
		if err != nil {
			return nil, fmt.Errorf("prepare sandbox %s: %w", id, err)
		}
		adopt = &nsid
	}
	tx, err := m.Store.Lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer tx.Unlock()
	rec, err := tx.Load()
	switch {
	case err == nil:
		return m.reprepare(tx, rec, o, adopt)
	case !errors.Is(err, netsetup.ErrNotFound):
		return nil, err
	}

	rec = netsetup.New(id)
	rec.PodName, rec.PodNamespace, rec.PodUID = o.PodName, o.PodNamespace, o.PodUID
	rec.RuntimeDir = o.RuntimeDir
	rec.Origin = o.Origin
	if o.PodPID != 0 {
		ns := o.PodPIDNS
		rec.PodPID, rec.PodPIDStart, rec.PodPIDNS = o.PodPID, o.PodPIDStart, &ns
	}
	createdNetns := ""
	if adopt != nil {
		rec.NetnsPath = o.NetnsPath
		rec.NetnsID = adopt
	} else {
		path, err := netns.Create(m.netnsDir(), OwnedNetnsPrefix+id)
		if err != nil {
			_ = tx.Delete()
			return nil, fmt.Errorf("prepare sandbox %s: %w", id, err)
		}
		createdNetns = path
		nsid, err := netsetup.IdentifyNetns(path)
		if err != nil {
			_ = netns.Remove(path)
			_ = tx.Delete()
			return nil, fmt.Errorf("prepare sandbox %s: %w", id, err)
		}
		rec.NetnsPath, rec.NetnsID, rec.NetnsOwned = path, &nsid, true
		if err := m.step("prepare-netns-created"); err != nil {
			_ = netns.Remove(path)
			_ = tx.Delete()
			return nil, fmt.Errorf("prepare sandbox %s: %w", id, err)
		}
	}
	if err := tx.Save(rec); err != nil {
		if createdNetns != "" {
			_ = netns.Remove(createdNetns)
		}
		_ = tx.Delete()
		return nil, fmt.Errorf("prepare sandbox %s: %w", id, err)
	}
	m.log().Info("sandbox prepared", "sandbox", id, "netns", rec.NetnsPath, "owned", rec.NetnsOwned)
	return rec, nil
}

// reprepare is Prepare on an existing record.
func (m *Manager) reprepare(tx *netsetup.Tx, rec *netsetup.NetSetup, o PrepareOptions, adopt *netsetup.NetnsID) (*netsetup.NetSetup, error) {
	id := rec.SandboxID
	switch rec.Phase {
	case netsetup.PhaseInvalid:
		return nil, fmt.Errorf("sandbox %s is invalid (%s): tear it down before preparing it again: %w", id, rec.Error, ErrInvalidRecord)
	case netsetup.PhaseTearingDown:
		return nil, fmt.Errorf("sandbox %s is being torn down", id)
	}
	changed := false
	path := rec.ResolvedNetnsPath()
	cur, curErr := netsetup.IdentifyNetns(path)
	switch {
	case adopt != nil:
		if curErr == nil && cur != *adopt {
			return nil, fmt.Errorf("prepare sandbox %s: it already has netns %s, not %s", id, path, o.NetnsPath)
		}
		if curErr != nil {
			// The recorded netns is gone: adopt the given one.
			if rec.NetnsOwned && path != "" {
				_ = netns.Remove(path)
			}
			rec.NetnsPath, rec.NetnsID, rec.NetnsOwned = o.NetnsPath, adopt, false
			changed = true
		} else if rec.NetnsID == nil {
			rec.NetnsID = adopt
			changed = true
		}
	case curErr != nil && (rec.NetnsOwned || path == ""):
		// The owned netns is gone (or was never made): make it again.
		if path == "" {
			path = m.OwnedNetnsPath(id)
		}
		p, err := netns.Create(filepath.Dir(path), filepath.Base(path))
		if err != nil {
			return nil, fmt.Errorf("prepare sandbox %s: %w", id, err)
		}
		nsid, err := netsetup.IdentifyNetns(p)
		if err != nil {
			return nil, fmt.Errorf("prepare sandbox %s: %w", id, err)
		}
		rec.NetnsPath, rec.NetnsID, rec.NetnsOwned = p, &nsid, true
		changed = true
	case curErr != nil:
		return nil, fmt.Errorf("prepare sandbox %s: its netns %s is gone: %w", id, path, curErr)
	case rec.NetnsID != nil && *rec.NetnsID != cur:
		// Another namespace was made at the path (the recorded one was
		// deleted): it belongs to someone else, not to this sandbox.
		return nil, fmt.Errorf("prepare sandbox %s: the netns at %s (%s) is not the recorded one (%s): tear the sandbox down, or prepare it with --netns naming the namespace to adopt",
			id, path, cur, rec.NetnsID)
	case rec.NetnsID == nil:
		rec.NetnsID = &cur
		changed = true
	}
	if rec.CreatedBy == netsetup.CreatedByCNI {
		rec.CreatedBy = ""
		changed = true
	}
	for _, f := range []struct {
		dst *string
		v   string
	}{{&rec.PodName, o.PodName}, {&rec.PodNamespace, o.PodNamespace}, {&rec.PodUID, o.PodUID}, {&rec.RuntimeDir, o.RuntimeDir}, {&rec.Origin, o.Origin}} {
		if f.v != "" && *f.dst != f.v {
			*f.dst = f.v
			changed = true
		}
	}
	if o.PodPID != 0 && (rec.PodPID != o.PodPID || rec.PodPIDStart != o.PodPIDStart || rec.PodPIDNS == nil || *rec.PodPIDNS != o.PodPIDNS) {
		ns := o.PodPIDNS
		rec.PodPID, rec.PodPIDStart, rec.PodPIDNS = o.PodPID, o.PodPIDStart, &ns
		changed = true
	}
	if changed {
		if err := tx.Save(rec); err != nil {
			return nil, fmt.Errorf("prepare sandbox %s: %w", id, err)
		}
	}
	return rec, nil
}
