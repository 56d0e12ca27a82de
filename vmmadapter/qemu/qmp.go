package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/internal/sockdial"
)

// Error is an error reply from QMP.
type Error struct {
	Command string // the QMP command that failed
	Class   string // e.g. GenericError, DeviceNotFound
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string
	Data json.RawMessage
}

// message is any line QEMU sends: the greeting, a reply or an event.
type message struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	ID    json.RawMessage `json:"id"`
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        string `json:"id"`
}

// conn is one negotiated QMP connection. A reader goroutine routes replies
// to the callers waiting for their id and events to subscribers, so events
// that arrive while a command is in flight are never lost or mistaken for
// its reply.
type conn struct {
	c net.Conn
	// peerPID is the process at the other end (SO_PEERCRED at connect; 0
	// when the kernel could not tell).
	peerPID int
	dec     *json.Decoder
	wmu     sync.Mutex // serialises writes
	done    chan struct{}

	mu      sync.Mutex
	err     error // why done was closed
	nextID  uint64
	pending map[string]chan message
	subs    map[*subscription]struct{}
}

type subscription struct {
	match func(Event) bool
	ch    chan Event // buffered; matched events beyond its capacity are dropped
}

// dial connects to the QMP socket (through sockdial, with the socket
// checks of o) and negotiates capabilities, all within ctx.
func dial(ctx context.Context, socket string, o vmmadapter.Options) (*conn, error) {
	c, err := sockdial.Dial(ctx, socket, o)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connect to QMP socket %s: %w", socket, ctx.Err())
		}
		return nil, fmt.Errorf("connect to QMP socket %s: %w: %w", socket, vmmadapter.ErrUnavailable, err)
	}
	qc := &conn{
		c:       c,
		dec:     json.NewDecoder(c),
		peerPID: peerPID(c),
		done:    make(chan struct{}),
		pending: map[string]chan message{},
		subs:    map[*subscription]struct{}{},
	}
	if err := qc.handshake(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("QMP handshake on %s: %w", socket, err)
	}
	go qc.readLoop()
	return qc, nil
}

func peerPID(c net.Conn) int {
	if cred, err := sockdial.PeerCred(c); err == nil {
		return int(cred.Pid)
	}
	return 0
}

// handshake reads the greeting and enters command mode. It runs before the
// reader goroutine starts, bounded by ctx through the socket deadline.
func (qc *conn) handshake(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { qc.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if dl, ok := ctx.Deadline(); ok {
		qc.c.SetDeadline(dl)
	}
	defer qc.c.SetDeadline(time.Time{})
	wrap := func(what string, err error) error {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: no answer: %w", what, ctx.Err())
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("%s: no answer: %w", what, context.DeadlineExceeded)
		}
		return fmt.Errorf("%s: %w", what, connErr(err))
	}
	var greet message
	if err := qc.dec.Decode(&greet); err != nil {
		return wrap("read greeting", err)
	}
	if greet.QMP == nil {
		return fmt.Errorf("read greeting: not a QMP greeting")
	}
	if err := json.NewEncoder(qc.c).Encode(request{Execute: "qmp_capabilities", ID: "cap"}); err != nil {
		return wrap("send qmp_capabilities", err)
	}
	for {
		var m message
		if err := qc.dec.Decode(&m); err != nil {
			return wrap("qmp_capabilities", err)
		}
		switch {
		case m.Event != "":
			continue // events may precede the reply
		case m.Error != nil:
			return &Error{Command: "qmp_capabilities", Class: m.Error.Class, Desc: m.Error.Desc}
		case m.Return != nil:
			return nil
		default:
			return fmt.Errorf("qmp_capabilities: unexpected message")
		}
	}
}

// connErr marks errors that mean the peer went away as ErrUnavailable.
func connErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("connection lost: %w: %w", vmmadapter.ErrUnavailable, err)
	}
	return err
}

func (qc *conn) readLoop() {
	for {
		var m message
		if err := qc.dec.Decode(&m); err != nil {
			var se *json.SyntaxError
			var te *json.UnmarshalTypeError
			if errors.As(err, &se) || errors.As(err, &te) {
				err = fmt.Errorf("malformed QMP message: %w", err)
			} else {
				err = connErr(err)
			}
			qc.fail(err)
			return
		}
		switch {
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data}
			qc.mu.Lock()
			for s := range qc.subs {
				if s.match(ev) {
					select {
					case s.ch <- ev:
					default:
					}
				}
			}
			qc.mu.Unlock()
		case m.Return != nil || m.Error != nil:
			var id string
			if err := json.Unmarshal(m.ID, &id); err != nil {
				continue // no (string) id: not ours
			}
			qc.mu.Lock()
			ch := qc.pending[id]
			delete(qc.pending, id)
			qc.mu.Unlock()
			if ch != nil {
				ch <- m // buffered
			}
			// Unknown ids are replies to calls that already timed out.
		}
	}
}

// fail closes the connection with err; every waiting call returns err.
func (qc *conn) fail(err error) {
	qc.mu.Lock()
	defer qc.mu.Unlock()
	if qc.err != nil {
		return
	}
	qc.err = err
	close(qc.done)
	qc.c.Close()
}

func (qc *conn) failed() error {
	qc.mu.Lock()
	defer qc.mu.Unlock()
	return qc.err
}

func (qc *conn) close() { qc.fail(errors.New("QMP connection closed")) }

// subscribe starts collecting events that match before a command is sent, so
// that an event emitted before the command's reply is not missed.
func (qc *conn) subscribe(match func(Event) bool) *subscription {
	s := &subscription{match: match, ch: make(chan Event, 16)}
	qc.mu.Lock()
	qc.subs[s] = struct{}{}
	qc.mu.Unlock()
	return s
}

func (qc *conn) unsubscribe(s *subscription) {
	qc.mu.Lock()
	delete(qc.subs, s)
	qc.mu.Unlock()
}

// execute runs cmd and decodes its return value into out (when non-nil).
// It returns when the reply arrives, ctx ends or the connection fails.
func (qc *conn) execute(ctx context.Context, cmd string, args any, out any) error {
	return qc.executeFile(ctx, cmd, args, out, nil)
}

// executeFile is execute with f passed as SCM_RIGHTS ancillary data on the
// command's bytes (for getfd and add-fd: QEMU's socket chardev keeps the
// fds that arrive with a message, chardev/char-socket.c tcp_chr_recv, and
// the command takes them, monitor/fds.c qmp_getfd). f nil sends none.
func (qc *conn) executeFile(ctx context.Context, cmd string, args any, out any, f *os.File) error {
	qc.mu.Lock()
	if qc.err != nil {
		err := qc.err
		qc.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	qc.nextID++
	id := "vmnic-" + strconv.FormatUint(qc.nextID, 10)
	ch := make(chan message, 1)
	qc.pending[id] = ch
	qc.mu.Unlock()
	forget := func() {
		qc.mu.Lock()
		delete(qc.pending, id)
		qc.mu.Unlock()
	}

	line, err := json.Marshal(request{Execute: cmd, Arguments: args, ID: id})
	if err != nil {
		forget()
		return fmt.Errorf("qmp %s: encode arguments: %w", cmd, err)
	}
	line = append(line, '\n')
	if err := qc.write(ctx, line, f); err != nil {
		forget()
		if ctx.Err() != nil {
			return fmt.Errorf("qmp %s: send: %w", cmd, ctx.Err())
		}
		err = connErr(err)
		qc.fail(err)
		return fmt.Errorf("qmp %s: send: %w", cmd, err)
	}

	select {
	case m := <-ch:
		return decodeReply(cmd, m, out)
	case <-qc.done:
		forget()
		select {
		case m := <-ch: // a reply that raced with the failure still counts
			return decodeReply(cmd, m, out)
		default:
		}
		return fmt.Errorf("qmp %s: %w", cmd, qc.failed())
	case <-ctx.Done():
		forget()
		return fmt.Errorf("qmp %s: no reply: %w", cmd, ctx.Err())
	}
}

func decodeReply(cmd string, m message, out any) error {
	if m.Error != nil {
		return &Error{Command: cmd, Class: m.Error.Class, Desc: m.Error.Desc}
	}
	if out != nil {
		if err := json.Unmarshal(m.Return, out); err != nil {
			return fmt.Errorf("qmp %s: decode return value: %w", cmd, err)
		}
	}
	return nil
}

func (qc *conn) write(ctx context.Context, line []byte, f *os.File) error {
	qc.wmu.Lock()
	defer qc.wmu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		qc.c.SetWriteDeadline(dl)
		defer qc.c.SetWriteDeadline(time.Time{})
	}
	if f == nil {
		_, err := qc.c.Write(line)
		return err
	}
	uc, ok := qc.c.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("the QMP connection is a %T, not a unix socket: cannot pass fds", qc.c)
	}
	n, oobn, err := uc.WriteMsgUnix(line, syscall.UnixRights(int(f.Fd())), nil)
	if err == nil && oobn == 0 {
		err = errors.New("sendmsg passed no SCM_RIGHTS data")
	}
	for err == nil && n < len(line) {
		var m int
		m, err = uc.Write(line[n:])
		n += m
	}
	return err
}
