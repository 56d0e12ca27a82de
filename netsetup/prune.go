package netsetup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Prune removes what a process killed half way can leave in the state
// directory without a record: netns index entries whose sandbox has no record (or records another
// namespace), container index entries whose sandbox has no record (or no
// NIC of that container), and temp files of interrupted writes; and the
// per-sandbox lock files an older vmnic made (locks/, see legacyLockDir).
// Each entry
// is removed under its sandbox's lock, so a concurrent writer is never
// undercut; a lock held longer than wait is skipped. It returns what it
// removed.
func (s *Store) Prune(ctx context.Context, wait time.Duration) ([]string, error) {
	p := &pruner{s: s, ctx: ctx, wait: wait}
	if err := p.each(s.netnsDir, p.netnsEntry); err != nil {
		return nil, err
	}
	p.removed = append(p.removed, s.pruneLegacyLocks()...)
	if err := p.each(s.containerDir, p.containerEntry); err != nil && !errors.Is(err, fs.ErrNotExist) {
		p.errs = append(p.errs, err)
	}
	p.pruneCloneLocks()
	// Temp files of writes killed before their rename.
	for _, d := range []string{s.sandboxDir, s.netnsDir, s.containerDir, s.forwardDir} {
		p.removed = append(p.removed, pruneTemps(d)...)
	}
	return p.removed, errors.Join(p.errs...)
}

// pruner collects what one Prune removed and the errors it met.
type pruner struct {
	s       *Store
	ctx     context.Context
	wait    time.Duration
	removed []string
	errs    []error
}

// each runs fn on every entry of dir but temp files.
func (p *pruner) each(dir string, fn func(dir string, e fs.DirEntry)) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("prune: %w", err)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), tempPrefix) {
			fn(dir, e)
		}
	}
	return nil
}

// remove removes path, noting it when it went.
func (p *pruner) remove(path string) {
	if os.Remove(path) == nil {
		p.removed = append(p.removed, path)
	}
}

// netnsEntry removes a netns index entry that holds no valid id, or whose
// sandbox does not record that namespace.
func (p *pruner) netnsEntry(dir string, e fs.DirEntry) {
	path := filepath.Join(dir, e.Name())
	nsid, ok := parseIndexName(e.Name())
	if !ok {
		return
	}
	data, err := readNoFollow(path)
	if err != nil {
		return
	}
	id := entryID(data)
	if id != "" {
		if rec, err := p.s.read(id); err == nil && rec.NetnsID != nil && *rec.NetnsID == nsid {
			return
		}
	}
	if p.s.linkedRecordID(path) != "" {
		// A name of a record's file in place: the entry is that record's,
		// and when the file is damaged (the entry with it), it belongs to
		// the record's recovery, which looks for the netns by it.
		return
	}
	if id == "" {
		p.remove(path)
		return
	}
	err = p.underLock(id, func(rec *NetSetup) {
		if (rec == nil || rec.NetnsID == nil || *rec.NetnsID != nsid) && readEntry(path) == id && p.s.linkedRecordID(path) == "" {
			p.remove(path)
		}
	})
	p.note(err)
}

// containerEntry removes a container index entry whose sandbox has no
// record, or no NIC of that container.
func (p *pruner) containerEntry(dir string, e fs.DirEntry) {
	cid := e.Name()
	id := p.s.ContainerSandbox(cid)
	if id == "" {
		return
	}
	err := p.underLock(id, func(rec *NetSetup) {
		path := p.s.containerIndexPath(cid)
		p.s.UnindexContainers(id, rec, cid)
		if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
			p.removed = append(p.removed, path)
		}
	})
	p.note(err)
}

func (p *pruner) note(err error) {
	if err != nil {
		p.errs = append(p.errs, err)
	}
}

// underLock runs fn on sandbox id's record (nil when it has none) under its
// lock. A lock held longer than the wait is skipped, and an unreadable
// record left for an operator: fn does not run.
func (p *pruner) underLock(id string, fn func(*NetSetup)) error {
	lctx, cancel := context.WithTimeout(p.ctx, p.wait)
	defer cancel()
	tx, err := p.s.Lock(lctx, id)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && p.ctx.Err() == nil {
			return nil // busy: a live process holds it
		}
		return fmt.Errorf("prune %s: %w", id, err)
	}
	defer tx.Unlock()
	rec, err := tx.Load()
	switch {
	case errors.Is(err, ErrNotFound):
		fn(nil)
		return nil
	case err != nil:
		return nil // unreadable: leave it for an operator
	}
	fn(rec)
	return nil
}
