package netsetup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Prune removes what a process killed half way can leave in the state
// directory without a record: lock files of sandboxes that have no record,
// netns index entries whose sandbox has no record (or records another
// namespace), and temp files of interrupted writes. Each entry is removed
// under its sandbox's lock, so a concurrent writer is never undercut; a
// lock held longer than wait is skipped. It returns what it removed.
func (s *Store) Prune(ctx context.Context, wait time.Duration) ([]string, error) {
	var removed []string
	var errs []error

	// Lock files: Lock + Load (not found) + Unlock removes the file.
	locks, err := os.ReadDir(s.lockDir)
	if err != nil {
		return nil, fmt.Errorf("prune: %w", err)
	}
	for _, e := range locks {
		id, ok := strings.CutSuffix(e.Name(), ".lock")
		if !ok || ValidateSandboxID(id) != nil || !e.Type().IsRegular() {
			continue
		}
		if _, err := s.read(id); !errors.Is(err, ErrNotFound) {
			continue
		}
		gone, err := s.underLock(ctx, wait, id, func(*NetSetup) error { return nil })
		if err != nil {
			errs = append(errs, err)
		} else if gone {
			removed = append(removed, filepath.Join(s.lockDir, e.Name()))
		}
	}

	// Netns index entries.
	idx, err := os.ReadDir(s.netnsDir)
	if err != nil {
		return removed, errors.Join(append(errs, fmt.Errorf("prune: %w", err))...)
	}
	for _, e := range idx {
		p := filepath.Join(s.netnsDir, e.Name())
		if strings.HasPrefix(e.Name(), ".tmp-") {
			if staleTemp(p) && os.Remove(p) == nil {
				removed = append(removed, p)
			}
			continue
		}
		nsid, ok := parseIndexName(e.Name())
		if !ok {
			continue
		}
		data, err := readNoFollow(p)
		if err != nil {
			continue
		}
		id := strings.TrimSpace(string(data))
		if ValidateSandboxID(id) != nil {
			if os.Remove(p) == nil {
				removed = append(removed, p)
			}
			continue
		}
		if rec, err := s.read(id); err == nil && rec.NetnsID != nil && *rec.NetnsID == nsid {
			continue
		}
		_, err = s.underLock(ctx, wait, id, func(rec *NetSetup) error {
			if rec != nil && rec.NetnsID != nil && *rec.NetnsID == nsid {
				return nil
			}
			if data, err := readNoFollow(p); err == nil && strings.TrimSpace(string(data)) == id {
				if os.Remove(p) == nil {
					removed = append(removed, p)
				}
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}

	// Temp files of writes killed before their rename.
	if ents, err := os.ReadDir(s.sandboxDir); err == nil {
		for _, e := range ents {
			p := filepath.Join(s.sandboxDir, e.Name())
			if strings.HasPrefix(e.Name(), ".tmp-") && staleTemp(p) && os.Remove(p) == nil {
				removed = append(removed, p)
			}
		}
	}
	return removed, errors.Join(errs...)
}

// underLock runs fn on sandbox id's record (nil when it has none) under its
// lock and reports whether the sandbox had no record (its lock file then
// goes at unlock).
func (s *Store) underLock(ctx context.Context, wait time.Duration, id string, fn func(*NetSetup) error) (bool, error) {
	lctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	tx, err := s.Lock(lctx, id)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return false, nil // busy: a live process holds it
		}
		return false, fmt.Errorf("prune %s: %w", id, err)
	}
	defer tx.Unlock()
	rec, err := tx.Load()
	switch {
	case errors.Is(err, ErrNotFound):
		return true, fn(nil)
	case err != nil:
		return false, nil // unreadable: leave it for an operator
	}
	return false, fn(rec)
}

// staleTemp: a temp file no live write can still be using (older than a
// minute; a write takes milliseconds).
func staleTemp(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && time.Since(fi.ModTime()) > time.Minute
}

func parseIndexName(name string) (NetnsID, bool) {
	a, b, ok := strings.Cut(name, "-")
	if !ok {
		return NetnsID{}, false
	}
	dev, err1 := strconv.ParseUint(a, 10, 64)
	ino, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil {
		return NetnsID{}, false
	}
	return NetnsID{Dev: dev, Ino: ino}, true
}
