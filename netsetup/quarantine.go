package netsetup

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// This file holds the quarantine: a record that cannot be read (empty,
// truncated, not JSON, a schema from the future, a symlink, a directory, an
// id that does not match the file name) is moved to <stateDir>/quarantine/
// under the sandbox's lock, with a line naming the file and the reason, and
// the store's Rebuild function (see Options) makes the record again from
// the host objects. No caller fails because of such a file.

// ErrUnreadable is wrapped by the error of a record that exists but cannot
// be read (UnreadableError).
var ErrUnreadable = errors.New("record is unreadable")

// UnreadableError is a record file that cannot be read as a record.
type UnreadableError struct {
	ID, Path, Reason string
}

func (e *UnreadableError) Error() string {
	return fmt.Sprintf("record %s of sandbox %s is unreadable: %s", e.Path, e.ID, e.Reason)
}

// Is makes errors.Is(err, ErrUnreadable) true.
func (e *UnreadableError) Is(target error) bool { return target == ErrUnreadable }

// Recovery says what a Load did with an unreadable record.
type Recovery struct {
	Reason      string // why the record could not be read
	Quarantined string // where the file went
	Rebuilt     bool   // a record was made again from the host objects
}

// RebuildFunc makes the record of sandbox id from the host objects, after
// its unreadable record went to the quarantine (nil, nil: nothing of the
// sandbox is left on the host). hint is a netns path the caller knows the
// sandbox by ("" when none). It runs under the sandbox's lock and must not
// take it.
type RebuildFunc func(ctx context.Context, id, hint string) (*NetSetup, error)

// quarantineDirName is the quarantine's directory under the state dir.
const quarantineDirName = "quarantine"

// reasonSuffix names the file beside each quarantined file that says why.
const reasonSuffix = ".reason"

// Quarantined is one file of the quarantine.
type Quarantined struct {
	ID     string    // the sandbox the file was the record of
	Path   string    // where it is now
	Reason string    // why it was moved
	Time   time.Time // when
}

// QuarantineDir is where unreadable records go.
func (s *Store) QuarantineDir() string { return filepath.Join(s.dir, quarantineDirName) }

// quarantine moves the unreadable record of u aside and logs it. Call it
// under the sandbox's lock.
func (s *Store) quarantine(u *UnreadableError) (string, error) {
	dir := s.QuarantineDir()
	if err := ensurePrivateDir(dir); err != nil {
		return "", fmt.Errorf("quarantine %s: %w", u.Path, err)
	}
	now := time.Now().UTC()
	dst := filepath.Join(dir, fmt.Sprintf("%s.json.%s", u.ID, now.Format("20060102T150405.000000000Z")))
	if err := os.Rename(u.Path, dst); err != nil {
		return "", fmt.Errorf("quarantine %s: %w", u.Path, err)
	}
	// The reason file is a note for operators and for vmnicctl list; the
	// move is what counts.
	_ = writeAtomic(dir, dst+reasonSuffix, []byte(u.Reason+"\n"), false)
	if s.durable {
		_ = syncDir(s.sandboxDir)
	}
	s.logger.Warn("unreadable record moved to the quarantine", "sandbox", u.ID, "file", u.Path, "quarantined", dst, "reason", u.Reason)
	return dst, nil
}

// Quarantine lists the quarantined files, oldest first. A missing
// quarantine is an empty list.
func (s *Store) Quarantine() ([]Quarantined, error) {
	ents, err := os.ReadDir(s.QuarantineDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list the quarantine: %w", err)
	}
	var out []Quarantined
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, tempPrefix) || strings.HasSuffix(name, reasonSuffix) {
			continue
		}
		id, stamp, ok := strings.Cut(name, ".json.")
		if !ok {
			continue
		}
		q := Quarantined{ID: id, Path: filepath.Join(s.QuarantineDir(), name)}
		q.Time, _ = time.Parse("20060102T150405.000000000Z", stamp)
		if data, err := readNoFollow(q.Path + reasonSuffix); err == nil {
			q.Reason = strings.TrimSpace(string(data))
		}
		out = append(out, q)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Time.Before(out[j].Time) })
	return out, nil
}

// rebuildWait bounds a rebuild from the host (it may wait for a bridge's
// FORWARD-rule lock).
const rebuildWait = 30 * time.Second

// repairWait bounds how long an unlocked read (Get, List) waits for the
// sandbox's lock to quarantine an unreadable record.
const repairWait = 5 * time.Second

// repair quarantines (and rebuilds) the unreadable record of sandbox id
// under its lock, for a reader that holds no lock.
func (s *Store) repair(id string) (*NetSetup, error) {
	ctx, cancel := context.WithTimeout(context.Background(), repairWait)
	defer cancel()
	tx, err := s.Lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer tx.Unlock()
	return tx.Load()
}

// loadRecovering is Tx.Load's handling of an unreadable record u: move it to
// the quarantine and rebuild the record from the host.
func (t *Tx) loadRecovering(u *UnreadableError) (*NetSetup, error) {
	dst, err := t.s.quarantine(u)
	if err != nil {
		return nil, errors.Join(u, err)
	}
	t.recovery = &Recovery{Reason: u.Reason, Quarantined: dst}
	var rec *NetSetup
	if t.s.rebuild != nil {
		ctx, cancel := context.WithTimeout(context.Background(), rebuildWait)
		rec, err = t.s.rebuild(ctx, t.id, t.hint)
		cancel()
		if err != nil {
			t.s.logger.Error("rebuilding a quarantined record from the host failed", "sandbox", t.id, "error", err)
			rec = nil
		}
	}
	if rec == nil {
		t.absent = true
		return nil, fmt.Errorf("sandbox %s: record quarantined to %s (%s), nothing of it found on the host: %w", t.id, dst, u.Reason, ErrNotFound)
	}
	rec.SandboxID = t.id
	rec.Quarantined = dst
	if err := t.Save(rec); err != nil {
		return nil, fmt.Errorf("sandbox %s: save the record rebuilt from the host: %w", t.id, err)
	}
	t.recovery.Rebuilt = true
	t.s.logger.Warn("record rebuilt from the host", "sandbox", t.id, "nics", len(rec.NetworkConfigs), "netns", rec.NetnsPath)
	cp := *rec
	return &cp, nil
}

// Recovery is what the last Load did with an unreadable record (nil when
// the record was readable or missing).
func (t *Tx) Recovery() *Recovery { return t.recovery }

// SetHint gives the next Load a netns path the sandbox is known by, for a
// rebuild from the host (see RebuildFunc).
func (t *Tx) SetHint(netnsPath string) { t.hint = netnsPath }

// loggerOr is l, or slog's default logger when l is nil.
func loggerOr(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}
