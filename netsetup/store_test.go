package netsetup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStoreRoundTripAndModes(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	rec := New("sb1")
	rec.PodName = "p"
	rec.PutNIC(NIC{ID: "eth0", IfName: "eth0", Tap: "tapeth0", State: NICPending})
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, New("sb1")); err == nil || !strings.Contains(err.Error(), "already has a record") {
		t.Fatalf("second Create = %v, want already-exists error", err)
	}
	got, err := s.Get("sb1")
	if err != nil {
		t.Fatal(err)
	}
	if got.PodName != "p" || got.Phase != PhaseConfigured || got.Schema != SchemaVersion || len(got.NetworkConfigs) != 1 {
		t.Fatalf("record read back = %+v", got)
	}
	for _, d := range []string{s.Dir(), filepath.Join(s.Dir(), "sandboxes"), filepath.Join(s.Dir(), "netns")} {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s mode = %v (%v), want 0700", d, fi.Mode().Perm(), err)
		}
	}
	fi, err := os.Stat(s.Path("sb1"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode = %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if _, err := s.Update(ctx, "sb1", func(r *NetSetup) error { r.RemoveNIC("eth0"); return nil }); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Get("sb1")
	if got.Phase != PhasePrepared || len(got.NetworkConfigs) != 0 {
		t.Fatalf("after removing the NIC: %+v", got)
	}
	if _, err := s.Update(ctx, "sb1", func(r *NetSetup) error { r.PodName = "changed"; return errors.New("boom") }); err == nil {
		t.Fatal("Update must return fn's error")
	}
	if got, _ := s.Get("sb1"); got.PodName != "p" {
		t.Fatal("a failed Update must save nothing")
	}
	tx, err := s.Lock(ctx, "sb1")
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Delete(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Delete(); err != nil {
		t.Fatalf("a second Delete must be a no-op: %v", err)
	}
	tx.Unlock()
	if _, err := s.Get("sb1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Delete = %v, want ErrNotFound", err)
	}
	if _, err := s.Update(ctx, "sb1", func(*NetSetup) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Update of a missing record = %v, want ErrNotFound", err)
	}
	left, _ := os.ReadDir(s.Dir())
	files, _ := os.ReadDir(filepath.Join(s.Dir(), "sandboxes"))
	var names []string
	for _, e := range left {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "netns,sandboxes,sandboxes.lock" || len(files) != 0 {
		t.Fatalf("teardown left files: state dir %v, sandboxes %v", names, files)
	}
}

func TestStoreRefusesSymlinksAndLooseModes(t *testing.T) {
	t.Run("record is a symlink", func(t *testing.T) {
		s := openStore(t)
		target := filepath.Join(t.TempDir(), "elsewhere.json")
		os.WriteFile(target, fixture(t, "schema2-configured.json"), 0o600)
		if err := os.Symlink(target, s.Path("sb-v2-1")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Get("sb-v2-1"); err == nil || !strings.Contains(err.Error(), "symlink") {
			t.Fatalf("Get through a symlink = %v, want a refusal naming the symlink", err)
		}
		// A save replaces the link itself and never writes through it.
		if _, err := s.Update(context.Background(), "sb-v2-1", func(*NetSetup) error { return nil }); err == nil {
			t.Fatal("Update through a symlinked record must fail")
		}
		tx, _ := s.Lock(context.Background(), "sb-v2-1")
		if err := tx.Save(New("sb-v2-1")); err != nil {
			t.Fatal(err)
		}
		tx.Unlock()
		if data, _ := os.ReadFile(target); !strings.Contains(string(data), "net10") {
			t.Fatal("Save wrote through the symlink into its target")
		}
		if fi, _ := os.Lstat(s.Path("sb-v2-1")); fi.Mode()&os.ModeSymlink != 0 {
			t.Fatal("Save must replace the symlink with a regular file")
		}
	})
	t.Run("state dir is a symlink", func(t *testing.T) {
		real := filepath.Join(t.TempDir(), "real")
		os.Mkdir(real, 0o700)
		link := filepath.Join(t.TempDir(), "link")
		os.Symlink(real, link)
		if _, err := Open(link); err == nil || !strings.Contains(err.Error(), "symlink") {
			t.Fatalf("Open(symlink) = %v, want refusal", err)
		}
	})
	t.Run("world-writable state dir", func(t *testing.T) {
		d := filepath.Join(t.TempDir(), "loose")
		os.Mkdir(d, 0o777)
		os.Chmod(d, 0o777)
		if _, err := Open(d); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
			t.Fatalf("Open(0777 dir) = %v, want refusal", err)
		}
	})
	t.Run("bad ids never touch the filesystem", func(t *testing.T) {
		s := openStore(t)
		for _, id := range []string{"../x", "a/b", ""} {
			if _, err := s.Get(id); err == nil {
				t.Errorf("Get(%q) accepted", id)
			}
			if _, err := s.Lock(context.Background(), id); err == nil {
				t.Errorf("Lock(%q) accepted", id)
			}
		}
	})
}

func TestStoreLoadsLegacyRecordAndRewritesCurrentSchema(t *testing.T) {
	s := openStore(t)
	if err := os.WriteFile(s.Path("sb-cni-1"), fixture(t, "schema1-cni-empty-backend.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec, err := s.Update(context.Background(), "sb-cni-1", func(r *NetSetup) error {
		if r.LegacySchema() != 1 {
			t.Errorf("LegacySchema = %d, want 1", r.LegacySchema())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(s.Path("sb-cni-1"))
	if !strings.Contains(string(data), `"schema": 2`) || rec.ResolvedNetnsPath() != "/var/run/netns/cni-1234" {
		t.Fatalf("rewritten record:\n%s", data)
	}
	again, err := s.Get("sb-cni-1")
	if err != nil || again.ResolvedNetnsPath() != "/var/run/netns/cni-1234" || again.NetworkConfigs[0].IPs[0] != "10.88.0.9/16" {
		t.Fatalf("re-read after rewrite: %+v, %v", again, err)
	}
}

// The concurrency test re-executes the test binary as worker processes.
const workerEnv = "VMNIC_NETSETUP_STORE_WORKER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(lockHolderEnv); spec != "" {
		holdLock(spec) // does not return
	}
	if spec := os.Getenv(workerEnv); spec != "" {
		if err := storeWorker(spec); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// storeWorker: "<stateDir>|<worker>|<sharedUpdates>|<sandboxes>|<groups>".
// It adds sharedUpdates NICs to sandbox "shared", and one NIC to every
// sandbox sb-<j> with j % groups == worker % groups.
func storeWorker(spec string) error {
	f := strings.Split(spec, "|")
	if len(f) != 5 {
		return fmt.Errorf("bad spec %q", spec)
	}
	w, _ := strconv.Atoi(f[1])
	shared, _ := strconv.Atoi(f[2])
	sandboxes, _ := strconv.Atoi(f[3])
	groups, _ := strconv.Atoi(f[4])
	s, err := Open(f[0])
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	add := func(id, ifname string) error {
		tx, err := s.Lock(ctx, id)
		if err != nil {
			return err
		}
		defer tx.Unlock()
		rec, err := tx.Load()
		if errors.Is(err, ErrNotFound) {
			rec = New(id)
		} else if err != nil {
			return err
		}
		rec.PutNIC(NIC{ID: ifname, IfName: ifname, State: NICPending})
		return tx.Save(rec)
	}
	for k := 0; k < shared; k++ {
		if err := add("shared", fmt.Sprintf("p%dk%d", w, k)); err != nil {
			return err
		}
	}
	for j := 0; j < sandboxes; j++ {
		if j%groups == w%groups {
			if err := add(fmt.Sprintf("sb-%d", j), fmt.Sprintf("w%d", w)); err != nil {
				return err
			}
		}
	}
	return nil
}

func TestConcurrentProcessesLoseNoUpdate(t *testing.T) {
	const (
		workers       = 32
		sharedUpdates = 4
		sandboxes     = 200
		groups        = 8 // each sb-<j> is updated by workers/groups = 4 processes
	)
	if testing.Short() {
		t.Skip("skipped in -short: starts 32 processes")
	}
	s := openStore(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			cmd := exec.Command(exe, "-test.run=^$")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s|%d|%d|%d|%d", workerEnv, s.Dir(), w, sharedUpdates, sandboxes, groups))
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("worker %d: %v\n%s", w, err, out)
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	shared, err := s.Get("shared")
	if err != nil {
		t.Fatal(err)
	}
	if got := len(shared.NetworkConfigs); got != workers*sharedUpdates {
		t.Errorf("shared sandbox has %d NICs, want %d: updates were lost", got, workers*sharedUpdates)
	}
	ids, _ := s.IDs()
	if len(ids) != sandboxes+1 {
		t.Errorf("%d records, want %d", len(ids), sandboxes+1)
	}
	for j := 0; j < sandboxes; j++ {
		rec, err := s.Get(fmt.Sprintf("sb-%d", j))
		if err != nil {
			t.Errorf("sb-%d: %v", j, err)
			continue
		}
		if got := len(rec.NetworkConfigs); got != workers/groups {
			t.Errorf("sb-%d has %d NICs, want %d", j, got, workers/groups)
		}
	}
	if tmp, _ := filepath.Glob(filepath.Join(s.Dir(), "sandboxes", ".tmp-*")); len(tmp) != 0 {
		t.Errorf("temp files left: %v", tmp)
	}
}

func TestDurableStoreWritesAndDeletes(t *testing.T) {
	s, err := OpenWithOptions(filepath.Join(t.TempDir(), "state"), Options{Durable: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Create(ctx, New("durable")); err != nil {
		t.Fatal(err)
	}
	if rec, err := s.Get("durable"); err != nil || rec.Phase != PhasePrepared {
		t.Fatalf("Get = %+v, %v", rec, err)
	}
	tx, _ := s.Lock(ctx, "durable")
	if err := tx.Delete(); err != nil {
		t.Fatal(err)
	}
	tx.Unlock()
	if _, err := s.Get("durable"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after Delete: %v", err)
	}
}

func TestCheckWritable(t *testing.T) {
	s := openStore(t)
	if err := s.CheckWritable(); err != nil {
		t.Fatalf("CheckWritable on a fresh store: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(s.Dir(), ".status-*")); len(left) != 0 {
		t.Fatalf("CheckWritable left %v", left)
	}
	if err := os.RemoveAll(s.Dir()); err != nil {
		t.Fatal(err)
	}
	if err := s.CheckWritable(); err == nil {
		t.Fatal("CheckWritable passed with the state dir gone")
	}
}

// The first version of a record appears under its name with no temp file
// (O_TMPFILE + link), with the netns index entry a second name of it; a
// later version replaces it as before.
func TestNewRecordIsLinkedInWithoutTempFile(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	self, err := IdentifyNetns("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	rec := New("sb-new")
	rec.NetnsPath, rec.NetnsID = "/proc/self/ns/net", &self
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.Path("sb-new"))
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Nlink != 2 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new record: %d links, mode %o; want 2 (the record and its netns index entry), 0600", st.Nlink, fi.Mode().Perm())
	}
	if id, err := s.FindByNetns(self); err != nil || id != "sb-new" {
		t.Fatalf("FindByNetns = %q, %v", id, err)
	}
	ents, _ := os.ReadDir(filepath.Join(s.Dir(), "sandboxes"))
	if len(ents) != 1 {
		t.Fatalf("sandboxes dir holds %v, want the record alone", ents)
	}
	if _, err := s.Update(ctx, "sb-new", func(r *NetSetup) error { r.PodName = "p2"; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get("sb-new"); err != nil || got.PodName != "p2" {
		t.Fatalf("after Update: %+v, %v", got, err)
	}
}

// writeNewThen on a path that has a file after all replaces it (the
// temp-file write), never fails on it.
func TestWriteNewOverExistingFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeNewThen(dir, path, []byte("new"), true, nil, nil); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); string(data) != "new" {
		t.Fatalf("content = %q, want new", data)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("dir holds %v, want the file alone", ents)
	}
}

// With spare record files, a new record uses one (its inode was made
// ahead) and the pool is refilled; released, none is left open, and the
// store writes new records without them.
func TestSpareRecords(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	release := s.KeepSpareRecords(2)
	waitSpares := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for s.spares.Load().count() != n {
			if time.Now().After(deadline) {
				t.Fatalf("spares: %d, want %d", s.spares.Load().count(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitSpares(2)
	s.spares.Load().mu.Lock()
	var spareIno uint64
	if fi, err := s.spares.Load().fds[1].Stat(); err == nil {
		spareIno = fi.Sys().(*syscall.Stat_t).Ino
	}
	s.spares.Load().mu.Unlock()
	if err := s.Create(ctx, New("sb-spare")); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.Path("sb-spare"))
	if err != nil {
		t.Fatal(err)
	}
	if ino := fi.Sys().(*syscall.Stat_t).Ino; ino != spareIno || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new record: inode %d mode %o, want the spare's inode %d, 0600", ino, fi.Mode().Perm(), spareIno)
	}
	if got, err := s.Get("sb-spare"); err != nil || got.SandboxID != "sb-spare" {
		t.Fatalf("record written into a spare: %+v, %v", got, err)
	}
	waitSpares(2)
	if ents, _ := os.ReadDir(filepath.Join(s.Dir(), "sandboxes")); len(ents) != 1 {
		t.Fatalf("sandboxes dir holds %v: spares must have no name", ents)
	}
	// A new version of the record is a spare too, swapped in.
	s.spares.Load().mu.Lock()
	if fi, err := s.spares.Load().fds[1].Stat(); err == nil {
		spareIno = fi.Sys().(*syscall.Stat_t).Ino
	}
	s.spares.Load().mu.Unlock()
	if _, err := s.Update(ctx, "sb-spare", func(r *NetSetup) error { r.PodName = "p2"; return nil }); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(s.Path("sb-spare")); err != nil || fi.Sys().(*syscall.Stat_t).Ino != spareIno || fi.Mode().Perm() != 0o600 {
		t.Fatalf("updated record: %v, %v; want the spare's inode %d, mode 0600", fi, err, spareIno)
	}
	if got, err := s.Get("sb-spare"); err != nil || got.PodName != "p2" {
		t.Fatalf("updated record: %+v, %v", got, err)
	}
	waitSpares(2)
	if ents, _ := os.ReadDir(filepath.Join(s.Dir(), "sandboxes")); len(ents) != 1 {
		t.Fatalf("sandboxes dir holds %v after the update: want the record alone", ents)
	}
	p := s.spares.Load()
	release()
	release()
	if s.spares.Load() != nil || p.count() != 0 {
		t.Fatal("release left spares")
	}
	if err := s.Create(ctx, New("sb-after")); err != nil {
		t.Fatal(err)
	}
	// A second pool replaces the first; releasing the first afterwards
	// leaves the second alone.
	first := s.KeepSpareRecords(1)
	second := s.KeepSpareRecords(1)
	first()
	if s.spares.Load() == nil {
		t.Fatal("releasing a replaced pool released its successor")
	}
	waitSpares(1)
	second()
	if s.spares.Load() != nil {
		t.Fatal("release left the pool in place")
	}
}
