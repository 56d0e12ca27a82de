package vmmsim

import (
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/openapi"
)

// SpecChecker is a simulator that validates the traffic it sees against its
// VMM's API spec (CH and FC are).
type SpecChecker interface {
	Violations() []openapi.Violation
	ResponseViolations() []openapi.Violation
}

// FailOnViolations makes t fail when it ends if s received a request, or
// gave an answer, that violates the spec; vmm names the VMM in the message.
func FailOnViolations(t testing.TB, s SpecChecker, vmm string) {
	t.Helper()
	t.Cleanup(func() {
		if v := s.Violations(); len(v) > 0 {
			t.Errorf("requests that violate the %s spec: %v", vmm, v)
		}
		if v := s.ResponseViolations(); len(v) > 0 {
			t.Errorf("simulator answers that violate the spec: %v", v)
		}
	})
}

// Answer is a canned HTTP answer.
type Answer struct {
	Status int
	Body   []byte
}

// Canned is an HTTP handler that answers each request with the Answer set
// for its key (Key(request)), or Default when none is. Set may be called
// while it serves (a fuzz target sets the answers of each input).
type Canned struct {
	Key     func(*http.Request) string
	Default Answer

	mu   sync.Mutex
	resp map[string]Answer
}

// Set replaces the answers.
func (c *Canned) Set(answers map[string]Answer) {
	c.mu.Lock()
	c.resp = answers
	c.mu.Unlock()
}

func (c *Canned) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	key := c.Key(r)
	c.mu.Lock()
	a, ok := c.resp[key]
	c.mu.Unlock()
	if !ok {
		a = c.Default
	}
	w.WriteHeader(a.Status)
	w.Write(a.Body) //nolint:errcheck
}

// ServeUnix serves h on a unix socket named name in a fresh directory owned
// by t, until t ends, and returns the socket's path.
func ServeUnix(t testing.TB, name string, h http.Handler) string {
	t.Helper()
	sock := socketFor(t, name)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { srv.Close() })
	return sock
}

// FuzzStatus maps any fuzzed int onto a final status net/http can write:
// 200..599. (A handler's 1xx is only an informational response: net/http
// then sends 200 as the final status, so the client never sees the 1xx.)
func FuzzStatus(s int) int {
	if s < 0 {
		s = -(s + 1)
	}
	return 200 + s%400
}
