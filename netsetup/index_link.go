package netsetup

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// A new sandbox's first Save makes two files besides its record: the lock
// file (made by Lock) and the netns index entry. Making a file (an inode)
// is the costly part of a write on ext4, so the index entry is, where it
// can be, a second name of the lock file the Tx holds: the lock file gets
// the entry's content (the sandbox id and a newline) and is hard-linked
// under the entry's name (linkat of the locked fd, so it is that very
// file). Readers see an ordinary entry. Removing the entry unlinks only
// its name; the lock file goes at Unlock as before. When the name is taken
// (an entry of another sandbox, or a stale one) or the link cannot be made,
// the entry is written as a file of its own (indexNetns), which replaces
// it atomically.

// indexNetns points the netns index entry of nsid at t's sandbox.
func (t *Tx) indexNetns(nsid NetnsID) error {
	path := t.s.netnsIndexPath(nsid)
	if t.linkIndex(path) == nil {
		return nil
	}
	return t.s.indexNetns(nsid, t.id)
}

var errNotLocked = errors.New("not locked")

// linkIndex makes path a name of t's lock file, holding the id.
func (t *Tx) linkIndex(path string) error {
	if t.lock == nil {
		return errNotLocked
	}
	if _, err := os.Lstat(path); err == nil {
		return os.ErrExist // replaced atomically by indexNetns instead
	}
	data := []byte(t.id + "\n")
	if _, err := t.lock.WriteAt(data, 0); err != nil {
		return err
	}
	if err := t.lock.Truncate(int64(len(data))); err != nil {
		return err
	}
	err := unix.Linkat(int(t.lock.Fd()), "", unix.AT_FDCWD, path, unix.AT_EMPTY_PATH)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EPERM) {
		// AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH: link by name, which
		// Lock checked is the locked file (and nobody unlinks a lock
		// file without holding it).
		err = os.Link(t.s.lockPath(t.id), path)
	}
	return err
}
