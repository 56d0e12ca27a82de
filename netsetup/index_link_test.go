package netsetup

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNetnsIndexIsTheLockFile: a new record's netns index entry is a second
// name of its lock file (no file of its own is made), holding the id; a
// taken name is replaced by an entry of its own; Delete and Unlock leave
// neither name.
func TestNetnsIndexIsTheLockFile(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	self := "/proc/self/ns/net"
	nsid, err := IdentifyNetns(self)
	if err != nil {
		t.Fatal(err)
	}
	ino := func(p string) uint64 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatalf("stat %s: %v", p, err)
		}
		return st.Ino
	}
	tx, err := s.Lock(ctx, "sb-link")
	if err != nil {
		t.Fatal(err)
	}
	rec := New("sb-link")
	rec.NetnsPath, rec.NetnsID = self, &nsid
	if err := tx.Save(rec); err != nil {
		t.Fatal(err)
	}
	entry := s.netnsIndexPath(nsid)
	if ino(entry) != ino(s.lockPath("sb-link")) {
		t.Errorf("index entry %s is a file of its own, want a name of the lock file", entry)
	}
	if data, _ := os.ReadFile(entry); string(data) != "sb-link\n" {
		t.Errorf("index entry holds %q", data)
	}
	tx.Unlock()
	if id, err := s.FindByNetns(nsid); err != nil || id != "sb-link" {
		t.Fatalf("FindByNetns = %q, %v", id, err)
	}

	// Another sandbox takes the namespace over: its entry replaces the name.
	if _, err := s.Update(ctx, "sb-link", func(r *NetSetup) error { r.NetnsID = nil; r.NetnsPath = ""; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(entry, []byte("sb-stale\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rec2 := New("sb-link2")
	rec2.NetnsPath, rec2.NetnsID = self, &nsid
	if err := s.Create(ctx, rec2); err != nil {
		t.Fatal(err)
	}
	if id, err := s.FindByNetns(nsid); err != nil || id != "sb-link2" {
		t.Fatalf("FindByNetns after the takeover = %q, %v", id, err)
	}
	for _, id := range []string{"sb-link", "sb-link2"} {
		tx, err := s.Lock(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Delete(); err != nil {
			t.Fatal(err)
		}
		tx.Unlock()
	}
	for _, d := range []string{"netns", "locks", "sandboxes"} {
		if ents, _ := os.ReadDir(filepath.Join(s.Dir(), d)); len(ents) != 0 {
			t.Errorf("%s left after Delete: %v", d, ents)
		}
	}
}
