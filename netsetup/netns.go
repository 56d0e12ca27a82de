package netsetup

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// nsfsMagic is NSFS_MAGIC from linux/magic.h; nsGetNSType is NS_GET_NSTYPE.
const (
	nsfsMagic   = 0x6e736673
	nsGetNSType = 0xb703
)

// IdentifyNetns checks that path is a network namespace (an nsfs file, as a
// bind mount under /var/run/netns or /proc/<pid>/ns/net) and returns its
// identity. Any other file, or another kind of namespace, is refused.
func IdentifyNetns(path string) (NetnsID, error) {
	if path == "" {
		return NetnsID{}, fmt.Errorf("netns path is empty")
	}
	// Look before opening: opening a FIFO blocks for ever, and opening a
	// device can act on it. A namespace file is a regular file on nsfs.
	var pre unix.Stat_t
	if err := unix.Stat(path, &pre); err != nil {
		return NetnsID{}, fmt.Errorf("netns %s: %w", path, err)
	}
	if pre.Mode&unix.S_IFMT != unix.S_IFREG {
		return NetnsID{}, fmt.Errorf("netns %s is not a network namespace (not an nsfs file)", path)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil {
		return NetnsID{}, fmt.Errorf("netns %s: %w", path, err)
	}
	if sfs.Type != nsfsMagic {
		return NetnsID{}, fmt.Errorf("netns %s is not a network namespace (not an nsfs file)", path)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return NetnsID{}, fmt.Errorf("netns %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return NetnsID{}, fmt.Errorf("netns %s: %w", path, err)
	}
	if sfs.Type != nsfsMagic {
		return NetnsID{}, fmt.Errorf("netns %s is not a network namespace (not an nsfs file)", path)
	}
	kind, err := unix.IoctlRetInt(fd, nsGetNSType)
	if err != nil {
		return NetnsID{}, fmt.Errorf("netns %s: namespace type: %w", path, err)
	}
	if kind != unix.CLONE_NEWNET {
		return NetnsID{}, fmt.Errorf("netns %s is a namespace, but not a network namespace", path)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return NetnsID{}, fmt.Errorf("netns %s: %w", path, err)
	}
	return NetnsID{Dev: st.Dev, Ino: st.Ino}, nil
}
