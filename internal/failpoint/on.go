//go:build vmnic_failpoints

package failpoint

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// Enabled reports whether failpoints are compiled in (true: this is a
// test-only build that honours VMNIC_FAILPOINTS).
const Enabled = true

var (
	once    sync.Once
	armed   map[string]Action
	specErr error

	mu   sync.Mutex
	hits = map[string]int{}
)

func load() {
	armed, specErr = Parse(os.Getenv(Env))
}

// Inject acts on the point name when VMNIC_FAILPOINTS arms it. A name that
// is not registered panics (a programming error caught by any test run of a
// failpoint build); a VMNIC_FAILPOINTS that does not parse makes every point
// return that error, so the run fails loudly instead of testing nothing.
func Inject(name string) error {
	if _, ok := Lookup(name); !ok {
		panic(fmt.Sprintf("failpoint.Inject(%q): not registered in failpoint.Points", name))
	}
	once.Do(load)
	if specErr != nil {
		return specErr
	}
	a, ok := armed[name]
	if !ok {
		return nil
	}
	mu.Lock()
	hits[name]++
	n := hits[name]
	mu.Unlock()
	if a.Hit > 0 && n != a.Hit {
		return nil
	}
	record(name, a)
	switch a.Kind {
	case Crash:
		syscall.Kill(os.Getpid(), syscall.SIGKILL) //nolint:errcheck
		select {}                                  // SIGKILL cannot be caught; never returns
	case Error:
		return &InjectedError{Name: name}
	case Sleep:
		time.Sleep(a.Delay)
	}
	return nil
}

// record appends the firing to VMNIC_FAILPOINTS_LOG (write(2) completes
// before the process is killed, so the line survives a crash).
func record(name string, a Action) {
	path := os.Getenv(LogEnv)
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		fmt.Fprintf(os.Stderr, "failpoint log %s: %v\n", path, err)
		return
	}
	fmt.Fprintf(f, "%s %s %d\n", name, a, os.Getpid())
	f.Close()
}
