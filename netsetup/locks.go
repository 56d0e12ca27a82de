package netsetup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// This file holds the locks of the state dir: every lock is an flock on a
// file, and every wait for one ends when its context is done.

// Lock takes the sandbox's lock, waiting until ctx is done.
func (s *Store) Lock(ctx context.Context, id string) (*Tx, error) {
	if err := ValidateSandboxID(id); err != nil {
		return nil, err
	}
	f, err := lockFile(ctx, s.lockPath(id), false)
	if err != nil {
		return nil, fmt.Errorf("lock sandbox %s: %w", id, err)
	}
	return &Tx{s: s, id: id, lock: f}, nil
}

func (s *Store) lockPath(id string) string { return filepath.Join(s.lockDir, id+".lock") }

// Unlock releases the lock. When the sandbox has no record (after Delete, or
// a Load that found none and no Save since) it also removes the lock file,
// so nothing of the sandbox stays in the state directory.
func (t *Tx) Unlock() {
	if t.lock == nil {
		return
	}
	if t.gone {
		os.Remove(t.s.lockPath(t.id))
	}
	t.lock.Close()
	t.lock = nil
}

// lockFile opens (creating, 0600, never through a symlink) and flocks path,
// waiting until ctx is done. It retries when the file it locked was unlinked
// or replaced meanwhile (the last user of a lock removes its file). With
// mkdir, a missing parent directory (removed by its last user when it was
// empty) is made again (0700), and it must be private (see privateDir).
func lockFile(ctx context.Context, path string, mkdir bool) (*os.File, error) {
	wait := 200 * time.Microsecond
	for attempt := 0; ; attempt++ {
		if mkdir {
			dir := filepath.Dir(path)
			if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return nil, err
			}
			if err := privateDir(dir, "state dir"); err != nil && !(errors.Is(err, fs.ErrNotExist) && attempt < 100) {
				return nil, err
			}
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if mkdir && errors.Is(err, fs.ErrNotExist) && attempt < 100 {
			continue // the directory was removed meanwhile
		}
		if err != nil {
			return nil, err
		}
		for {
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if err == nil {
				break
			}
			if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
				f.Close()
				return nil, err
			}
			select {
			case <-ctx.Done():
				f.Close()
				return nil, fmt.Errorf("held by another process: %w", ctx.Err())
			case <-time.After(wait):
			}
			if wait < 20*time.Millisecond {
				wait *= 2
			}
		}
		var held, now unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &held); err != nil {
			f.Close()
			return nil, err
		}
		if err := unix.Lstat(path, &now); err == nil && now.Dev == held.Dev && now.Ino == held.Ino {
			return f, nil
		}
		f.Close() // unlinked or replaced while we waited: lock the current file
	}
}
