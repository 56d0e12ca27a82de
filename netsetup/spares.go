package netsetup

import (
	"errors"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// This file holds the spare record files: unnamed files (O_TMPFILE) in the
// sandboxes dir that a long-running process (the NRI hook) makes ahead of
// time, so that a record write finds its inode already allocated: a new
// record is the spare linked in, a new version of a record the spare
// given a temp name and swapped in. On ext4 that allocation is nearly all of a new record's cost
// when the inode table block it lands in must be read from the disk. A
// spare has no name, so no listing or audit of the state dir sees it, and
// it goes with its file descriptor: a crash leaves nothing behind (after a
// power loss, ext4's orphan list frees it at mount).

// spares is a store's pool of spare record files.
type spares struct {
	dir  string
	want int

	mu   sync.Mutex
	fds  []*os.File
	last time.Time // of the last take
	kick chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once // of release
}

// KeepSpareRecords makes the store keep up to n spare record files ready
// (made by a goroutine, refilled after each use), for the new records of a
// process that makes many (see writeNewThen). release stops the goroutine
// and frees the spares; the store works on without them. A store keeps
// one pool: a second call releases the first.
func (s *Store) KeepSpareRecords(n int) (release func()) {
	if n <= 0 {
		return func() {}
	}
	p := &spares{dir: s.sandboxDir, want: n, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	if old := s.spares.Swap(p); old != nil {
		old.release()
	}
	go p.fill(s)
	return func() {
		s.spares.CompareAndSwap(p, nil)
		p.release()
	}
}

// takeSpare returns a spare record file of the sandboxes dir, or nil when
// there is none.
func (s *Store) takeSpare() *os.File {
	p := s.spares.Load()
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.fds)
	if n == 0 {
		return nil
	}
	f := p.fds[n-1]
	p.fds = p.fds[:n-1]
	p.last = time.Now()
	select {
	case p.kick <- struct{}{}:
	default:
	}
	return f
}

// spareQuiet is how long after a spare was taken the pool waits before it
// makes another: the taker is in the middle of a record write then, and an
// inode allocation on the same filesystem (ext4's journal, an inode table
// block read from the disk) would slow it down.
const spareQuiet = 5 * time.Millisecond

// fill keeps the pool full until release, making each spare once no spare
// was taken for spareQuiet. A filesystem without O_TMPFILE ends it; another
// error (a full disk) is logged once and retried later.
func (p *spares) fill(s *Store) {
	defer close(p.done)
	logged := false
	for {
		var err error
		for p.count() < p.want && err == nil {
			if wait := p.quietFor(); wait > 0 {
				select {
				case <-p.stop:
					return
				case <-time.After(wait):
				}
				continue
			}
			var f *os.File
			if f, err = openUnnamed(p.dir); err == nil {
				p.put(f)
			}
		}
		if err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
				return // no O_TMPFILE here: new records use temp files
			}
			if !logged {
				s.logger.Warn("cannot make spare record files", "dir", p.dir, "error", err)
				logged = true
			}
		}
		retry := time.Duration(0)
		if err != nil {
			retry = 10 * time.Second
		}
		select {
		case <-p.stop:
			return
		case <-p.kick:
		case <-after(retry):
		}
	}
}

// after is time.After, never firing for 0.
func after(d time.Duration) <-chan time.Time {
	if d == 0 {
		return nil
	}
	return time.After(d)
}

// quietFor is how long to wait until spareQuiet has passed since the last
// take (0: it has).
func (p *spares) quietFor() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return spareQuiet - time.Since(p.last)
}

func (p *spares) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.fds)
}

func (p *spares) put(f *os.File) {
	p.mu.Lock()
	p.fds = append(p.fds, f)
	p.mu.Unlock()
}

// release stops the filler and frees the spares; a second call does
// nothing.
func (p *spares) release() {
	p.once.Do(func() {
		close(p.stop)
		<-p.done
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, f := range p.fds {
			f.Close()
		}
		p.fds = nil
	})
}

// openUnnamed makes an unnamed file (0600) in dir: O_TMPFILE, linkable
// (no O_EXCL).
func openUnnamed(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "open O_TMPFILE", Path: dir, Err: err}
	}
	return os.NewFile(uintptr(fd), dir+"/(unnamed)"), nil
}
