package netsetup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestMirrorInRuntimeDirFollowsEverySave(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	rt := filepath.Join(t.TempDir(), "rt")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	rec := New("mirrored")
	rec.RuntimeDir = rt
	if err := s.Create(ctx, rec); err != nil {
		t.Fatal(err)
	}
	// Hold the mirror open like a bind mount of the directory would see it:
	// by path, re-read after each save.
	readMirror := func() *NetSetup {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(rt, MirrorDir, MirrorFile))
		if err != nil {
			t.Fatalf("mirror: %v", err)
		}
		m, err := Decode(data, "")
		if err != nil {
			t.Fatalf("mirror: %v", err)
		}
		return m
	}
	if m := readMirror(); m.SandboxID != "mirrored" || len(m.NetworkConfigs) != 0 {
		t.Fatalf("mirror after create = %+v", m)
	}
	if got := rec.MirrorPath(); got != filepath.Join(rt, "netsetup", "netsetup.json") {
		t.Errorf("MirrorPath = %s", got)
	}
	if fi, err := os.Lstat(filepath.Join(rt, MirrorDir)); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("mirror dir: %v %v, want a 0700 directory", fi, err)
	}
	for _, ifname := range []string{"eth0", "net1"} {
		if _, err := s.Update(ctx, "mirrored", func(r *NetSetup) error {
			r.PutNIC(NIC{IfName: ifname, State: NICPending})
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if m := readMirror(); len(m.NetworkConfigs) != 2 || m.Phase != PhaseConfigured {
		t.Fatalf("mirror must follow every save: %+v", m)
	}
	tx, _ := s.Lock(ctx, "mirrored")
	tx.Delete()
	tx.Unlock()
	if _, err := os.Stat(filepath.Join(rt, MirrorDir, MirrorFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Delete must remove the mirror: %v", err)
	}

	// A runtime dir that is not there yet is skipped; a loose one is used
	// through its fd (see TestSaveIsWholeWithAChangedRuntimeDir).
	rec = New("loose")
	rec.RuntimeDir = filepath.Join(t.TempDir(), "missing")
	if err := s.Create(ctx, rec); err != nil {
		t.Fatalf("a missing runtime dir must not fail the save: %v", err)
	}
	loose := filepath.Join(t.TempDir(), "loose")
	os.Mkdir(loose, 0o777)
	os.Chmod(loose, 0o777)
	if _, err := s.Update(ctx, "loose", func(r *NetSetup) error { r.RuntimeDir = loose; return nil }); err != nil {
		t.Fatalf("mirror into a 0777 dir = %v, want it written through the dir's fd", err)
	}
	if _, err := os.Lstat(MirrorPathIn(loose)); err != nil {
		t.Fatalf("copy in a 0777 dir: %v", err)
	}
	// The copy's directory replaced by a symlink: nothing is written
	// through it; the directory is made again.
	rt2 := filepath.Join(t.TempDir(), "rt2")
	os.Mkdir(rt2, 0o700)
	elsewhere := t.TempDir()
	os.Symlink(elsewhere, filepath.Join(rt2, MirrorDir))
	if _, err := s.Update(ctx, "loose", func(r *NetSetup) error { r.RuntimeDir = rt2; return nil }); err != nil {
		t.Fatalf("mirror with a symlinked copy dir = %v", err)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Fatalf("wrote through the symlink: %v", ents)
	}
	// A runtime dir that is itself a symlink is not used, and not fatal.
	rt3 := filepath.Join(t.TempDir(), "rt3")
	os.Symlink(elsewhere, rt3)
	if _, err := s.Update(ctx, "loose", func(r *NetSetup) error { r.RuntimeDir = rt3; return nil }); err != nil {
		t.Fatalf("mirror into a symlinked runtime dir = %v", err)
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Fatalf("wrote through the symlinked runtime dir: %v", ents)
	}
}
