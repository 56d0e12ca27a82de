package netsetup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// This file holds the records: one JSON file per sandbox, read without a
// lock and written under the sandbox's lock (Tx).

// Path is the record file of a sandbox.
func (s *Store) Path(id string) string { return filepath.Join(s.sandboxDir, id+".json") }

// Get reads a sandbox's record without locking (writes are atomic renames,
// so a reader sees a whole record). An unreadable record is quarantined and
// rebuilt under the sandbox's lock first (see Tx.Load), so Get must not be
// called by a holder of that lock.
func (s *Store) Get(id string) (*NetSetup, error) {
	if err := ValidateSandboxID(id); err != nil {
		return nil, err
	}
	rec, err := s.read(id)
	if errors.Is(err, ErrUnreadable) {
		return s.repair(id)
	}
	return rec, err
}

// read reads the record of id: ErrNotFound when there is none, an
// *UnreadableError when the file is not a record of id.
func (s *Store) read(id string) (*NetSetup, error) {
	path := s.Path(id)
	data, err := readNoFollow(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("sandbox %s: %w", id, ErrNotFound)
	}
	var nr *notRecordError
	if errors.As(err, &nr) {
		return nil, &UnreadableError{ID: id, Path: path, Reason: nr.why}
	}
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", path, err)
	}
	if len(data) == 0 {
		return nil, &UnreadableError{ID: id, Path: path, Reason: "empty file"}
	}
	rec, err := Decode(data, id)
	if err != nil {
		return nil, &UnreadableError{ID: id, Path: path, Reason: err.Error()}
	}
	if rec.SandboxID != id {
		return nil, &UnreadableError{ID: id, Path: path, Reason: fmt.Sprintf("it names sandbox %q", rec.SandboxID)}
	}
	if err := rec.validateReadable(); err != nil {
		return nil, &UnreadableError{ID: id, Path: path, Reason: err.Error()}
	}
	return rec, nil
}

// IDs lists the sandboxes that have a record, sorted.
func (s *Store) IDs() ([]string, error) {
	ents, err := os.ReadDir(s.sandboxDir)
	if err != nil {
		return nil, fmt.Errorf("list records: %w", err)
	}
	ids := make([]string, 0, len(ents))
	for _, e := range ents {
		name := e.Name()
		// Not only regular files: a symlink or a directory in a record's
		// place is an unreadable record, for the quarantine.
		if !strings.HasSuffix(name, ".json") || strings.HasPrefix(name, ".") {
			continue
		}
		id := strings.TrimSuffix(name, ".json")
		if ValidateSandboxID(id) == nil {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// List reads every record. An unreadable record is quarantined (and
// rebuilt when the host still has the sandbox's objects, see Tx.Load);
// records that cannot be read for another reason (an I/O error, a lock
// held too long) are reported in the returned error (joined) and left out.
func (s *Store) List() ([]*NetSetup, error) {
	ids, err := s.IDs()
	if err != nil {
		return nil, err
	}
	var recs []*NetSetup
	var errs []error
	for _, id := range ids {
		rec, err := s.Get(id)
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile, or quarantined with nothing to rebuild
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		recs = append(recs, rec)
	}
	return recs, errors.Join(errs...)
}

// Tx is an exclusive hold on one sandbox's record (see Store.Lock).
type Tx struct {
	s      *Store
	id     string
	lock   *os.File
	loaded *NetSetup
	// absent: the last Load (or Delete) under this lock left no record, so
	// a Save makes the first one.
	absent bool
	// hint and recovery: see SetHint and Recovery (quarantine.go).
	hint     string
	recovery *Recovery
}

// ID is the sandbox id.
func (t *Tx) ID() string { return t.id }

// Load reads the record (ErrNotFound when there is none). An unreadable
// record is moved to the quarantine and rebuilt from the host (the store's
// RebuildFunc); Recovery then says so. When nothing was rebuilt the sandbox
// has no record (ErrNotFound).
func (t *Tx) Load() (*NetSetup, error) {
	t.recovery = nil
	rec, err := t.s.read(t.id)
	var u *UnreadableError
	if errors.As(err, &u) {
		return t.loadRecovering(u)
	}
	if err != nil {
		t.absent = errors.Is(err, ErrNotFound)
		return nil, err
	}
	cp := *rec
	t.loaded = &cp
	t.absent = false
	return rec, nil
}

// Save validates and atomically writes the record, and keeps the netns index
// in step with rec.NetnsID.
func (t *Tx) Save(rec *NetSetup) error {
	if rec.SandboxID == "" {
		rec.SandboxID = t.id
	}
	if rec.SandboxID != t.id {
		return fmt.Errorf("save sandbox %s: record names %q", t.id, rec.SandboxID)
	}
	rec.Schema = SchemaVersion
	if rec.NetworkConfigs == nil {
		rec.NetworkConfigs = []NIC{}
	}
	rec.normalize()
	if err := rec.Validate(); err != nil {
		return fmt.Errorf("save sandbox %s: %w", t.id, err)
	}
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("save sandbox %s: %w", t.id, err)
	}
	data = append(data, '\n')
	// The netns index entry, only when the record names a namespace it did
	// not before: a hard link to this version of the record, made before
	// the record is moved into place (a crash in between leaves an entry
	// whose record is missing: checked on use, pruned).
	var index func(link func(string) error) error
	if rec.NetnsID != nil && (t.loaded == nil || t.loaded.NetnsID == nil || *t.loaded.NetnsID != *rec.NetnsID) {
		nsid := *rec.NetnsID
		index = func(link func(string) error) error {
			if err := t.s.linkNetns(nsid, link); err != nil {
				return fmt.Errorf("netns index: %w", err)
			}
			return nil
		}
	}
	// The copy is staged first and renamed in once the record is written:
	// the save is the record's write, which happens completely or not at
	// all; a copy that cannot be written is reported, never fatal (see
	// mirror.go).
	stage := t.s.stageMirror(rec, mirrorContent(rec, data))
	if t.loaded == nil && t.absent {
		// Load found no record under this lock: the first version appears
		// at once, with no temp name (writeNewThen).
		err = writeNewThen(t.s.sandboxDir, t.s.Path(t.id), data, t.s.durable, t.s.takeSpare(), index)
	} else {
		err = writeAtomicSpare(t.s.sandboxDir, t.s.Path(t.id), data, t.s.durable, t.s.takeSpare(), index)
	}
	if err != nil {
		stage.abort()
		return fmt.Errorf("save sandbox %s: %w", t.id, err)
	}
	stage.commit()
	if t.loaded != nil && t.loaded.NetnsID != nil && (rec.NetnsID == nil || *rec.NetnsID != *t.loaded.NetnsID) {
		t.s.unindexNetns(*t.loaded.NetnsID, t.id)
	}
	cp := *rec
	t.loaded = &cp
	t.absent = false
	return nil
}

// Delete removes the record and its netns index entry. Deleting a missing
// record is not an error.
func (t *Tx) Delete() error {
	rec, err := t.s.read(t.id)
	if err == nil && rec.NetnsID != nil {
		t.s.unindexNetns(*rec.NetnsID, t.id)
	}
	if err == nil {
		t.s.removeMirror(rec)
	}
	if err := os.Remove(t.s.Path(t.id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete record of sandbox %s: %w", t.id, err)
	}
	if t.s.durable {
		if err := syncDir(t.s.sandboxDir); err != nil {
			return fmt.Errorf("delete record of sandbox %s: %w", t.id, err)
		}
	}
	t.loaded = nil
	t.absent = true
	return nil
}

// Create writes a new record; it fails when the sandbox already has one.
func (s *Store) Create(ctx context.Context, rec *NetSetup) error {
	tx, err := s.Lock(ctx, rec.SandboxID)
	if err != nil {
		return err
	}
	defer tx.Unlock()
	if _, err := tx.Load(); err == nil {
		return fmt.Errorf("sandbox %s already has a record", rec.SandboxID)
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	return tx.Save(rec)
}

// LockLoad takes the sandbox's lock and loads its record. On an error the
// lock is not held; otherwise the caller unlocks tx.
func (s *Store) LockLoad(ctx context.Context, id string) (*Tx, *NetSetup, error) {
	tx, err := s.Lock(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	rec, err := tx.Load()
	if err != nil {
		tx.Unlock()
		return nil, nil, err
	}
	return tx, rec, nil
}

// Update locks the sandbox, loads its record, applies fn and saves the
// result. A missing record is ErrNotFound; an error from fn saves nothing.
func (s *Store) Update(ctx context.Context, id string, fn func(*NetSetup) error) (*NetSetup, error) {
	tx, rec, err := s.LockLoad(ctx, id)
	if err != nil {
		return nil, err
	}
	defer tx.Unlock()
	if err := fn(rec); err != nil {
		return nil, err
	}
	if err := tx.Save(rec); err != nil {
		return nil, err
	}
	return rec, nil
}
