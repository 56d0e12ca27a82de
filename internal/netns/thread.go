package netns

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/netsetup"
)

// Thread is an OS thread that enters a network namespace in the background
// (Enter) and then runs the functions given to Do there, one at a time, until
// Close returns it to the namespace it came from. It is DoExpected split in
// two, so that a caller can overlap the entry (a new locked thread, the
// namespace file's open and setns) and read-only work in the namespace (the
// prep function) with work of its own, such as a CNI ADD's file bookkeeping
// before it may change the host. Do and Close are called from one
// goroutine.
type Thread struct {
	path  string
	ready chan struct{} // closed once the entry (and prep) ended
	// Set before ready is closed:
	id      netsetup.NetnsID // identity of the namespace entered
	err     error            // the entry's error (an *EnterError)
	prepErr error            // prep's error
	work    chan func()      // nil when the entry failed
	closed  bool
}

// Enter starts a Thread for the network namespace at path and returns at
// once. prep (nil: none) runs in the namespace right after the entry; its
// error is the first Do's. Close the Thread when done, also when Do is never
// called.
func Enter(path string, prep func() error) *Thread {
	t := &Thread{path: path, ready: make(chan struct{})}
	go t.run(prep)
	return t
}

func (t *Thread) run(prep func() error) {
	// The path may be anything a caller passed as CNI_NETNS, and Enter runs
	// before the plugin has validated it: look at its file system before
	// opening it (opening a FIFO blocks until a writer comes, a device may
	// act on open), and open without blocking in case it was swapped since.
	var sfs unix.Statfs_t
	if err := unix.Statfs(t.path, &sfs); err != nil {
		t.fail(err)
		return
	}
	if sfs.Type != unix.NSFS_MAGIC {
		t.fail(ErrNotNetns)
		return
	}
	fd, err := unix.Open(t.path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		t.fail(err)
		return
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstatfs(fd, &sfs) != nil || sfs.Type != unix.NSFS_MAGIC || unix.Fstat(fd, &st) != nil {
		t.fail(ErrNotNetns)
		return
	}
	t.id = netsetup.NetnsID{Dev: st.Dev, Ino: st.Ino}
	home, err := enter(fd)
	if err != nil {
		t.fail(err)
		return
	}
	if prep != nil {
		t.prepErr = prep()
	}
	work := make(chan func())
	t.work = work
	close(t.ready)
	for fn := range work {
		fn()
	}
	_ = leave(home) // failing, the thread dies with this goroutine
}

func (t *Thread) fail(err error) {
	t.err = &EnterError{Path: t.path, Err: err}
	close(t.ready)
}

// Do waits for the entry and runs fn in the namespace, when it is want (nil:
// whatever was at the path): the errors are DoExpected's, an *EnterError
// when the entry failed or the namespace is not want (ErrReplaced); then fn
// does not run. The first Do returns prep's error instead of running fn
// when prep failed.
func (t *Thread) Do(want *netsetup.NetnsID, fn func() error) error {
	<-t.ready
	switch {
	case t.err != nil:
		return t.err
	case t.closed:
		return &EnterError{Path: t.path, Err: errors.New("the namespace's thread is closed")}
	case want != nil && *want != t.id:
		return &EnterError{Path: t.path, Err: fmt.Errorf("%w: the namespace there is %d:%d, the record's is %s", ErrReplaced, t.id.Dev, t.id.Ino, want)}
	}
	if err := t.prepErr; err != nil {
		t.prepErr = nil
		return err
	}
	errc := make(chan error, 1)
	t.work <- func() { errc <- fn() }
	return <-errc
}

// Close returns the thread to its namespace (or, failing that, lets it
// die) once any Do has ended. It waits for the entry to end, and may be
// called more than once.
func (t *Thread) Close() {
	<-t.ready
	if t.work != nil && !t.closed {
		close(t.work)
	}
	t.closed = true
}
