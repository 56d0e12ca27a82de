// Package vmmsim holds in-process simulators of the Cloud Hypervisor and
// Firecracker API servers, for tests. Each serves HTTP on a unix socket,
// behaves per version as the project's VMM API reference describes (status
// codes, error bodies, strict/lenient JSON, eject delays, hot-plug rules,
// Cloud Hypervisor v49–v52 dying on a second remove-device), validates every
// request it receives against the upstream API spec (../shared/specs/*.yaml
// from the repository root) and keeps what tests assert on: the call log,
// spec violations, the device list, and whether it died.
//
// Fault injection (SetFault) makes it answer late, never, with garbage, or
// close the connection mid-answer.
package vmmsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/openapi"
)

// Call is one request the simulator received.
type Call struct {
	Method string
	Path   string
	Body   []byte
	Status int    // status answered; 0 when none was (fault, death)
	Fault  string // fault mode applied, if any
	Fds    int    // fds received with the request (SCM_RIGHTS)
}

// FaultMode selects how the simulator misbehaves.
type FaultMode int

const (
	FaultNone         FaultMode = iota
	FaultDelay                  // answer normally after Fault.Delay
	FaultNeverAnswer            // accept the request, never answer (until the client gives up)
	FaultGarbage                // answer bytes that are not HTTP, then close
	FaultCloseMidCall           // start an answer, then close the connection; the request is not applied
	FaultLoseAnswer             // apply the request, then close the connection without answering
	FaultBadBody                // answer 200 with a body that is not JSON; the request is not applied
	FaultReply                  // answer Fault.Status with Fault.Body; the request is not applied
)

func (m FaultMode) String() string {
	return [...]string{"none", "delay", "never-answer", "garbage", "close-mid-call", "lose-answer", "bad-body", "reply"}[m]
}

// Fault is an injected misbehaviour.
type Fault struct {
	Mode  FaultMode
	Delay time.Duration // FaultDelay
	// Method and Path restrict the fault to matching requests ("" = any);
	// Path is the request path, e.g. "/api/v1/vm.info".
	Method string
	Path   string
	// Times is how many matching requests get the fault; 0 = all.
	Times int
	// Status and Body are the canned answer of FaultReply.
	Status int
	Body   string
}

// gap is a known difference between the spec and the real server (the
// reference lists them); requests hitting it are recorded, not violations.
type gap struct {
	method, template, reason string
}

// server is the machinery both simulators share.
type server struct {
	name    string
	socket  string
	spec    *openapi.Spec
	specErr error
	gaps    []gap
	ln      *net.UnixListener
	srv     *http.Server
	stop    chan struct{}
	closed  sync.Once
	handle  func(w *reply, r *http.Request, body []byte) // VMM logic; runs under mu
	// takesFds: the VMM reads SCM_RIGHTS fds (Cloud Hypervisor); one that
	// does not (Firecracker) never sees them, and they are closed.
	takesFds bool

	mu         sync.Mutex // the "VMM thread": requests are served one at a time
	calls      []Call
	violations []openapi.Violation
	respViol   []openapi.Violation
	gapHits    []string
	fault      *Fault
	faultLeft  int
	dead       bool
	deathNote  string
}

func newServer(name, socket string, spec *openapi.Spec, specErr error, gaps []gap) (*server, error) {
	if len(socket) >= 108 {
		return nil, fmt.Errorf("%s simulator: socket path too long for a unix socket: %s", name, socket)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("%s simulator: %w", name, err)
	}
	// A crashed VMM leaves its socket file behind: connections are refused.
	ln.SetUnlinkOnClose(false)
	s := &server{name: name, socket: socket, spec: spec, specErr: specErr, gaps: gaps, ln: ln, stop: make(chan struct{})}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve), ReadHeaderTimeout: 10 * time.Second, ConnContext: withConn}
	go s.srv.Serve(fdListener{ln}) //nolint:errcheck // ends with ErrServerClosed or when the VMM "dies"
	return s, nil
}

// Socket is the API socket path.
func (s *server) Socket() string { return s.socket }

// SpecLoaded reports whether requests are validated against the spec.
func (s *server) SpecLoaded() bool { return s.spec != nil }

// SpecError says why the spec is not loaded (nil when it is).
func (s *server) SpecError() error { return s.specErr }

// Close stops the simulator and removes its socket.
func (s *server) Close() error {
	s.closed.Do(func() {
		close(s.stop)
		s.srv.Close()
		os.Remove(s.socket)
	})
	return nil
}

// Calls returns a copy of the call log.
func (s *server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Call(nil), s.calls...)
}

// CountCalls counts received requests with this method and path.
func (s *server) CountCalls(method, path string) int {
	n := 0
	for _, c := range s.Calls() {
		if c.Method == method && c.Path == path {
			n++
		}
	}
	return n
}

// Violations returns the spec violations of the requests received.
func (s *server) Violations() []openapi.Violation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]openapi.Violation(nil), s.violations...)
}

// ResponseViolations returns spec violations of the simulator's own 2xx
// answers (a check on the simulator's fidelity).
func (s *server) ResponseViolations() []openapi.Violation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]openapi.Violation(nil), s.respViol...)
}

// GapHits lists requests that hit a known spec-vs-server gap.
func (s *server) GapHits() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.gapHits...)
}

// Dead reports whether the simulated VMM died (and why).
func (s *server) Dead() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dead, s.deathNote
}

// SetFault injects a fault; a zero Fault (or ClearFault) removes it.
func (s *server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.Mode == FaultNone {
		s.fault = nil
		return
	}
	s.fault = &f
	s.faultLeft = f.Times
}

// ClearFault removes an injected fault.
func (s *server) ClearFault() { s.SetFault(Fault{}) }

// takeFault returns the fault for this request, if any (mu held).
func (s *server) takeFault(method, path string) *Fault {
	f := s.fault
	if f == nil || (f.Method != "" && f.Method != method) || (f.Path != "" && f.Path != path) {
		return nil
	}
	if f.Times > 0 {
		s.faultLeft--
		if s.faultLeft <= 0 {
			s.fault = nil
		}
	}
	return f
}

// reply collects the VMM logic's answer.
type reply struct {
	status int
	body   []byte
	die    string // non-empty: the VMM dies instead of answering
	// files are the fds received with the request; a handler that keeps
	// them sets files to nil, the rest are closed after the request.
	files []*os.File
}

func (w *reply) json(status int, body []byte) { w.status, w.body = status, body }
func (w *reply) empty(status int)             { w.status, w.body = status, nil }

const maxRequestBody = 4 << 20

func (s *server) serve(rw http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, maxRequestBody))
	method, path := r.Method, r.URL.Path
	files := requestFiles(r)
	w := &reply{files: files}
	// What the handler did not keep is closed, whatever happens to the
	// request (a fault, a death: a dead VMM's fds close with it).
	defer func() { closeAll(w.files) }()
	if !s.takesFds {
		closeAll(w.files)
		w.files = nil
	}

	s.mu.Lock()
	idx := len(s.calls)
	s.calls = append(s.calls, Call{Method: method, Path: path, Body: body, Fds: len(files)})
	s.validate(method, path, body)
	f := s.takeFault(method, path)
	if f != nil {
		s.calls[idx].Fault = f.Mode.String()
	}
	s.mu.Unlock()

	if f != nil {
		switch f.Mode {
		case FaultDelay:
			if !s.sleep(r, f.Delay) {
				return
			}
		case FaultNeverAnswer:
			select {
			case <-r.Context().Done():
			case <-s.stop:
			}
			return
		case FaultGarbage:
			s.hijack(rw, []byte("\x00\x01garbage, not HTTP\r\n\r\n{]"))
			return
		case FaultCloseMidCall:
			s.hijack(rw, []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"id\":"))
			return
		case FaultReply:
			rw.WriteHeader(f.Status)
			rw.Write([]byte(f.Body)) //nolint:errcheck
			return
		case FaultBadBody:
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(http.StatusOK)
			rw.Write([]byte("<html>\x00\x01 not json")) //nolint:errcheck
			return
		}
	}

	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		s.hijack(rw, nil)
		return
	}
	s.handle(w, r, body)
	// A refused request's fds close before the answer goes out, as the
	// VMM drops them when its handler returns.
	closeAll(w.files)
	w.files = nil
	if w.die != "" {
		s.dead, s.deathNote = true, w.die
		s.mu.Unlock()
		// Stop accepting before the caller sees its connection drop, as a
		// dead process does: a connection it makes next is refused, not
		// accepted into the backlog and then reset.
		s.ln.Close()
		s.hijack(rw, nil)
		return
	}
	s.calls[idx].Status = w.status
	if s.spec != nil && w.status >= 200 && w.status < 300 {
		for _, v := range s.spec.ValidateResponse(method, path, w.status, w.body) {
			s.respViol = append(s.respViol, v)
		}
	}
	s.mu.Unlock()

	if f != nil && f.Mode == FaultLoseAnswer {
		s.hijack(rw, nil)
		return
	}
	if w.body != nil {
		rw.Header().Set("Content-Type", "application/json")
	}
	rw.WriteHeader(w.status)
	if w.body != nil {
		rw.Write(w.body) //nolint:errcheck
	}
}

// validate checks a request against the spec (mu held).
func (s *server) validate(method, path string, body []byte) {
	if s.spec == nil {
		return
	}
	vs := s.spec.ValidateRequest(method, path, body)
	tmpl := s.spec.Template(path)
	for _, g := range s.gaps {
		if g.method == method && g.template == tmpl {
			s.gapHits = append(s.gapHits, fmt.Sprintf("%s %s (%s)", method, path, g.reason))
			kept := vs[:0]
			for _, v := range vs {
				if v.Where != "method" {
					kept = append(kept, v)
				}
			}
			vs = kept
		}
	}
	s.violations = append(s.violations, vs...)
}

func (s *server) sleep(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
	case <-s.stop:
	}
	return false
}

// hijack writes raw bytes (maybe none) and closes the connection.
func (s *server) hijack(rw http.ResponseWriter, raw []byte) {
	hj, ok := rw.(http.Hijacker)
	if !ok {
		panic("vmmsim: response writer cannot hijack")
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return
	}
	if len(raw) > 0 {
		buf.Write(raw) //nolint:errcheck
		buf.Flush()    //nolint:errcheck
	}
	conn.Close()
}

// socketFor returns a short socket path in a fresh directory owned by t.
func socketFor(t testing.TB, name string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, name)
	if len(p) < 100 {
		return p
	}
	dir, err := os.MkdirTemp("", "vmsim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, name)
}

// spec cache: parsing is cheap but done once per process.
var (
	specMu    sync.Mutex
	specCache = map[string]*openapi.Spec{}
	specErrs  = map[string]error{}
)

func loadSpec(name string, setup func(*openapi.Spec) error) (*openapi.Spec, error) {
	specMu.Lock()
	defer specMu.Unlock()
	if s, ok := specCache[name]; ok {
		return s, specErrs[name]
	}
	s, err := openapi.LoadNamed(name)
	if err == nil && setup != nil {
		err = setup(s)
	}
	if err != nil {
		s = nil
	}
	specCache[name], specErrs[name] = s, err
	return s, err
}

// specFor resolves a simulator's spec: a missing file means "run without
// validation" (returned as specErr); a broken one is an error.
func specFor(name string, disable bool, setup func(*openapi.Spec) error) (spec *openapi.Spec, specErr, fatal error) {
	if disable {
		return nil, errors.New("validation disabled by the test"), nil
	}
	spec, err := loadSpec(name, setup)
	if errors.Is(err, openapi.ErrNoSpec) {
		return nil, err, nil
	}
	if err != nil {
		return nil, nil, err
	}
	return spec, nil, nil
}

// jsonList is Cloud Hypervisor's error body: a JSON list of strings.
func jsonList(msgs ...string) []byte {
	b, _ := json.Marshal(msgs)
	return b
}
