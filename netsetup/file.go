package netsetup

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// This file holds the file primitives every part of the store writes and
// reads through: private directories, O_NOFOLLOW reads and atomic writes.

// tempPrefix starts the name of every temp file an atomic write makes.
const tempPrefix = ".tmp-"

// ensurePrivateDir makes d (0700) when it is missing and checks it (see
// privateDir).
func ensurePrivateDir(d string) error {
	if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(d), 0o755); err != nil {
			return fmt.Errorf("state dir %s: %w", d, err)
		}
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("state dir %s: %w", d, err)
		}
	}
	return privateDir(d, "state dir")
}

// privateDir checks that dir is a directory (not a symlink) that group and
// others cannot write; a missing dir gives an error matching fs.ErrNotExist.
func privateDir(dir, what string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s %s is a symlink: refusing to use it", what, dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s %s is not a directory", what, dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s %s has mode %o: it must not be writable by group or others", what, dir, fi.Mode().Perm())
	}
	return nil
}

// notRecordError is readNoFollow's error for a path that is not a regular
// file (a symlink, a directory, a device…).
type notRecordError struct{ path, why string }

func (e *notRecordError) Error() string { return e.path + " " + e.why }

// readNoFollow reads the regular file at path, refusing a symlink.
func readNoFollow(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, &notRecordError{path, "is a symlink: refusing to follow it"}
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &notRecordError{path, "is not a regular file (" + fi.Mode().Type().String() + ")"}
	}
	return io.ReadAll(f)
}

// writeAtomic writes data to path through a temp file in dir: write, rename
// (with durable: fsync before the rename and of dir after it). The file is
// 0600 and never written through a symlink.
func writeAtomic(dir, path string, data []byte, durable bool) error {
	return writeAtomicThen(dir, path, data, durable, nil)
}

// writeAtomicThen is writeAtomic that runs then (when not nil) with a link
// func, which gives the written file another name (a hard link), before the
// file is moved to path; an error from then writes nothing at path.
func writeAtomicThen(dir, path string, data []byte, durable bool, then func(link func(newpath string) error) error) error {
	return writeAtomicSpare(dir, path, data, durable, nil, then)
}

// writeAtomicSpare is writeAtomicThen that, with spare (an unnamed file of
// dir made ahead, see spares.go), writes into spare and gives it the temp
// name, instead of making a temp file: the inode was allocated off the
// caller's path.
func writeAtomicSpare(dir, path string, data []byte, durable bool, spare *os.File, then func(link func(newpath string) error) error) error {
	var tmp *os.File
	var tmpName string
	var err error
	if spare != nil {
		// Fill the spare before it gets its temp name: the write gives it a
		// fresh mtime (a spare may have been made hours ago, and linking it
		// does not touch its mtime), so a concurrent prune, which removes
		// temp files older than a minute, cannot take the name of a write
		// in progress.
		tmp = spare
		if _, err = tmp.Write(data); err == nil && durable {
			err = tmp.Sync()
		}
		if err == nil {
			tmpName, err = nameSpare(dir, spare)
		}
	} else {
		tmp, err = os.CreateTemp(dir, tempPrefix+"*")
		if err == nil {
			tmpName = tmp.Name()
		}
	}
	if err != nil {
		tmp.Close()
		return err
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if spare == nil {
		if err := tmp.Chmod(0o600); err != nil {
			return err
		}
		if _, err := tmp.Write(data); err != nil {
			return err
		}
		if durable {
			if err := tmp.Sync(); err != nil {
				return err
			}
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if then != nil {
		if err := then(func(newpath string) error { return os.Link(tmpName, newpath) }); err != nil {
			return err
		}
	}
	if err := replaceFile(tmpName, path); err != nil {
		return err
	}
	ok = true
	if !durable {
		return nil
	}
	return syncDir(dir)
}

// nameSpare links spare in dir under a new temp name and returns the name.
func nameSpare(dir string, spare *os.File) (string, error) {
	for i := 0; ; i++ {
		name := filepath.Join(dir, tempPrefix+strconv.FormatUint(uint64(rand.Uint32()), 10))
		err := linkFD(spare, name)
		if err == nil || !errors.Is(err, fs.ErrExist) || i >= 100 {
			return name, err
		}
	}
}

// writeNewThen is writeAtomicThen for a path that has no file yet (the
// first version of a record, written under its lock): the data is written
// to an unnamed file in dir (O_TMPFILE; spare, when not nil, is one made
// ahead, see spares.go) and linked in at path, so the file appears whole or
// not at all, with no temp name to make and rename away: one inode, no
// second directory entry, and nothing a crash can leave behind (an unnamed
// file goes with its last fd). then links the same file first. When path
// exists after all, or dir's filesystem has no O_TMPFILE, it is
// writeAtomicThen.
func writeNewThen(dir, path string, data []byte, durable bool, spare *os.File, then func(link func(newpath string) error) error) error {
	f := spare
	if f == nil {
		var err error
		if f, err = openUnnamed(dir); err != nil {
			// EOPNOTSUPP: the filesystem has no O_TMPFILE; EISDIR, EINVAL: the
			// kernel has none.
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
				return writeAtomicThen(dir, path, data, durable, then)
			}
			return err
		}
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return err
	}
	if durable {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	link := func(newpath string) error { return linkFD(f, newpath) }
	if then != nil {
		if err := then(link); err != nil {
			return err
		}
	}
	if err := link(path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return writeAtomicThen(dir, path, data, durable, then)
		}
		return err
	}
	if !durable {
		return nil
	}
	return syncDir(dir)
}

// linkFD gives the file open as f the name newpath (linkat with
// AT_EMPTY_PATH, which needs CAP_DAC_READ_SEARCH; without it through
// /proc/self/fd, see linkat(2)).
func linkFD(f *os.File, newpath string) error {
	err := unix.Linkat(int(f.Fd()), "", unix.AT_FDCWD, newpath, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
		err = unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.AT_FDCWD, newpath, unix.AT_SYMLINK_FOLLOW)
	}
	if err != nil {
		return &os.LinkError{Op: "link", Old: f.Name(), New: newpath, Err: err}
	}
	return nil
}

// writeAtomicInVolatileDir is writeAtomic (not durable) into dir, a
// sub-directory of the state dir that its last user removes when it is
// empty: dir is made (0700) when missing, again when it was removed
// meanwhile, and must be private (see privateDir).
func writeAtomicInVolatileDir(dir, path string, data []byte) error {
	for attempt := 0; ; attempt++ {
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		err := privateDir(dir, "state dir")
		if err == nil {
			err = writeAtomic(dir, path, data, false)
		}
		if errors.Is(err, fs.ErrNotExist) && attempt < 10 {
			continue // removed as empty meanwhile
		}
		return err
	}
}

// replaceFile moves tmp to path atomically. An existing path is swapped
// with tmp (RENAME_EXCHANGE) and the old content, now at tmp, removed: a
// plain rename over an existing file makes ext4 start writing the new file's
// data back at once (auto_da_alloc), which costs more than the exchange.
// Once swapped the write is done: an old copy that cannot be removed is a
// stale temp file, which Prune removes.
func replaceFile(tmp, path string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE)
	if err == nil {
		os.Remove(tmp)
		return nil
	}
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		return os.Rename(tmp, path)
	}
	return &os.LinkError{Op: "exchange", Old: tmp, New: path, Err: err}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTSUP) {
		return err
	}
	return nil
}

// pruneTemps removes the stale temp files of interrupted writes in dir and
// returns their paths.
func pruneTemps(dir string) []string {
	var removed []string
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), tempPrefix) && staleTemp(p) && os.Remove(p) == nil {
			removed = append(removed, p)
		}
	}
	return removed
}

// staleTemp: a temp file no live write can still be using (older than a
// minute; a write takes milliseconds).
func staleTemp(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && time.Since(fi.ModTime()) > time.Minute
}
