package netsetup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// This file holds the mirror: the live copy of a record in its sandbox's
// runtime directory, refreshed by every save.
//
// The runtime directory is shared with the VMM container (read-write, for
// the VMM's API socket), and a launcher may make it group-writable so that
// a non-root VMM can create its socket there. So the copy is written and
// removed only through file descriptors: the runtime directory and the
// copy's directory are opened without following a symlink, the copy's
// directory (vmnic's own) is repaired when its owner or mode was changed,
// and the temp file and the rename are relative to its fd. Nothing a VMM
// does to the names in its directory can redirect a write. The copy is a
// convenience for the VMM, the record is the truth: a copy that cannot be
// written never fails a save (it is reported and the outdated copy
// removed), so a save happens completely or not at all as its caller sees
// it, and a teardown is never blocked by the runtime directory.

// MirrorDir is the subdirectory of a sandbox's runtime directory that holds
// the live copy of its record, MirrorFile. The NRI hook mounts the runtime
// directory read-write into the VMM container (for the VMM's API socket) and
// this subdirectory read-only over it: the VMM reads every update of the
// record (a mount of the record file itself would keep the file it found,
// since a save replaces the file) and cannot change it.
const MirrorDir = "netsetup"

// MirrorFile is the name of the record's live copy in MirrorDir.
const MirrorFile = "netsetup.json"

// MirrorDirIn is the directory of the record's live copy for a sandbox
// whose runtime directory is runtimeDir ("" when runtimeDir is not an
// absolute path).
func MirrorDirIn(runtimeDir string) string {
	if runtimeDir == "" || !filepath.IsAbs(runtimeDir) {
		return ""
	}
	return filepath.Join(filepath.Clean(runtimeDir), MirrorDir)
}

// MirrorPathIn is the path of the record's live copy for a sandbox whose
// runtime directory is runtimeDir: <runtimeDir>/netsetup/netsetup.json.
func MirrorPathIn(runtimeDir string) string {
	d := MirrorDirIn(runtimeDir)
	if d == "" {
		return ""
	}
	return filepath.Join(d, MirrorFile)
}

// MirrorPath is where the record's live copy is kept (see MirrorPathIn), or
// "" when the sandbox has no runtime directory.
func (s *NetSetup) MirrorPath() string { return MirrorPathIn(s.RuntimeDir) }

// mirrorStage is a copy written to a temp file in the copy's directory,
// renamed over the copy once the record itself is saved.
type mirrorStage struct {
	s     *Store
	rec   *NetSetup
	dirfd int
	tmp   string
}

// stageMirror writes data to a temp file in the copy's directory of rec,
// when rec has a runtime directory that exists (the copy's directory is
// made, 0700, when missing). It returns nil when there is nothing to
// refresh or the copy cannot be written; the latter is reported and the
// outdated copy removed where that is possible.
func (s *Store) stageMirror(rec *NetSetup, data []byte) *mirrorStage {
	if rec.MirrorPath() == "" {
		return nil
	}
	dirfd, err := s.openMirrorDir(rec, true)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log().Warn("cannot refresh the record's copy in the runtime dir", "sandbox", rec.SandboxID, "runtimeDir", rec.RuntimeDir, "error", err)
		}
		return nil
	}
	m := &mirrorStage{s: s, rec: rec, dirfd: dirfd, tmp: tempName()}
	if err := m.write(data); err != nil {
		m.fail("write", err)
		return nil
	}
	return m
}

func tempName() string {
	b := make([]byte, 8)
	rand.Read(b)
	return tempPrefix + hex.EncodeToString(b)
}

func (m *mirrorStage) write(data []byte) error {
	fd, err := unix.Openat(m.dirfd, m.tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), m.tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// commit renames the temp file over the copy.
func (m *mirrorStage) commit() {
	if m == nil {
		return
	}
	if err := unix.Renameat(m.dirfd, m.tmp, m.dirfd, MirrorFile); err != nil {
		m.fail("rename", err)
		return
	}
	unix.Close(m.dirfd)
}

// abort drops the temp file: the record was not saved.
func (m *mirrorStage) abort() {
	if m == nil {
		return
	}
	unix.Unlinkat(m.dirfd, m.tmp, 0)
	unix.Close(m.dirfd)
}

// fail reports a copy that could not be refreshed and removes the temp
// file and the outdated copy, so that the VMM never reads a stale record.
func (m *mirrorStage) fail(step string, err error) {
	unix.Unlinkat(m.dirfd, m.tmp, 0)
	unix.Unlinkat(m.dirfd, MirrorFile, 0)
	unix.Close(m.dirfd)
	m.s.log().Warn("cannot refresh the record's copy in the runtime dir: the outdated copy is removed",
		"sandbox", m.rec.SandboxID, "runtimeDir", m.rec.RuntimeDir, "step", step, "error", err)
}

// openMirrorDir opens the copy's directory of rec for *at calls: the
// runtime directory and the copy's directory are opened without following
// a symlink. A missing runtime directory is fs.ErrNotExist. With create, a
// missing copy directory is made (0700), one that is a symlink or not a
// directory is replaced by one, and one whose owner or mode changed is
// repaired; without create, a missing one is fs.ErrNotExist.
func (s *Store) openMirrorDir(rec *NetSetup, create bool) (int, error) {
	rt := filepath.Clean(rec.RuntimeDir)
	rtfd, err := unix.Open(rt, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return -1, fmt.Errorf("runtime dir %s: %w", rt, fs.ErrNotExist) // not made yet, or removed already
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
		return -1, fmt.Errorf("runtime dir %s is a symlink or not a directory: refusing to use it", rt)
	case err != nil:
		return -1, fmt.Errorf("runtime dir %s: %w", rt, err)
	}
	defer unix.Close(rtfd)
	var st unix.Stat_t
	if err := unix.Fstat(rtfd, &st); err == nil && create && (st.Mode&0o022 != 0 || int(st.Uid) != os.Geteuid()) {
		// The VMM container's directory: its launcher may open it up for a
		// non-root VMM (group-writable, or the VMM's own). Safe here, since
		// the copy goes through fds; a directory anyone may write is worth
		// a warning all the same (the VMM's socket lives there too).
		level := slog.LevelDebug
		if st.Mode&0o002 != 0 {
			level = slog.LevelWarn
		}
		s.log().Log(context.Background(), level, "runtime dir is writable by others than vmnic: the record's copy is written through its directory fds",
			"sandbox", rec.SandboxID, "runtimeDir", rt, "mode", fmt.Sprintf("%o", st.Mode&0o7777), "uid", st.Uid)
	}
	open := func() (int, error) {
		return unix.Openat(rtfd, MirrorDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	fd, err := open()
	if !create {
		if errors.Is(err, unix.ENOENT) {
			return -1, fmt.Errorf("record copy dir in %s: %w", rt, fs.ErrNotExist)
		}
		if err != nil {
			return -1, fmt.Errorf("record copy dir in %s: %w", rt, err)
		}
		return fd, nil
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		// A symlink or a file where vmnic's directory belongs: only the
		// runtime dir's other writers can have put it there.
		s.log().Warn("the record's copy dir was replaced by a symlink or a file: making it again", "sandbox", rec.SandboxID, "runtimeDir", rt)
		if err := unix.Unlinkat(rtfd, MirrorDir, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return -1, fmt.Errorf("record copy dir in %s: remove what is in its place: %w", rt, err)
		}
		fd, err = -1, unix.ENOENT
	}
	if errors.Is(err, unix.ENOENT) {
		if err := unix.Mkdirat(rtfd, MirrorDir, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("record copy dir in %s: %w", rt, err)
		}
		fd, err = open()
	}
	if err != nil {
		return -1, fmt.Errorf("record copy dir in %s: %w", rt, err)
	}
	repaired, err := repairMirrorDir(fd)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("record copy dir in %s: %w", rt, err)
	}
	if repaired != "" {
		s.log().Warn("repaired the record's copy dir", "sandbox", rec.SandboxID, "runtimeDir", rt, "was", repaired)
	}
	return fd, nil
}

// repairMirrorDir gives the copy's directory back to vmnic (its owner,
// mode 0700) when its owner or mode were changed, and says what it was
// ("" when nothing was changed).
func repairMirrorDir(fd int) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", err
	}
	was := ""
	if uid, gid := os.Geteuid(), os.Getegid(); int(st.Uid) != uid || int(st.Gid) != gid {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return "", fmt.Errorf("give it back to uid %d: %w", uid, err)
		}
		was = fmt.Sprintf("owner %d:%d ", st.Uid, st.Gid)
	}
	if st.Mode&0o7777 != 0o700 {
		if err := unix.Fchmod(fd, 0o700); err != nil {
			return "", fmt.Errorf("make it 0700 again: %w", err)
		}
		was += fmt.Sprintf("mode %o", st.Mode&0o7777)
	}
	return was, nil
}

// removeMirror removes the record's live copy (the runtime directory's
// owner removes the directories), through the copy directory's fd.
func (s *Store) removeMirror(rec *NetSetup) {
	if rec.MirrorPath() == "" {
		return
	}
	fd, err := s.openMirrorDir(rec, false)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			s.log().Warn("cannot remove the record's copy in the runtime dir", "sandbox", rec.SandboxID, "runtimeDir", rec.RuntimeDir, "error", err)
		}
		return
	}
	defer unix.Close(fd)
	if err := unix.Unlinkat(fd, MirrorFile, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		s.log().Warn("cannot remove the record's copy in the runtime dir", "sandbox", rec.SandboxID, "runtimeDir", rec.RuntimeDir, "error", err)
	}
}

// log is the store's logger (Options.Logger, SetLogger), or one that
// discards.
func (s *Store) log() *slog.Logger {
	if s.logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.logger
}
