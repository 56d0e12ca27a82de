package netsetup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// This file holds the mirror: the live copy of a record in its sandbox's
// runtime directory, refreshed by every save.

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

// writeMirror atomically refreshes the record's copy in its runtime
// directory, when it has one that exists; the copy's subdirectory is made
// (0700) when missing. Both must be real directories (not symlinks) that are
// not writable by group or others.
func writeMirror(rec *NetSetup, data []byte) error {
	p := rec.MirrorPath()
	if p == "" {
		return nil
	}
	mdir := filepath.Dir(p)
	rtDir := filepath.Dir(mdir)
	if err := privateDir(rtDir, "runtime dir"); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil // not created yet (or already removed): nothing to mirror into
		}
		return err
	}
	if err := os.Mkdir(mdir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("record copy dir %s: %w", mdir, err)
	}
	if err := privateDir(mdir, "record copy dir"); err != nil {
		return err
	}
	if err := writeAtomic(mdir, p, data, false); err != nil {
		return fmt.Errorf("mirror record into %s: %w", p, err)
	}
	return nil
}

// removeMirror removes the record's live copy (the runtime directory's
// owner removes the directories).
func removeMirror(rec *NetSetup) {
	if p := rec.MirrorPath(); p != "" {
		os.Remove(p)
	}
}
