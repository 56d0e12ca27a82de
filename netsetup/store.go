package netsetup

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
)

// DefaultStateDir is where records live unless configured otherwise.
const DefaultStateDir = "/var/lib/vmnic"

// ErrNotFound is returned when a sandbox has no record.
var ErrNotFound = errors.New("no NetSetup record")

// Store owns every file under the state directory, all mode 0600 in 0700
// directories:
//   - <stateDir>/sandboxes/<id>.json: one record per sandbox (records.go),
//     written atomically (temp file, rename; with Options.Durable also fsync
//     of the file and the directory) under the sandbox's lock;
//   - <stateDir>/sandboxes.lock: the sandboxes' locks, an OFD byte-range
//     lock per sandbox on this one file, so different sandboxes do not wait
//     on each other and a new sandbox makes no lock file (locks.go);
//   - <stateDir>/netns/<dev>-<ino>: the netns index, which maps a network
//     namespace to the sandbox that owns it, so finding a sandbox by netns is
//     one file read; an entry is a hard link to the record version that
//     first named the namespace, written only when the record's namespace
//     changes (index.go);
//   - <stateDir>/cni-containers/<container id>: the container index, the
//     sandbox of a CNI container id whose NICs live in a sandbox of another
//     id (index.go);
//   - <stateDir>/bridge-forward/<bridge>.users and .lock: who uses a host
//     bridge's FORWARD rules (bridgeforward.go);
//   - <stateDir>/clone-macs/<bridge>.lock: the flock that serialises the
//     MAC check of restored clones on one bridge (clonelock.go);
//   - <stateDir>/quarantine/: records that could not be read, moved aside
//     with a .reason note each (quarantine.go).
//
// It also keeps the live copy of each record in the sandbox's runtime
// directory (mirror.go). See Options for durability.
type Store struct {
	durable      bool
	logger       *slog.Logger
	rebuild      RebuildFunc
	dir          string
	sandboxDir   string
	netnsDir     string
	containerDir string
	forwardDir   string
	// spares: see KeepSpareRecords.
	spares atomic.Pointer[spares]
}

// Options tune a store.
type Options struct {
	// Durable makes every record write survive a power loss: the file is
	// fsynced before the rename and the directory after it. Without it,
	// writes are still atomic (temp file + rename), so no process crash can
	// leave a torn or half-written record; a power loss may lose the last
	// seconds of updates, which describe host objects (netns bind mounts,
	// TAPs, VMM processes) that do not survive a power loss either. The
	// indexes are caches checked on every use and are never fsynced.
	Durable bool
	// Logger receives what the store repairs or cannot do without failing
	// the operation (a quarantined record, a record copy it cannot
	// refresh); nil: slog's default logger.
	Logger *slog.Logger
	// Rebuild makes a record again from the host after its unreadable file
	// went to the quarantine (see RebuildFunc); nil: nothing is rebuilt.
	// SetRebuild sets it on an open store.
	Rebuild RebuildFunc
}

// Open opens (creating when needed) the store rooted at stateDir with
// default options. It refuses a state directory, or a sub-directory, that is
// a symlink or is writable by group or others.
func Open(stateDir string) (*Store, error) { return OpenWithOptions(stateDir, Options{}) }

// OpenWithOptions is Open with options.
func OpenWithOptions(stateDir string, o Options) (*Store, error) {
	if stateDir == "" {
		stateDir = DefaultStateDir
	}
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("state dir %q: %w", stateDir, err)
	}
	s := &Store{
		durable:      o.Durable,
		logger:       loggerOr(o.Logger),
		rebuild:      o.Rebuild,
		dir:          abs,
		sandboxDir:   filepath.Join(abs, "sandboxes"),
		netnsDir:     filepath.Join(abs, "netns"),
		containerDir: filepath.Join(abs, "cni-containers"),
		forwardDir:   filepath.Join(abs, "bridge-forward"),
	}
	// The container index and the bridge-forward dirs are made by their
	// first entry and removed with their last.
	for _, d := range []string{s.dir, s.sandboxDir, s.netnsDir} {
		if err := ensurePrivateDir(d); err != nil {
			return nil, err
		}
	}
	// The shared lock file is part of the state dir from its first use on.
	f, err := s.openLockFile()
	if err != nil {
		return nil, fmt.Errorf("state dir %s: %w", abs, err)
	}
	f.Close()
	return s, nil
}

// SetRebuild sets the store's RebuildFunc (see Options.Rebuild); the
// sandbox engine sets it when it is built on the store.
func (s *Store) SetRebuild(fn RebuildFunc) { s.rebuild = fn }

// SetLogger sets the store's logger (nil: slog's default).
func (s *Store) SetLogger(l *slog.Logger) { s.logger = loggerOr(l) }

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

// CheckWritable checks that a file can be made in the state directory (and
// removes it again): what a CNI STATUS asks.
func (s *Store) CheckWritable() error {
	f, err := os.CreateTemp(s.dir, ".status-*")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}
