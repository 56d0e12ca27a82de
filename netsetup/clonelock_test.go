package netsetup

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestCloneLock: the clone MAC lock of a bridge excludes a second holder
// until it is released, leaves no file behind, refuses a bad bridge name,
// and Prune removes a file a killed holder left.
func TestCloneLock(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l, err := s.LockCloneMACs(ctx, "br0")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	if _, err := s.LockCloneMACs(short, "br0"); err == nil {
		t.Fatal("a second holder got the lock of br0")
	}
	cancel()
	other, err := s.LockCloneMACs(ctx, "br1")
	if err != nil {
		t.Fatalf("the lock of another bridge: %v", err)
	}
	other.Unlock()
	got := make(chan error, 1)
	go func() {
		l2, err := s.LockCloneMACs(ctx, "br0")
		if err == nil {
			l2.Unlock()
		}
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	l.Unlock()
	l.Unlock() // twice: nothing
	if err := <-got; err != nil {
		t.Fatalf("waiter after the release: %v", err)
	}
	if _, err := os.Stat(s.cloneDir()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("clone lock dir left: %v", err)
	}
	if _, err := s.LockCloneMACs(ctx, "../x"); err == nil {
		t.Error("a bridge name with a slash was taken")
	}
	// A killed holder's file: Prune removes it.
	if err := os.MkdirAll(s.cloneDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	left := filepath.Join(s.cloneDir(), "br2.lock")
	if err := os.WriteFile(left, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	removed, err := s.Prune(ctx, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Prune left %s (removed %v)", left, removed)
	}
}
