package netsetup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFindByNetns(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	self := "/proc/self/ns/net"
	nsid, err := IdentifyNetns(self)
	if err != nil {
		t.Fatalf("IdentifyNetns(%s): %v", self, err)
	}
	if _, err := s.FindByNetns(nsid); !errors.Is(err, ErrNotFound) {
		t.Fatalf("FindByNetns on an empty store = %v", err)
	}
	rec := New("sb-ns")
	rec.NetnsPath = self
	rec.NetnsID = &nsid
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	if id, err := s.FindByNetns(nsid); err != nil || id != "sb-ns" {
		t.Fatalf("FindByNetns = %q, %v; want sb-ns", id, err)
	}
	// A stale index entry (the record now points elsewhere) does not match.
	other := NetnsID{Dev: nsid.Dev, Ino: nsid.Ino + 1}
	if _, err := s.Update(ctx, "sb-ns", func(r *NetSetup) error { r.NetnsID = &other; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FindByNetns(nsid); !errors.Is(err, ErrNotFound) {
		t.Fatalf("old index entry must be gone: %v", err)
	}
	if _, err := s.FindByNetns(other); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an index entry whose live netns differs must not match: %v", err)
	}
	tx, _ := s.Lock(ctx, "sb-ns")
	tx.Delete()
	tx.Unlock()
	if ents, _ := os.ReadDir(filepath.Join(s.Dir(), "netns")); len(ents) != 0 {
		t.Fatalf("Delete left netns index entries: %v", ents)
	}
}

func TestIdentifyNetnsRefusesOtherFiles(t *testing.T) {
	regular := filepath.Join(t.TempDir(), "f")
	os.WriteFile(regular, nil, 0o600)
	for _, p := range []string{regular, "/proc/self/ns/mnt", "/nonexistent/netns", ""} {
		if _, err := IdentifyNetns(p); err == nil {
			t.Errorf("IdentifyNetns(%q) accepted a path that is not a network namespace", p)
		}
	}
}

func TestContainerIndex(t *testing.T) {
	s := openStore(t)
	dir := filepath.Join(s.Dir(), "cni-containers")
	// No entry for a container that is its own sandbox, or an id that could
	// escape the directory.
	for _, cid := range []string{"", "sb1", "../x"} {
		if err := s.IndexContainer(cid, "sb1"); err != nil {
			t.Fatalf("IndexContainer(%q) = %v", cid, err)
		}
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("no entry was due, but %s exists: %v", dir, err)
	}
	if got := s.ContainerSandbox("c1"); got != "" {
		t.Fatalf("ContainerSandbox on an empty index = %q", got)
	}
	if err := s.IndexContainer("c1", "sb1"); err != nil {
		t.Fatal(err)
	}
	if got := s.ContainerSandbox("c1"); got != "sb1" {
		t.Fatalf("ContainerSandbox(c1) = %q, want sb1", got)
	}
	// The on-disk format existing state dirs have: the sandbox id and a newline.
	data, err := os.ReadFile(filepath.Join(dir, "c1"))
	if err != nil || string(data) != "sb1\n" {
		t.Fatalf("entry = %q, %v", data, err)
	}
	for p, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, "c1"): 0o600} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %o", p, fi.Mode().Perm(), err, want)
		}
	}
	if err := s.IndexContainer("c1", "sb2"); err != nil || s.ContainerSandbox("c1") != "sb2" {
		t.Fatalf("re-index to sb2 = %v, entry %q", err, s.ContainerSandbox("c1"))
	}
	if err := s.IndexContainer("c2", "sb2"); err != nil {
		t.Fatal(err)
	}

	// An entry stays while a NIC of the container is recorded, and is not
	// dropped for another sandbox.
	rec := New("sb2")
	rec.PutNIC(NIC{ID: "eth0", IfName: "eth0", Tap: "tapeth0", ContainerID: "c1", State: NICPending})
	s.UnindexContainers("sb2", rec, "c1")
	s.UnindexContainers("sb1", nil, "c1", "c2")
	if s.ContainerSandbox("c1") != "sb2" || s.ContainerSandbox("c2") != "sb2" {
		t.Fatalf("entries dropped while in use: c1=%q c2=%q", s.ContainerSandbox("c1"), s.ContainerSandbox("c2"))
	}
	s.UnindexContainers("sb2", rec, "c1", "c2")
	if s.ContainerSandbox("c1") != "sb2" || s.ContainerSandbox("c2") != "" {
		t.Fatalf("after unindexing c2: c1=%q c2=%q", s.ContainerSandbox("c1"), s.ContainerSandbox("c2"))
	}
	s.UnindexContainers("sb2", nil, "c1")
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the last unindex left %s: %v", dir, err)
	}
}

func TestContainerIndexRefusesBadEntries(t *testing.T) {
	s := openStore(t)
	dir := filepath.Join(s.Dir(), "cni-containers")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("sb1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, mk := range map[string]func(p string) error{
		"symlink": func(p string) error { return os.Symlink(victim, p) },
		"garbage": func(p string) error { return os.WriteFile(p, []byte("../../etc\n"), 0o600) },
		"dir":     func(p string) error { return os.Mkdir(p, 0o700) },
	} {
		if err := mk(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
		if got := s.ContainerSandbox(name); got != "" {
			t.Errorf("ContainerSandbox of a %s entry = %q, want none", name, got)
		}
	}
	if err := s.IndexContainer("c1", "../x"); err == nil {
		t.Error("IndexContainer accepted a sandbox id that could escape the state dir")
	}
}

// The netns index entry is a hard link to the record version that first
// named the namespace (no file of its own), it survives the record's
// rewrites, and an entry in the older form (the id as a line) still works.
func TestNetnsIndexEntryIsALink(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	self := "/proc/self/ns/net"
	nsid, err := IdentifyNetns(self)
	if err != nil {
		t.Fatal(err)
	}
	rec := New("sb-link")
	rec.NetnsPath, rec.NetnsID = self, &nsid
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	entry := s.netnsIndexPath(nsid)
	fi, err := os.Lstat(entry)
	if err != nil {
		t.Fatal(err)
	}
	first, err := os.Lstat(s.Path("sb-link"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(fi, first) {
		t.Errorf("netns index entry %s is not a link to the record's first version", entry)
	}
	// A rewrite that keeps the netns leaves the entry alone.
	if _, err := s.Update(ctx, "sb-link", func(r *NetSetup) error { r.PodName = "p"; return nil }); err != nil {
		t.Fatal(err)
	}
	if again, err := os.Lstat(entry); err != nil || !os.SameFile(again, fi) {
		t.Errorf("the rewrite replaced the netns index entry (%v)", err)
	}
	if id, err := s.FindByNetns(nsid); err != nil || id != "sb-link" {
		t.Fatalf("FindByNetns = %q, %v; want sb-link", id, err)
	}
	// The older form of an entry: the id as a line.
	if err := os.Remove(entry); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(entry, []byte("sb-link\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if id, err := s.FindByNetns(nsid); err != nil || id != "sb-link" {
		t.Fatalf("FindByNetns with an id-line entry = %q, %v; want sb-link", id, err)
	}
	// A new netns for the record replaces the entry of the old one.
	if _, err := s.Update(ctx, "sb-link", func(r *NetSetup) error { r.NetnsID = nil; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(entry); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("entry of a netns the record no longer names: %v", err)
	}
	if _, err := s.Update(ctx, "sb-link", func(r *NetSetup) error { r.NetnsID = &nsid; return nil }); err != nil {
		t.Fatal(err)
	}
	if id, err := s.FindByNetns(nsid); err != nil || id != "sb-link" {
		t.Fatalf("FindByNetns after re-indexing = %q, %v", id, err)
	}
}

func TestEntryID(t *testing.T) {
	for in, want := range map[string]string{
		"sb1\n":                         "sb1",
		`{"sandbox_id":"sb2","x":1}`:    "sb2",
		"  {\"sandbox_id\": \"sb3\"}\n": "sb3",
		`{"sandbox_id":"../x"}`:         "",
		`{"sandbox_id":`:                "",
		"":                              "",
		"a/b":                           "",
	} {
		if got := entryID([]byte(in)); got != want {
			t.Errorf("entryID(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestNetnsIndexEntryDamagedWithItsRecord: the entry is a hard link to the
// record, so a record damaged in place (here: emptied, and made to name
// another sandbox) damages the entry too. The entry must still name the
// sandbox: FindByNetns and IndexedNetns find it, Prune keeps it, and once
// the record is quarantined IndexedNetns still finds the namespace through
// the quarantined file, for the rebuild.
func TestNetnsIndexEntryDamagedWithItsRecord(t *testing.T) {
	self := "/proc/self/ns/net"
	nsid, err := IdentifyNetns(self)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data string
	}{
		{"empty", ""},
		{"other id", `{"schema": 2, "sandbox_id": "sb-other"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			ctx := context.Background()
			var hint []NetnsID
			s.SetRebuild(func(_ context.Context, id, _ string) (*NetSetup, error) {
				hint = s.IndexedNetns(id)
				return nil, nil
			})
			rec := New("sb-dmg")
			rec.NetnsPath, rec.NetnsID = self, &nsid
			if err := s.Create(ctx, rec); err != nil {
				t.Fatal(err)
			}
			// In place, as a power loss or a write over the file does.
			if err := os.WriteFile(s.Path("sb-dmg"), []byte(tc.data), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := s.IndexedNetns("sb-dmg"); len(got) != 1 || got[0] != nsid {
				t.Errorf("IndexedNetns of the damaged record = %v, want [%v]", got, nsid)
			}
			if tc.data == "" {
				if id, err := s.FindByNetns(nsid); err != nil || id != "sb-dmg" {
					t.Errorf("FindByNetns = %q, %v; want sb-dmg", id, err)
				}
			}
			removed, err := s.Prune(ctx, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(s.netnsIndexPath(nsid)); err != nil {
				t.Fatalf("Prune removed the entry of a damaged record (removed %v): %v", removed, err)
			}
			tx, err := s.Lock(ctx, "sb-dmg")
			if err != nil {
				t.Fatal(err)
			}
			_, err = tx.Load()
			tx.Unlock()
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("Load of the damaged record = %v, want quarantined, nothing rebuilt", err)
			}
			if len(hint) != 1 || hint[0] != nsid {
				t.Errorf("IndexedNetns during the rebuild = %v, want [%v]", hint, nsid)
			}
		})
	}
}
