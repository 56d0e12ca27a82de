package netsetup

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// This file holds the locks of the state dir. A sandbox's lock is an OFD
// byte-range lock (fcntl F_OFD_SETLK) on one byte of the shared lock file
// <stateDir>/sandboxes.lock, at an offset from a 63-bit hash of the sandbox
// id: taking it makes no file, so a new sandbox costs no inode for its lock.
// Two ids whose hashes meet share a byte, which only makes those two
// sandboxes wait on each other. OFD locks belong to the open file
// description (each Lock opens the file again, so two goroutines of one
// process exclude each other as two processes do) and go with it when the
// process dies, as an flock does. The bridge-forward locks are flocks on a
// file per bridge (lockFile). Every wait for a lock ends when its context
// is done.

// SandboxLockFile is the name of the shared lock file in the state dir:
// it stays there, empty, when no sandbox is left (like the directories).
const SandboxLockFile = "sandboxes.lock"

// legacyLockDir is where vmnic before the shared lock file kept one flock
// file per sandbox (locks/<id>.lock). Nothing locks those files any more:
// Prune removes them, and the directory with the last.
const legacyLockDir = "locks"

// lockOffset is the byte of the shared lock file that is sandbox id's lock.
func lockOffset(id string) int64 {
	h := fnv.New64a()
	h.Write([]byte(id))
	return int64(h.Sum64() & (1<<63 - 1))
}

// Lock takes the sandbox's lock, waiting until ctx is done.
func (s *Store) Lock(ctx context.Context, id string) (*Tx, error) {
	if err := ValidateSandboxID(id); err != nil {
		return nil, err
	}
	f, err := s.lockRange(ctx, lockOffset(id))
	if err != nil {
		return nil, fmt.Errorf("lock sandbox %s: %w", id, err)
	}
	return &Tx{s: s, id: id, lock: f}, nil
}

func (s *Store) sandboxLockPath() string { return filepath.Join(s.dir, SandboxLockFile) }

// Unlock releases the lock (closing its file description releases it).
func (t *Tx) Unlock() {
	if t.lock == nil {
		return
	}
	t.lock.Close()
	t.lock = nil
}

// openLockFile opens (creating, 0600, never through a symlink) the shared
// lock file: a new open file description, which is what an OFD lock is
// held by.
func (s *Store) openLockFile() (*os.File, error) {
	f, err := os.OpenFile(s.sandboxLockPath(), os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("lock file %s is a symlink: refusing to use it", s.sandboxLockPath())
	}
	return f, err
}

// lockRange takes the OFD write lock of one byte at off of the shared lock
// file, polling (so that ctx can end the wait; F_OFD_SETLKW cannot be
// interrupted by it). It retries on the current file when the one it locked
// was unlinked or replaced meanwhile (an operator's doing: vmnic never
// removes it).
func (s *Store) lockRange(ctx context.Context, off int64) (*os.File, error) {
	wait := 200 * time.Microsecond
	for attempt := 0; ; attempt++ {
		f, err := s.openLockFile()
		if err != nil {
			return nil, err
		}
		err = pollLock(ctx, &wait, func() error {
			lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: off, Len: 1}
			if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
				return fmt.Errorf("fcntl F_OFD_SETLK %s: %w", s.sandboxLockPath(), err)
			}
			return nil
		}, unix.EAGAIN, unix.EACCES, unix.EINTR)
		if err != nil {
			f.Close()
			return nil, err
		}
		if sameFile(f, s.sandboxLockPath()) {
			return f, nil
		}
		f.Close() // unlinked or replaced while we waited: lock the current file
		if attempt >= 100 {
			return nil, fmt.Errorf("lock file %s keeps being replaced", s.sandboxLockPath())
		}
	}
}

// pollLock calls try until it takes its lock, waiting between tries (from
// *wait, doubling up to 20 ms) until ctx is done: neither flock nor
// F_OFD_SETLKW can be interrupted by a context, hence the polling. An error
// of try that is none of busy ends it at once and is returned.
func pollLock(ctx context.Context, wait *time.Duration, try func() error, busy ...unix.Errno) error {
	for {
		err := try()
		if err == nil {
			return nil
		}
		if !slices.ContainsFunc(busy, func(e unix.Errno) bool { return errors.Is(err, e) }) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("held by another process: %w", ctx.Err())
		case <-time.After(*wait):
		}
		if *wait < 20*time.Millisecond {
			*wait *= 2
		}
	}
}

// sameFile says whether path still names the file open as f.
func sameFile(f *os.File, path string) bool {
	var held, now unix.Stat_t
	if unix.Fstat(int(f.Fd()), &held) != nil {
		return false
	}
	return unix.Lstat(path, &now) == nil && now.Dev == held.Dev && now.Ino == held.Ino
}

// lockFile opens (creating, 0600, never through a symlink) and flocks path,
// waiting until ctx is done: the lock of a bridge's FORWARD-rule users. It
// retries when the file it locked was unlinked or replaced meanwhile (the
// last user of a lock removes its file). With mkdir, a missing parent
// directory (removed by its last user when it was empty) is made again
// (0700), and it must be private (see privateDir).
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
		err = pollLock(ctx, &wait, func() error {
			return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		}, unix.EWOULDBLOCK, unix.EINTR)
		if err != nil {
			f.Close()
			return nil, err
		}
		if sameFile(f, path) {
			return f, nil
		}
		f.Close() // unlinked or replaced while we waited: lock the current file
	}
}

// pruneLegacyLocks removes the per-sandbox lock files of an older vmnic
// (locks/<id>.lock) and their directory once it is empty, and returns what
// it removed. No vmnic of this version locks them, so none is in use.
func (s *Store) pruneLegacyLocks() []string {
	dir := filepath.Join(s.dir, legacyLockDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var removed []string
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".lock")
		if !ok || ValidateSandboxID(id) != nil || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		// An older vmnic still running (an upgrade that has not replaced
		// every program yet) may hold it: only an unheld file goes, and the
		// directory stays, since an older Lock opens files in it without
		// making it.
		f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil && os.Remove(p) == nil {
			removed = append(removed, p)
		}
		f.Close()
	}
	return removed
}
