package netns

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// threadNetns is the identity of the calling thread's network namespace.
func threadNetns(t *testing.T) netsetup.NetnsID {
	t.Helper()
	id, err := netsetup.IdentifyNetns("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestThread: a Thread runs prep and then every Do in the namespace it
// entered, only while that is the expected one, reports a failed entry as
// DoExpected does, and returns to the caller's namespace on Close.
func TestThread(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	p, err := Create(dir, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Remove(p) })
	want, err := netsetup.IdentifyNetns(p)
	if err != nil {
		t.Fatal(err)
	}

	var inPrep, inDo netsetup.NetnsID
	th := Enter(p, func() error { inPrep = threadNetns(t); return nil })
	if err := th.Do(&want, func() error { inDo = threadNetns(t); return nil }); err != nil {
		t.Fatalf("Do: %v", err)
	}
	if inPrep != want || inDo != want {
		t.Errorf("prep ran in %v, Do in %v, want %v", inPrep, inDo, want)
	}
	other := netsetup.NetnsID{Dev: want.Dev, Ino: want.Ino + 1}
	ran := false
	if err := th.Do(&other, func() error { ran = true; return nil }); !errors.Is(err, ErrReplaced) || !IsGone(err) || ran {
		t.Errorf("Do of another namespace: %v (gone %v), ran %v", err, IsGone(err), ran)
	}
	th.Close()
	th.Close()
	if err := th.Do(nil, func() error { ran = true; return nil }); err == nil || ran {
		t.Errorf("Do after Close: %v, ran %v", err, ran)
	}

	// prep's error is the first Do's, and fn does not run then.
	perr := errors.New("prep failed")
	th = Enter(p, func() error { return perr })
	if err := th.Do(&want, func() error { ran = true; return nil }); !errors.Is(err, perr) || ran {
		t.Errorf("Do after a failed prep: %v, ran %v", err, ran)
	}
	th.Close()

	// A FIFO is refused without blocking the open (and so Close).
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{filepath.Join(dir, "none"), dir, fifo} {
		th = Enter(bad, nil)
		err := th.Do(nil, func() error { ran = true; return nil })
		var ee *EnterError
		if !errors.As(err, &ee) || ran {
			t.Errorf("Do in %s: %v, ran %v", bad, err, ran)
		}
		th.Close()
	}
}

// TestThreadNotNetns: Enter on a path that is no network namespace fails
// without opening it (a FIFO would block the open until a writer came, and
// Close waits for the entry), for a FIFO, a plain file and a directory.
func TestThreadNotNetns(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "plain")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{fifo, file, dir} {
		done := make(chan error, 1)
		go func() {
			th := Enter(path, nil)
			err := th.Do(nil, func() error { return errors.New("fn ran") })
			th.Close()
			done <- err
		}()
		select {
		case err := <-done:
			if !errors.Is(err, ErrNotNetns) {
				t.Errorf("Enter(%s): %v, want ErrNotNetns", path, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("Enter(%s) still blocked after 10 s", path)
		}
	}
}
