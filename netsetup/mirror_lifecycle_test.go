package netsetup

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestSaveIsWholeWithAChangedRuntimeDir is issue 16 item 1: a launcher that
// makes the runtime dir 0770 (so that a non-root VMM can create its
// socket) must not make a save fail after the record was written. A save
// either happens completely (record and copy) or not at all, and a changed
// runtime dir is never fatal: the copy is written through the directories'
// fds, so their mode cannot redirect it.
func TestSaveIsWholeWithAChangedRuntimeDir(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	rt := filepath.Join(t.TempDir(), "rt")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	rec := New("rtmode")
	rec.RuntimeDir = rt
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(rt, MirrorDir, MirrorFile)
	// The copy must be the record (plus the guest config rendered from it,
	// mirror_guest.go) whenever Save said yes;
	// whenever it said no the record must be what it was before.
	whole := func(what string, err error, before []byte) {
		t.Helper()
		now, rerr := os.ReadFile(s.Path("rtmode"))
		if rerr != nil {
			t.Fatalf("%s: record: %v", what, rerr)
		}
		if err != nil {
			if !bytes.Equal(now, before) {
				t.Fatalf("%s: Save failed (%v) but the record changed", what, err)
			}
			t.Fatalf("%s: Save failed: %v", what, err)
		}
		cp, cerr := os.ReadFile(copyPath)
		if cerr != nil || !sameRecord(t, cp, now) {
			t.Fatalf("%s: copy is not the record (%v):\n%s\nvs\n%s", what, cerr, cp, now)
		}
	}
	update := func(what string, ifname string) {
		t.Helper()
		before, _ := os.ReadFile(s.Path("rtmode"))
		_, err := s.Update(ctx, "rtmode", func(r *NetSetup) error {
			r.PutNIC(NIC{IfName: ifname, State: NICPending})
			return nil
		})
		whole(what, err, before)
	}

	if err := os.Chmod(rt, 0o770); err != nil {
		t.Fatal(err)
	}
	update("runtime dir 0770", "eth0")

	// The copy's own directory is vmnic's: a changed mode is repaired.
	if err := os.Chmod(filepath.Join(rt, MirrorDir), 0o777); err != nil {
		t.Fatal(err)
	}
	update("copy dir 0777", "net1")
	if fi, err := os.Lstat(filepath.Join(rt, MirrorDir)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("copy dir not repaired to 0700: %v %v", fi.Mode(), err)
	}

	// The copy's directory swapped for a symlink (the runtime dir is
	// group-writable): nothing is written through it, the save still
	// happens and the copy is back in a real directory.
	elsewhere := t.TempDir()
	if err := os.RemoveAll(filepath.Join(rt, MirrorDir)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(rt, MirrorDir)); err != nil {
		t.Fatal(err)
	}
	update("copy dir a symlink", "net2")
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Fatalf("wrote through the symlink: %v", ents)
	}
	if fi, err := os.Lstat(filepath.Join(rt, MirrorDir)); err != nil || !fi.IsDir() {
		t.Fatalf("copy dir after the symlink: %v %v", fi, err)
	}

	// Delete removes the copy through the directory fd as well.
	tx, err := s.Lock(ctx, "rtmode")
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Delete(); err != nil {
		t.Fatal(err)
	}
	tx.Unlock()
	if _, err := os.Lstat(copyPath); !os.IsNotExist(err) {
		t.Errorf("copy after Delete: %v", err)
	}
}

// TestCopyThatCannotBeWrittenIsReported: a copy the store cannot refresh
// never fails the save; it is reported to the store's logger.
func TestCopyThatCannotBeWrittenIsReported(t *testing.T) {
	var logged bytes.Buffer
	s, err := OpenWithOptions(t.TempDir(), Options{Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if err != nil {
		t.Fatal(err)
	}
	rt := t.TempDir()
	// A directory where the copy's file belongs: the rename cannot replace it.
	if err := os.MkdirAll(filepath.Join(rt, MirrorDir, MirrorFile, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(rt, MirrorDir), 0o700)
	rec := New("unwritable")
	rec.RuntimeDir = rt
	if err := s.Create(context.Background(), rec); err != nil {
		t.Fatalf("a copy that cannot be written failed the save: %v", err)
	}
	if _, err := s.Get("unwritable"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logged.String(), "cannot refresh the record's copy") {
		t.Errorf("not reported; log:\n%s", logged.String())
	}
	if ents, _ := os.ReadDir(filepath.Join(rt, MirrorDir)); len(ents) != 1 {
		t.Errorf("temp files left in the copy dir: %v", ents)
	}
}

// sameRecord reports whether the live copy cp carries exactly the record
// rec: the same JSON document once the copy's guest_config is set aside.
func sameRecord(t *testing.T, cp, rec []byte) bool {
	t.Helper()
	var c, r map[string]any
	if err := json.Unmarshal(cp, &c); err != nil {
		t.Fatalf("copy: %v", err)
	}
	if err := json.Unmarshal(rec, &r); err != nil {
		t.Fatalf("record: %v", err)
	}
	if _, ok := c["guest_config"]; !ok {
		t.Errorf("the copy has no guest_config")
	}
	delete(c, "guest_config")
	return reflect.DeepEqual(c, r)
}
