package netsetup

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLockWaitsAndHonoursContext(t *testing.T) {
	s := openStore(t)
	tx, err := s.Lock(context.Background(), "sb1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(ctx, "sb1"); err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Lock = %v, want a deadline error", err)
	}
	// Another sandbox is not blocked.
	tx2, err := s.Lock(context.Background(), "sb2")
	if err != nil {
		t.Fatal(err)
	}
	tx2.Unlock()
	tx.Unlock()
	// Once released, the lock is free again.
	tx, err = s.Lock(ctx, "sb1")
	if err != nil {
		t.Fatalf("Lock after Unlock: %v", err)
	}
	tx.Unlock()
}

// A sandbox's lock makes no file: every lock is a byte of the one shared
// lock file, which the store makes when it is opened.
func TestLockMakesNoFile(t *testing.T) {
	s := openStore(t)
	for i := 0; i < 20; i++ {
		tx, err := s.Lock(context.Background(), fmt.Sprintf("sb-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Unlock()
	}
	ents, err := os.ReadDir(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, ","); got != "netns,sandboxes,"+SandboxLockFile {
		t.Fatalf("state dir holds %s, want only the store's dirs and the shared lock file", got)
	}
	fi, err := os.Stat(filepath.Join(s.Dir(), SandboxLockFile))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 0 {
		t.Fatalf("shared lock file: %v, %v (want mode 0600, empty)", fi, err)
	}
}

func TestLockOffsetsAreStableAnd63Bit(t *testing.T) {
	seen := map[int64]string{}
	for i := 0; i < 10000; i++ {
		id := fmt.Sprintf("sandbox-%d", i)
		off := lockOffset(id)
		if off < 0 {
			t.Fatalf("offset of %s = %d, want ≥ 0", id, off)
		}
		if off != lockOffset(id) {
			t.Fatalf("offset of %s is not stable", id)
		}
		if other, ok := seen[off]; ok {
			t.Fatalf("%s and %s share a lock byte", id, other)
		}
		seen[off] = id
	}
}

// lockHolderEnv makes the test binary a process that takes a sandbox's
// lock, says "locked" and waits to be killed.
const lockHolderEnv = "VMNIC_NETSETUP_LOCK_HOLDER"

// holdLock: spec "<stateDir>|<id>".
func holdLock(spec string) {
	dir, id, _ := strings.Cut(spec, "|")
	s, err := Open(dir)
	if err == nil {
		_, err = s.Lock(context.Background(), id)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lock holder:", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	select {}
}

// A lock another process holds is waited for, and goes when that process
// is killed (an OFD lock is released with its last file descriptor).
func TestLockHeldByAnotherProcessIsReleasedWhenItDies(t *testing.T) {
	s := openStore(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), lockHolderEnv+"="+s.Dir()+"|sb1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "locked\n" {
		t.Fatalf("lock holder said %q, %v", line, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(ctx, "sb1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock held by another process = %v, want a deadline error", err)
	}
	if tx, err := s.Lock(context.Background(), "sb2"); err != nil {
		t.Fatalf("Lock of another sandbox: %v", err)
	} else {
		tx.Unlock()
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	tx, err := s.Lock(ctx2, "sb1")
	if err != nil {
		t.Fatalf("Lock after its holder died: %v", err)
	}
	tx.Unlock()
}
