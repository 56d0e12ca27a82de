// Package apiclient is the HTTP-over-unix-socket client the Cloud Hypervisor
// and Firecracker adapters share: one fresh connection per call, a deadline on
// every call, and errors that name the VMM, the socket and the call.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/internal/sockdial"
)

// maxBody bounds what is read of a response (vm.info of a big VM is a few
// hundred KiB at most).
const maxBody = 8 << 20

// Client talks to one VMM API socket.
type Client struct {
	Kind    vmmadapter.Kind
	Socket  string
	Timeout time.Duration
	// PeerPID, when > 0, is the only process CallWithFiles sends fds to
	// (SO_PEERCRED of the connection).
	PeerPID int
	http    *http.Client
}

// New returns a client for socket. It does not connect. Its timeout is
// opts.CallTimeout (zero or less: vmmadapter.DefaultCallTimeout); every
// connection is dialled through sockdial (opts.SocketDirs, opts.SocketOwner).
func New(kind vmmadapter.Kind, socket string, opts vmmadapter.Options) *Client {
	timeout := opts.WithDefaults().CallTimeout
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return sockdial.Dial(ctx, socket, opts)
		},
		// One connection per call: a VMM restarted on the same socket path,
		// or one that closed a connection, never poisons a later call, and
		// the transport never replays a request on a reused connection.
		DisableKeepAlives:  true,
		DisableCompression: true,
		MaxIdleConns:       -1,
	}
	return &Client{Kind: kind, Socket: socket, Timeout: timeout, http: &http.Client{Transport: tr}}
}

// Close releases idle resources.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

// Response is a complete answer of the VMM.
type Response struct {
	Status int
	Body   []byte
}

// OK reports a 2xx status.
func (r *Response) OK() bool { return r.Status >= 200 && r.Status < 300 }

// Call sends one request and reads the whole answer within the client's
// timeout (and ctx's deadline, whichever comes first). body is marshalled
// as JSON unless nil. Transport failures come back as *CallError; the HTTP
// status is the caller's business.
func (c *Client) Call(ctx context.Context, method, path string, body any) (*Response, error) {
	call := method + " " + path
	ctx, cancel := context.WithTimeoutCause(ctx, c.Timeout, errCallTimeout)
	defer cancel()
	req, err := c.newRequest(ctx, call, method, path, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.classify(ctx, call, err)
	}
	return c.readResponse(ctx, call, resp)
}

// newRequest is the request of call under ctx: body as JSON unless nil.
func (c *Client) newRequest(ctx context.Context, call, method, path string, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, c.fail(call, "encode request", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return nil, c.fail(call, "build request", err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

// readResponse reads the whole answer to call (at most maxBody bytes) and
// closes it.
func (c *Client) readResponse(ctx context.Context, call string, resp *http.Response) (*Response, error) {
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, c.classify(ctx, call, err)
	}
	return &Response{Status: resp.StatusCode, Body: data}, nil
}

var errCallTimeout = errors.New("call timeout")

// CallError is a call that got no usable HTTP answer.
type CallError struct {
	Kind   vmmadapter.Kind
	Socket string
	Call   string // "PUT /api/v1/vm.add-net"
	What   string // short human description
	Err    error
}

func (e *CallError) Error() string {
	return fmt.Sprintf("%s API %s on %s: %s: %v", e.Kind, e.Call, e.Socket, e.What, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }

func (c *Client) fail(call, what string, err error) error {
	return &CallError{Kind: c.Kind, Socket: c.Socket, Call: call, What: what, Err: err}
}

func (c *Client) classify(ctx context.Context, call string, err error) error {
	switch {
	case context.Cause(ctx) == errCallTimeout:
		return c.fail(call, fmt.Sprintf("no answer within %s (VMM hung or overloaded)", c.Timeout),
			fmt.Errorf("%w", context.DeadlineExceeded))
	case ctx.Err() != nil:
		return c.fail(call, "cancelled before the VMM answered", context.Cause(ctx))
	case isUnavailable(err):
		return c.fail(call, "cannot connect (is the VMM running?)", fmt.Errorf("%w: %v", vmmadapter.ErrUnavailable, unwrapURL(err)))
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
		return c.fail(call, "the VMM closed the connection without a complete answer", unwrapURL(err))
	case strings.Contains(err.Error(), "malformed HTTP") || strings.Contains(err.Error(), "bad HTTP") || strings.Contains(err.Error(), "malformed"):
		return c.fail(call, "the VMM sent something that is not an HTTP response", unwrapURL(err))
	}
	return c.fail(call, "request failed", unwrapURL(err))
}

// isUnavailable: the socket is missing, refuses connections, or is not a socket.
func isUnavailable(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "dial" {
		return false
	}
	return errors.Is(err, vmmadapter.ErrUnavailable) || errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTSOCK) ||
		errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPROTOTYPE)
}

// unwrapURL drops net/http's *url.Error wrapper, whose text repeats the
// URL "http://localhost/…" (meaningless for a unix socket).
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err
	}
	return err
}
