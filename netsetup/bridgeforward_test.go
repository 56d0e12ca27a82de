package netsetup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ruleCounter stands in for the iptables change: it counts the adds and
// removes the refcount asks for.
type ruleCounter struct{ adds, removes atomic.Int32 }

func (c *ruleCounter) add() error    { c.adds.Add(1); return nil }
func (c *ruleCounter) remove() error { c.removes.Add(1); return nil }

func TestBridgeForwardRefcount(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	dir := filepath.Join(s.Dir(), "bridge-forward")
	var c ruleCounter
	for _, u := range []string{"a/eth0", "a/eth0", "b/eth0"} {
		if err := s.AcquireBridgeForward(ctx, "br0", u, c.add); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.adds.Load(); n != 1 {
		t.Fatalf("rules added %d times for three acquires, want once", n)
	}
	if users, err := s.BridgeForwardUsers("br0"); err != nil || strings.Join(users, ",") != "a/eth0,b/eth0" {
		t.Fatalf("users = %v, %v", users, err)
	}
	// The on-disk format existing state dirs have: one user a line, sorted.
	data, err := os.ReadFile(filepath.Join(dir, "br0.users"))
	if err != nil || string(data) != "a/eth0\nb/eth0\n" {
		t.Fatalf("br0.users = %q, %v", data, err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "br0.users"), filepath.Join(dir, "br0.lock")} {
		fi, err := os.Stat(p)
		want := os.FileMode(0o600)
		if p == dir {
			want = 0o700
		}
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %o", p, fi.Mode().Perm(), err, want)
		}
	}
	for _, u := range []string{"a/eth0", "nobody"} {
		if err := s.ReleaseBridgeForward(ctx, "br0", u, c.remove); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.removes.Load(); n != 0 {
		t.Fatalf("rules removed while b/eth0 uses them")
	}
	if err := s.ReleaseBridgeForward(ctx, "br0", "b/eth0", c.remove); err != nil {
		t.Fatal(err)
	}
	if n := c.removes.Load(); n != 1 {
		t.Fatalf("rules removed %d times with the last user, want once", n)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the last release left %s: %v", dir, err)
	}
	if err := s.ReleaseBridgeForward(ctx, "br0", "b/eth0", c.remove); err != nil || c.removes.Load() != 1 {
		t.Fatalf("release again = %v (removes %d): want a no-op", err, c.removes.Load())
	}
	if users, err := s.BridgeForwardUsers("br0"); err != nil || len(users) != 0 {
		t.Fatalf("users after the last release = %v, %v", users, err)
	}
}

func TestBridgeForwardReadsAnExistingStateDir(t *testing.T) {
	s := openStore(t)
	dir := filepath.Join(s.Dir(), "bridge-forward")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "br1.users"), []byte("old/eth0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var c ruleCounter
	if err := s.AcquireBridgeForward(context.Background(), "br1", "new/eth0", c.add); err != nil || c.adds.Load() != 0 {
		t.Fatalf("acquire next to a recorded user = %v, %d adds: want no add", err, c.adds.Load())
	}
	for _, u := range []string{"new/eth0", "old/eth0"} {
		if err := s.ReleaseBridgeForward(context.Background(), "br1", u, c.remove); err != nil {
			t.Fatal(err)
		}
	}
	if c.removes.Load() != 1 {
		t.Fatalf("removes = %d, want 1 with the last recorded user", c.removes.Load())
	}
}

func TestBridgeForwardFailedChangeRecordsNothing(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	dir := filepath.Join(s.Dir(), "bridge-forward")
	boom := errors.New("iptables: boom")
	if err := s.AcquireBridgeForward(ctx, "br0", "a/eth0", func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("acquire with a failing add = %v", err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed first acquire left %s: %v", dir, err)
	}
	var c ruleCounter
	if err := s.AcquireBridgeForward(ctx, "br0", "a/eth0", c.add); err != nil || c.adds.Load() != 1 {
		t.Fatalf("acquire after the failure = %v, %d adds", err, c.adds.Load())
	}
	if err := s.ReleaseBridgeForward(ctx, "br0", "a/eth0", func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("release with a failing remove = %v", err)
	}
	if users, _ := s.BridgeForwardUsers("br0"); strings.Join(users, ",") != "a/eth0" {
		t.Fatalf("a failed release dropped the user: %v", users)
	}
}

func TestBridgeForwardRefusesBadNames(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	var c ruleCounter
	for _, tc := range []struct{ bridge, user, want string }{
		{"", "a/eth0", "bridge name"},
		{"../x", "a/eth0", "bridge name"},
		{"a-bridge-name-too-long", "a/eth0", "bridge name"},
		{"br0", "", "user"},
		{"br0", "a/eth0\nb/eth0", "user"},
		{"br0", " a/eth0", "user"},
	} {
		if err := s.AcquireBridgeForward(ctx, tc.bridge, tc.user, c.add); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Acquire(%q, %q) = %v, want an error naming the %s", tc.bridge, tc.user, err, tc.want)
		}
	}
	if c.adds.Load() != 0 {
		t.Fatalf("a refused acquire changed the rules")
	}
}

// The refcount lock is waited for only until the context is done.
func TestBridgeForwardLockWaitEndsAtDeadline(t *testing.T) {
	s := openStore(t)
	held, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- s.AcquireBridgeForward(context.Background(), "br0", "a/eth0", func() error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var c ruleCounter
	start := time.Now()
	err := s.AcquireBridgeForward(ctx, "br0", "b/eth0", c.add)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("acquire while the lock is held = %v, want a deadline error", err)
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Fatalf("gave up after %v, before the deadline", waited)
	}
	// Another bridge is not blocked.
	if err := s.AcquireBridgeForward(context.Background(), "br1", "b/eth0", c.add); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if users, _ := s.BridgeForwardUsers("br0"); strings.Join(users, ",") != "a/eth0" {
		t.Fatalf("users of br0 = %v: the timed-out acquire must record nothing", users)
	}
}

// Many users on one bridge at once: the rules are added once and removed
// once, and no user is lost.
func TestBridgeForwardConcurrentUsers(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	var c ruleCounter
	const n = 16
	run := func(f func(user string) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				errs <- f(fmt.Sprintf("sb%d/eth0", i))
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	run(func(u string) error { return s.AcquireBridgeForward(ctx, "br0", u, c.add) })
	if users, _ := s.BridgeForwardUsers("br0"); len(users) != n || c.adds.Load() != 1 {
		t.Fatalf("%d users, %d adds after %d concurrent acquires", len(users), c.adds.Load(), n)
	}
	run(func(u string) error { return s.ReleaseBridgeForward(ctx, "br0", u, c.remove) })
	if users, _ := s.BridgeForwardUsers("br0"); len(users) != 0 || c.removes.Load() != 1 {
		t.Fatalf("%d users, %d removes after %d concurrent releases", len(users), c.removes.Load(), n)
	}
	if _, err := os.Lstat(filepath.Join(s.Dir(), "bridge-forward")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("bridge-forward left after the last release: %v", err)
	}
}

func TestVolatileDirsRefuseSymlinks(t *testing.T) {
	s := openStore(t)
	elsewhere := t.TempDir()
	for _, d := range []string{"bridge-forward", "cni-containers"} {
		if err := os.Symlink(elsewhere, filepath.Join(s.Dir(), d)); err != nil {
			t.Fatal(err)
		}
	}
	var c ruleCounter
	if err := s.AcquireBridgeForward(context.Background(), "br0", "a/eth0", c.add); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("acquire through a symlinked bridge-forward = %v, want a symlink error", err)
	}
	if err := s.IndexContainer("c1", "sb1"); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("index through a symlinked cni-containers = %v, want a symlink error", err)
	}
	if c.adds.Load() != 0 {
		t.Error("rules added through a symlinked state dir")
	}
	if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
		t.Errorf("files written through the symlinks: %v", ents)
	}
}

func TestBridgeForwardBridges(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.BridgeForwardBridges(); err != nil || len(got) != 0 {
		t.Fatalf("BridgeForwardBridges of a new store = %v, %v; want none", got, err)
	}
	noop := func() error { return nil }
	for _, b := range []string{"vmbr1", "vmbr0"} {
		if err := s.AcquireBridgeForward(context.Background(), b, "sb/eth0", noop); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.BridgeForwardBridges()
	if err != nil || !slices.Equal(got, []string{"vmbr0", "vmbr1"}) {
		t.Fatalf("BridgeForwardBridges = %v, %v; want [vmbr0 vmbr1]", got, err)
	}
	if err := s.ReleaseBridgeForward(context.Background(), "vmbr0", "sb/eth0", noop); err != nil {
		t.Fatal(err)
	}
	if got, err := s.BridgeForwardBridges(); err != nil || !slices.Equal(got, []string{"vmbr1"}) {
		t.Fatalf("BridgeForwardBridges after the release = %v, %v; want [vmbr1]", got, err)
	}
}
