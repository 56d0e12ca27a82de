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
// directory without a record: lock files of sandboxes that have no record,
// netns index entries whose sandbox has no record (or records another
// namespace), container index entries whose sandbox has no record (or no
// NIC of that container), and temp files of interrupted writes. Each entry
// is removed under its sandbox's lock, so a concurrent writer is never
// undercut; a lock held longer than wait is skipped. It returns what it
// removed.
func (s *Store) Prune(ctx context.Context, wait time.Duration) ([]string, error) {
	p := &pruner{s: s, ctx: ctx, wait: wait}
	if err := p.each(s.lockDir, p.lock); err != nil {
		return nil, err
	}
	if err := p.each(s.netnsDir, p.netnsEntry); err != nil {
		p.errs = append(p.errs, err)
	}
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

// lock removes the lock file of a sandbox without a record: Lock + Load
// (not found) + Unlock removes the file.
func (p *pruner) lock(dir string, e fs.DirEntry) {
	id, ok := strings.CutSuffix(e.Name(), ".lock")
	if !ok || ValidateSandboxID(id) != nil || !e.Type().IsRegular() {
		return
	}
	if _, err := p.s.read(id); !errors.Is(err, ErrNotFound) {
		return
	}
	gone, err := p.underLock(id, func(*NetSetup) {})
	if gone {
		p.removed = append(p.removed, filepath.Join(dir, e.Name()))
	}
	p.note(err)
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
	_, err = p.underLock(id, func(rec *NetSetup) {
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
	_, err := p.underLock(id, func(rec *NetSetup) {
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
// lock and reports whether the sandbox had no record (its lock file then
// goes at unlock). A lock held longer than the wait is skipped, and an
// unreadable record left for an operator: fn does not run.
func (p *pruner) underLock(id string, fn func(*NetSetup)) (bool, error) {
	lctx, cancel := context.WithTimeout(p.ctx, p.wait)
	defer cancel()
	tx, err := p.s.Lock(lctx, id)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && p.ctx.Err() == nil {
			return false, nil // busy: a live process holds it
		}
		return false, fmt.Errorf("prune %s: %w", id, err)
	}
	defer tx.Unlock()
	rec, err := tx.Load()
	switch {
	case errors.Is(err, ErrNotFound):
		fn(nil)
		return true, nil
	case err != nil:
		return false, nil // unreadable: leave it for an operator
	}
	fn(rec)
	return false, nil
}
