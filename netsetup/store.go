package netsetup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultStateDir is where records live unless configured otherwise.
const DefaultStateDir = "/var/lib/vmnic"

// ErrNotFound is returned when a sandbox has no record.
var ErrNotFound = errors.New("no NetSetup record")

// Store keeps one JSON file per sandbox under <stateDir>/sandboxes/, mode
// 0600 in 0700 directories. Writes are atomic (temp file, rename; with
// Options.Durable also fsync of the file and the directory) and made under a per-sandbox flock held on
// <stateDir>/locks/<id>.lock, so different sandboxes never wait on each
// other. <stateDir>/netns/<dev>-<ino> maps a network namespace to the
// sandbox that owns it, so finding a sandbox by netns is one file read.
// See Options for durability.
type Store struct {
	durable    bool
	dir        string
	sandboxDir string
	lockDir    string
	netnsDir   string
}

// Options tune a store.
type Options struct {
	// Durable makes every record write survive a power loss: the file is
	// fsynced before the rename and the directory after it. Without it,
	// writes are still atomic (temp file + rename), so no process crash can
	// leave a torn or half-written record; a power loss may lose the last
	// seconds of updates, which describe host objects (netns bind mounts,
	// TAPs, VMM processes) that do not survive a power loss either. The
	// netns index is a cache checked on every use and is never fsynced.
	Durable bool
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
		durable:    o.Durable,
		dir:        abs,
		sandboxDir: filepath.Join(abs, "sandboxes"),
		lockDir:    filepath.Join(abs, "locks"),
		netnsDir:   filepath.Join(abs, "netns"),
	}
	for _, d := range []string{s.dir, s.sandboxDir, s.lockDir, s.netnsDir} {
		if err := ensurePrivateDir(d); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

// Path is the record file of a sandbox.
func (s *Store) Path(id string) string { return filepath.Join(s.sandboxDir, id+".json") }

func ensurePrivateDir(d string) error {
	if _, err := os.Lstat(d); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(d), 0o755); err != nil {
			return fmt.Errorf("state dir %s: %w", d, err)
		}
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("state dir %s: %w", d, err)
		}
	}
	return privateDir(d, "state dir")
}

// Get reads a sandbox's record without locking (writes are atomic renames,
// so a reader sees a whole record).
func (s *Store) Get(id string) (*NetSetup, error) {
	if err := ValidateSandboxID(id); err != nil {
		return nil, err
	}
	return s.read(id)
}

func (s *Store) read(id string) (*NetSetup, error) {
	path := s.Path(id)
	data, err := readNoFollow(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("sandbox %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read record %s: %w", path, err)
	}
	rec, err := Decode(data, id)
	if err != nil {
		return nil, fmt.Errorf("record %s: %w", path, err)
	}
	if rec.SandboxID != id {
		return nil, fmt.Errorf("record %s names sandbox %q", path, rec.SandboxID)
	}
	return rec, nil
}

func readNoFollow(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return nil, fmt.Errorf("%s is a symlink: refusing to follow it", path)
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	return io.ReadAll(f)
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
		if !e.Type().IsRegular() || !strings.HasSuffix(name, ".json") || strings.HasPrefix(name, ".") {
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

// List reads every record. Records that cannot be read are reported in the
// returned error (joined) and left out of the list.
func (s *Store) List() ([]*NetSetup, error) {
	ids, err := s.IDs()
	if err != nil {
		return nil, err
	}
	var recs []*NetSetup
	var errs []error
	for _, id := range ids {
		rec, err := s.read(id)
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		recs = append(recs, rec)
	}
	return recs, errors.Join(errs...)
}

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
	id := strings.TrimSpace(string(data))
	if ValidateSandboxID(id) != nil {
		return "", ErrNotFound
	}
	rec, err := s.read(id)
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

// Tx is an exclusive hold on one sandbox's record.
type Tx struct {
	s      *Store
	id     string
	lock   *os.File
	loaded *NetSetup
	gone   bool
}

// Lock takes the sandbox's lock, waiting until ctx is done.
func (s *Store) Lock(ctx context.Context, id string) (*Tx, error) {
	if err := ValidateSandboxID(id); err != nil {
		return nil, err
	}
	f, err := s.flock(ctx, filepath.Join(s.lockDir, id+".lock"))
	if err != nil {
		return nil, fmt.Errorf("lock sandbox %s: %w", id, err)
	}
	return &Tx{s: s, id: id, lock: f}, nil
}

// flock opens and locks path, retrying when the file it locked was unlinked
// meanwhile (a teardown removes lock files).
func (s *Store) flock(ctx context.Context, path string) (*os.File, error) {
	wait := 200 * time.Microsecond
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, err
		}
		for {
			err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if err == nil {
				break
			}
			if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
				f.Close()
				return nil, err
			}
			select {
			case <-ctx.Done():
				f.Close()
				return nil, fmt.Errorf("held by another process: %w", ctx.Err())
			case <-time.After(wait):
			}
			if wait < 20*time.Millisecond {
				wait *= 2
			}
		}
		var held, now unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &held); err != nil {
			f.Close()
			return nil, err
		}
		if err := unix.Lstat(path, &now); err == nil && now.Dev == held.Dev && now.Ino == held.Ino {
			return f, nil
		}
		f.Close() // unlinked or replaced while we waited: lock the current file
	}
}

// ID is the sandbox id.
func (t *Tx) ID() string { return t.id }

// Load reads the record (ErrNotFound when there is none).
func (t *Tx) Load() (*NetSetup, error) {
	rec, err := t.s.read(t.id)
	if err != nil {
		t.gone = errors.Is(err, ErrNotFound)
		return nil, err
	}
	cp := *rec
	t.loaded = &cp
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
	if rec.NetnsID != nil && (t.loaded == nil || t.loaded.NetnsID == nil || *t.loaded.NetnsID != *rec.NetnsID) {
		if err := writeAtomic(t.s.netnsDir, t.s.netnsIndexPath(*rec.NetnsID), []byte(t.id+"\n"), false); err != nil {
			return fmt.Errorf("save sandbox %s: netns index: %w", t.id, err)
		}
	}
	if err := writeAtomic(t.s.sandboxDir, t.s.Path(t.id), data, t.s.durable); err != nil {
		return fmt.Errorf("save sandbox %s: %w", t.id, err)
	}
	if err := writeMirror(rec, mirrorContent(rec, data)); err != nil {
		return fmt.Errorf("save sandbox %s: %w", t.id, err)
	}
	if t.loaded != nil && t.loaded.NetnsID != nil && (rec.NetnsID == nil || *rec.NetnsID != *t.loaded.NetnsID) {
		t.s.removeIndex(*t.loaded.NetnsID, t.id)
	}
	cp := *rec
	t.loaded = &cp
	t.gone = false
	return nil
}

// Delete removes the record and its netns index entry; the lock file goes
// at Unlock. Deleting a missing record is not an error.
func (t *Tx) Delete() error {
	rec, err := t.s.read(t.id)
	if err == nil && rec.NetnsID != nil {
		t.s.removeIndex(*rec.NetnsID, t.id)
	}
	if err == nil {
		if p := rec.MirrorPath(); p != "" {
			os.Remove(p)
		}
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
	t.gone = true
	return nil
}

// Unlock releases the lock. When the sandbox has no record (after Delete, or
// a Load that found none and no Save since) it also removes the lock file,
// so nothing of the sandbox stays in the state directory.
func (t *Tx) Unlock() {
	if t.lock == nil {
		return
	}
	if t.gone {
		os.Remove(filepath.Join(t.s.lockDir, t.id+".lock"))
	}
	t.lock.Close()
	t.lock = nil
}

func (s *Store) removeIndex(nsid NetnsID, id string) {
	p := s.netnsIndexPath(nsid)
	if data, err := readNoFollow(p); err == nil && strings.TrimSpace(string(data)) == id {
		os.Remove(p)
	}
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

// Update locks the sandbox, loads its record, applies fn and saves the
// result. A missing record is ErrNotFound; an error from fn saves nothing.
func (s *Store) Update(ctx context.Context, id string, fn func(*NetSetup) error) (*NetSetup, error) {
	tx, err := s.Lock(ctx, id)
	if err != nil {
		return nil, err
	}
	defer tx.Unlock()
	rec, err := tx.Load()
	if err != nil {
		return nil, err
	}
	if err := fn(rec); err != nil {
		return nil, err
	}
	if err := tx.Save(rec); err != nil {
		return nil, err
	}
	return rec, nil
}

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

// privateDir checks that dir is a directory (not a symlink) that group and
// others cannot write; a missing dir gives an error matching fs.ErrNotExist.
func privateDir(dir, what string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s %s is a symlink: refusing to use it", what, dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s %s is not a directory", what, dir)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s %s has mode %o: it must not be writable by group or others", what, dir, fi.Mode().Perm())
	}
	return nil
}

// writeAtomic writes data to path through a temp file in dir: write, rename
// (with durable: fsync before the rename and of dir after it). The file is
// 0600 and never written through a symlink.
func writeAtomic(dir, path string, data []byte, durable bool) error {
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if durable {
		if err := tmp.Sync(); err != nil {
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := replaceFile(tmpName, path); err != nil {
		return err
	}
	ok = true
	if !durable {
		return nil
	}
	return syncDir(dir)
}

// replaceFile moves tmp to path atomically. An existing path is swapped
// with tmp (RENAME_EXCHANGE) and the old content, now at tmp, removed: a
// plain rename over an existing file makes ext4 start writing the new file's
// data back at once (auto_da_alloc), which costs more than the exchange.
// Once swapped the write is done: an old copy that cannot be removed is a
// stale temp file, which Prune removes.
func replaceFile(tmp, path string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE)
	if err == nil {
		os.Remove(tmp)
		return nil
	}
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		return os.Rename(tmp, path)
	}
	return &os.LinkError{Op: "exchange", Old: tmp, New: path, Err: err}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTSUP) {
		return err
	}
	return nil
}

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
