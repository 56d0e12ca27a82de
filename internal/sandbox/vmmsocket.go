package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmnic/vmnic/vmmadapter"
)

// DefaultVMMSocketDirs are the directories VMM API sockets may live in
// unless configured otherwise (the plugin's "vmmSocketDirs", vmnicctl's
// --vmm-socket-dirs, the NRI hook's runtimeDir, and VMMSocketDirsEnv).
var DefaultVMMSocketDirs = []string{"/run/vmnic", "/var/lib/vmnic"}

// VMMSocketDirsEnv names more allowed directories, ':'-separated; the CNI
// plugin and vmnicctl read it (for launchers and tests that keep sockets
// elsewhere).
const VMMSocketDirsEnv = "VMNIC_VMM_SOCKET_DIRS"

// ErrSocketNotAllowed is wrapped by errors about a VMM API socket outside
// the allowed directories: vmnic never dials it.
var ErrSocketNotAllowed = errors.New("VMM API socket is outside the allowed directories")

// SocketDirs is the allowed-directory list of a program: the defaults, the
// configured ones and those of VMMSocketDirsEnv.
func SocketDirs(configured ...string) []string {
	dirs := append([]string(nil), DefaultVMMSocketDirs...)
	dirs = append(dirs, configured...)
	for _, d := range strings.Split(os.Getenv(VMMSocketDirsEnv), ":") {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// CheckVMMSocket confines a VMM API socket path to dirs: it must be an
// absolute, clean path of printable characters whose directory, with every
// symlink resolved, is one of dirs (resolved too) or below one, and must
// not itself be a symlink. This keeps vmnic from sending requests to any
// other socket on the host (a container runtime's, a database's) named by a
// mistaken flag or a tampered record.
func CheckVMMSocket(path string, dirs []string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: %q: %s (allowed: %s)", ErrSocketNotAllowed, path, why, strings.Join(dirs, ", "))
	}
	switch {
	case path == "":
		return bad("empty")
	case !filepath.IsAbs(path):
		return bad("not an absolute path")
	case filepath.Clean(path) != path:
		return bad("not a clean path (\"..\", \"//\" or a trailing \"/\")")
	case len(path) >= 108:
		return bad("longer than a unix socket path can be")
	}
	for _, r := range path {
		if r < 0x20 || r == 0x7f {
			return bad("contains a control character")
		}
	}
	parent, err := filepath.EvalSymlinks(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("VMM API socket %s: %w: %w", path, vmmadapter.ErrUnavailable, err)
	}
	if !vmmadapter.WithinSocketDirs(parent, dirs) {
		return bad("its directory " + parent + " is not within an allowed one")
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil // the dial says the VMM is not there
	case err != nil:
		return fmt.Errorf("VMM API socket %s: %w", path, err)
	case fi.Mode()&fs.ModeSymlink != 0:
		return bad("a symlink")
	}
	return nil
}
