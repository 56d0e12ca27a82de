package hook

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/netsetup"
)

// A VM pod's runtime directory (<runtimeDir>/<sandbox-id>) is mounted
// read-write into its VMM container. On the host's /run (a tmpfs shared
// with containerd's sockets, the netns mounts and systemd) a VMM container
// could fill it; that space is not counted as the pod's ephemeral storage.
// So each runtime directory the hook makes is a tmpfs mount of its own,
// size-bounded (runtimeDirSize) with a bounded inode count. Its pages are
// charged to the memory cgroup of whoever writes them (the VMM container).
//
// Crash safety: the mount is made before the record that names it, and
// removed after the record. A mount left by a crash (no record) is found
// where any leftover runtime dir is found: at the pod's RemovePodSandbox
// (removeLeftovers), by the reconcile at every (re)connect, and by the sweep
// (a dir seen without a record in two sweeps in a row). Removal unmounts
// first (lazily, so a VMM container that still holds a bind mount of it
// keeps its own view until it exits), then removes the mount point.

// runtimeDirInodes bounds the files in a runtime dir (tmpfs nr_inodes).
const runtimeDirInodes = 1024

// runtimeDirSource names vmnic's runtime dir mounts in /proc/self/mountinfo.
const runtimeDirSource = "vmnic-runtime"

// ensureRuntimeDir creates the per-sandbox directory for the VMM's API
// socket and its netsetup/ subdirectory for the record's copy, mode 0700.
// With size > 0 the directory is a tmpfs mount of that size of its own
// (made when it is not one yet).
func ensureRuntimeDir(dir string, size uint64) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("runtime dir: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("runtime dir: %w", err)
	}
	if size > 0 {
		mounted, err := ownMount(dir)
		if err != nil {
			return err
		}
		if !mounted {
			opts := fmt.Sprintf("size=%d,nr_inodes=%d,mode=0700", size, runtimeDirInodes)
			if err := unix.Mount(runtimeDirSource, dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
				return fmt.Errorf("runtime dir %s: mount a tmpfs of %d bytes: %w", dir, size, err)
			}
		}
	}
	for _, d := range []string{dir, netsetup.MirrorDirIn(dir)} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("runtime dir: %w", err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return fmt.Errorf("runtime dir: %w", err)
		}
	}
	return nil
}

// ownMount says whether dir is a mount point (another device than its
// parent's) holding a tmpfs. A mount of any other file system there is an
// error: it is not vmnic's to use.
func ownMount(dir string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return false, fmt.Errorf("runtime dir %s: %w", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, fmt.Errorf("runtime dir %s is not a directory: refusing to use it", dir)
	}
	if err := unix.Lstat(filepath.Dir(dir), &parent); err != nil {
		return false, fmt.Errorf("runtime dir %s: %w", dir, err)
	}
	if st.Dev == parent.Dev {
		return false, nil
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return false, fmt.Errorf("runtime dir %s: %w", dir, err)
	}
	if sfs.Type != unix.TMPFS_MAGIC {
		return false, fmt.Errorf("runtime dir %s is a mount of another file system (type %#x): refusing to use it", dir, sfs.Type)
	}
	return true, nil
}

// removeRuntimeDir removes a runtime dir: every mount on it first, then
// the directory and what it holds. A missing dir is fine.
func removeRuntimeDir(dir string) error {
	if err := unmountAll(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove runtime dir: %w", err)
	}
	return nil
}

// unmountAll detaches the mounts stacked on dir (a crash and a retry may
// have left more than one). It never follows a symlink.
func unmountAll(dir string) error {
	for i := 0; i < 16; i++ {
		err := unix.Unmount(dir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not (or no longer) a mount point, or gone
		default:
			return fmt.Errorf("unmount runtime dir %s: %w", dir, err)
		}
	}
	return fmt.Errorf("unmount runtime dir %s: still mounted after 16 unmounts", dir)
}

// removeEmptyRuntimeDir undoes ensureRuntimeDir when nothing was put in the
// directory (only its empty netsetup/ subdirectory), so that a failed
// prepare never removes a live sandbox's VMM socket.
func removeEmptyRuntimeDir(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.Name() != netsetup.MirrorDir {
			return
		}
		if sub, err := os.ReadDir(filepath.Join(dir, e.Name())); err != nil || len(sub) > 0 {
			return
		}
	}
	_ = removeRuntimeDir(dir)
}
