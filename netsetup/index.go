package netsetup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// This file holds the two indexes, one small file per entry that names a
// sandbox: the netns index (<stateDir>/netns/<dev>-<ino>: the sandbox whose
// record names that network namespace) and the container index
// (<stateDir>/cni-containers/<container id>: the sandbox a CNI container's
// NICs live in when its id is not the sandbox's). Both are caches: every
// use checks an entry against the record it names.
//
// A container index entry holds the sandbox id (a line). A netns index
// entry is a hard link to the version of the record that first named the
// namespace (Tx.Save links the record's temp file before moving it into
// place), so it costs a directory entry, not a file of its own: its
// content is that record, whose sandbox_id is the id (entryID reads both
// forms; entries written by earlier versions hold the id as a line).

// FindByNetns returns the id of the sandbox whose recorded netns is the
// namespace nsid, or ErrNotFound. The index entry is checked against the
// record and the live namespace, so a stale entry (a freed namespace whose
// inode was reused) does not match.
func (s *Store) FindByNetns(nsid NetnsID) (string, error) {
	data, err := readNoFollow(s.netnsIndexPath(nsid))
	if errors.Is(err, fs.ErrNotExist) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("netns index %s: %w", nsid, err)
	}
	id := entryID(data)
	if id == "" {
		// Damaged with the record it is a name of (see linkedRecordID).
		id = s.linkedRecordID(s.netnsIndexPath(nsid))
	}
	if id == "" {
		return "", ErrNotFound
	}
	rec, err := s.read(id)
	if errors.Is(err, ErrUnreadable) {
		// The entry is all that is left to go by: the caller's Load of
		// that sandbox quarantines and rebuilds the record.
		return id, nil
	}
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return "", ErrNotFound
		}
		return "", err
	}
	if rec.NetnsID == nil || *rec.NetnsID != nsid {
		return "", ErrNotFound
	}
	live, err := IdentifyNetns(rec.ResolvedNetnsPath())
	if err != nil || live != nsid {
		return "", ErrNotFound
	}
	return id, nil
}

func (s *Store) netnsIndexPath(nsid NetnsID) string {
	return filepath.Join(s.netnsDir, fmt.Sprintf("%d-%d", nsid.Dev, nsid.Ino))
}

func parseIndexName(name string) (NetnsID, bool) {
	a, b, ok := strings.Cut(name, "-")
	if !ok {
		return NetnsID{}, false
	}
	dev, err1 := strconv.ParseUint(a, 10, 64)
	ino, err2 := strconv.ParseUint(b, 10, 64)
	if err1 != nil || err2 != nil {
		return NetnsID{}, false
	}
	return NetnsID{Dev: dev, Ino: ino}, true
}

// linkNetns points the netns index entry of nsid at a record file version
// not yet moved into place, which link gives another name (a hard link, see
// writeAtomicThen): made in place when the entry is missing and else made
// under a temp name and moved over the entry.
func (s *Store) linkNetns(nsid NetnsID, link func(newpath string) error) error {
	path := s.netnsIndexPath(nsid)
	err := link(path)
	if !errors.Is(err, fs.ErrExist) {
		return err
	}
	tmp := filepath.Join(s.netnsDir, fmt.Sprintf("%s%d-%d", tempPrefix, os.Getpid(), nsid.Ino))
	os.Remove(tmp)
	if err := link(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// entryID is the sandbox id an index entry's content names: a line with
// the id, or a record (a netns index entry) and its sandbox_id; "" when it
// names no valid id.
func entryID(data []byte) string {
	var id string
	if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
		var rec struct {
			SandboxID string `json:"sandbox_id"`
		}
		if json.Unmarshal(t, &rec) != nil {
			return ""
		}
		id = rec.SandboxID
	} else {
		id = string(t)
	}
	if ValidateSandboxID(id) != nil {
		return ""
	}
	return id
}

// unindexNetns removes the netns index entry of nsid when it names id.
func (s *Store) unindexNetns(nsid NetnsID, id string) {
	removeEntryOf(s.netnsIndexPath(nsid), id)
}

// readEntry reads an index entry: the sandbox id it names ("" when the
// entry is missing, unreadable or does not hold a valid id).
func readEntry(path string) string {
	data, err := readNoFollow(path)
	if err != nil {
		return ""
	}
	return entryID(data)
}

// removeEntryOf removes the index entry at path when it names id.
func removeEntryOf(path, id string) {
	if readEntry(path) == id {
		os.Remove(path)
	}
}

// ContainerSandbox returns the sandbox that the NICs of CNI container
// containerID live in, as the container index says ("" when it has no
// entry, or none that is valid).
func (s *Store) ContainerSandbox(containerID string) string {
	if ValidateSandboxID(containerID) != nil {
		return ""
	}
	return readEntry(s.containerIndexPath(containerID))
}

func (s *Store) containerIndexPath(containerID string) string {
	return filepath.Join(s.containerDir, containerID)
}

// IndexContainer records that the NICs of CNI container containerID live in
// sandbox id, so a DEL without the netns still finds the sandbox. It is a
// no-op when the ids are equal (or containerID is empty or not valid) and
// when the entry exists.
func (s *Store) IndexContainer(containerID, id string) error {
	if containerID == "" || containerID == id || ValidateSandboxID(containerID) != nil {
		return nil
	}
	if err := ValidateSandboxID(id); err != nil {
		return fmt.Errorf("container index: %w", err)
	}
	if s.ContainerSandbox(containerID) == id {
		return nil
	}
	if err := writeAtomicInVolatileDir(s.containerDir, s.containerIndexPath(containerID), []byte(id+"\n")); err != nil {
		return fmt.Errorf("container index: %w", err)
	}
	return nil
}

// UnindexContainers drops the container index entries that point at sandbox
// id for the container ids no NIC of rec uses any more (rec nil: the sandbox
// is gone). The index directory goes with its last entry.
func (s *Store) UnindexContainers(id string, rec *NetSetup, containerIDs ...string) {
	for _, cid := range containerIDs {
		if cid == "" || cid == id || s.ContainerSandbox(cid) != id || rec.usedBy(cid) {
			continue
		}
		os.Remove(s.containerIndexPath(cid))
		os.Remove(s.containerDir) // only when empty
	}
}

// usedBy reports whether a NIC of s (nil: none) was added for CNI container
// containerID.
func (s *NetSetup) usedBy(containerID string) bool {
	if s == nil {
		return false
	}
	for _, n := range s.NetworkConfigs {
		if n.ContainerID == containerID {
			return true
		}
	}
	return false
}

// IndexedNetns lists the namespaces the netns index says sandbox id owns
// (a rebuild from the host looks for the sandbox's netns among them).
func (s *Store) IndexedNetns(id string) []NetnsID {
	ents, err := os.ReadDir(s.netnsDir)
	if err != nil {
		return nil
	}
	files := s.recordFilesOf(id)
	var out []NetnsID
	for _, e := range ents {
		nsid, ok := parseIndexName(e.Name())
		if !ok {
			continue
		}
		path := filepath.Join(s.netnsDir, e.Name())
		if readEntry(path) == id || sameAsAny(path, files) {
			out = append(out, nsid)
		}
	}
	return out
}

// A netns index entry is a hard link to a version of its record, so damage
// done to that file in place (a power loss truncating it, a write over it)
// is damage to the entry too: its content then names no sandbox, or the
// wrong one. The entry is still a name of the record's file, and that file
// (at its place, or moved to the quarantine) says which sandbox it is.

// recordFilesOf is what is known of the files that are, or were, sandbox
// id's record: its record file and its quarantined files.
func (s *Store) recordFilesOf(id string) []os.FileInfo {
	var out []os.FileInfo
	if fi, err := os.Lstat(s.Path(id)); err == nil && fi.Mode().IsRegular() {
		out = append(out, fi)
	}
	ents, _ := os.ReadDir(s.QuarantineDir())
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), id+".json.") || strings.HasSuffix(e.Name(), reasonSuffix) {
			continue
		}
		if fi, err := os.Lstat(filepath.Join(s.QuarantineDir(), e.Name())); err == nil && fi.Mode().IsRegular() {
			out = append(out, fi)
		}
	}
	return out
}

// sameAsAny reports whether the file at path is one of files.
func sameAsAny(path string, files []os.FileInfo) bool {
	if len(files) == 0 {
		return false
	}
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	for _, f := range files {
		if os.SameFile(fi, f) {
			return true
		}
	}
	return false
}

// linkedRecordID is the sandbox whose record file (at its place in the
// sandboxes dir) is the file at path, an index entry ("" when none is).
func (s *Store) linkedRecordID(path string) string {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink < 2 {
		return "" // no other name
	}
	ents, err := os.ReadDir(s.sandboxDir)
	if err != nil {
		return ""
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || ValidateSandboxID(id) != nil {
			continue
		}
		if rf, err := os.Lstat(filepath.Join(s.sandboxDir, e.Name())); err == nil && os.SameFile(fi, rf) {
			return id
		}
	}
	return ""
}
