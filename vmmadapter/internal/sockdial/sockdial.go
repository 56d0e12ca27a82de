// Package sockdial dials a VMM's API socket so that the dial cannot be
// redirected. The VMM container owns the directory of its socket and can
// put anything there at any time (a symlink to another sandbox's socket,
// to a container runtime's), so a check of the path followed by a dial of
// the path has a gap between the two. Dial closes it: it opens the
// socket's directory, checks where that directory really is (through its
// fd), opens the socket itself with O_PATH|O_NOFOLLOW, checks that fd is
// a socket, and connects to /proc/self/fd/<fd>: the kernel connects to
// exactly the inode that was checked, whatever the name points at by then.
//
// Every adapter (Cloud Hypervisor, Firecracker, QEMU) dials through it;
// vmmadapter.Options.SocketDirs confines it.
package sockdial

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/vmmadapter"
)

// ErrRefused is wrapped (with vmmadapter.ErrUnavailable) by Dial's error
// for a socket it will not dial: a symlink where the socket should be, or
// a directory outside the allowed ones.
var ErrRefused = errors.New("VMM API socket refused")

// Dial connects to the unix socket at path. When o.SocketDirs is not nil,
// the socket's directory, as the kernel resolved it when it was opened,
// must be one of them (symlinks resolved) or below one; when o.SocketOwner
// is set, the socket must belong to that uid. The last element of path must
// be the socket itself, not a symlink. Errors are *net.OpError with Op
// "dial" (a missing socket, a refused connection: as net.Dial gives them;
// a refused socket wraps ErrRefused and vmmadapter.ErrUnavailable).
func Dial(ctx context.Context, path string, o vmmadapter.Options) (net.Conn, error) {
	dirs := o.SocketDirs
	fail := func(err error) error {
		return &net.OpError{Op: "dial", Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"}, Err: err}
	}
	refuse := func(format string, args ...any) error {
		return fail(fmt.Errorf("%w: %w: %s", vmmadapter.ErrUnavailable, ErrRefused, fmt.Sprintf(format, args...)))
	}
	if path == "" {
		return nil, fail(errors.New("empty socket path"))
	}
	dir, name := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if name == "" || name == "." || name == ".." {
		return nil, refuse("%q does not name a socket", path)
	}
	dirfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fail(os.NewSyscallError("open", err))
	}
	defer unix.Close(dirfd)
	if dirs != nil {
		real, err := os.Readlink(fdPath(dirfd))
		if err != nil {
			return nil, refuse("cannot tell where its directory is: %v", err)
		}
		if !vmmadapter.WithinSocketDirs(real, dirs) {
			return nil, refuse("its directory %s is not within an allowed one (%s)", real, strings.Join(dirs, ", "))
		}
	}
	sfd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fail(os.NewSyscallError("open", err))
	}
	defer unix.Close(sfd)
	var st unix.Stat_t
	if err := unix.Fstat(sfd, &st); err != nil {
		return nil, fail(os.NewSyscallError("fstat", err))
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFSOCK:
	case unix.S_IFLNK:
		return nil, refuse("%s is a symlink: not dialled", path)
	default:
		return nil, fail(os.NewSyscallError("connect", unix.ENOTSOCK))
	}
	if o.SocketOwner != nil && st.Uid != *o.SocketOwner {
		return nil, refuse("%s belongs to uid %d, the VMM's socket to uid %d", path, st.Uid, *o.SocketOwner)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", fdPath(sfd))
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			oe.Addr = &net.UnixAddr{Name: path, Net: "unix"}
			return nil, oe
		}
		return nil, fail(err)
	}
	return c, nil
}

func fdPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }
