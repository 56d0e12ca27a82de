package apiclient

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/vmnic/vmnic/vmmadapter/internal/sockdial"
)

// MaxFiles bounds the fds one request carries: the kernel's SCM_MAX_FD
// (253, include/net/scm.h) is the most one sendmsg can pass.
const MaxFiles = 253

// CallWithFiles is Call for a request that hands files to the VMM: the fds
// ride as SCM_RIGHTS ancillary data on the first bytes of the request,
// which go out with the whole serialised request in one sendmsg (as Kata's
// clh.go vmAddNetPutRequest does; Cloud Hypervisor's micro-http collects
// the fds of the request's messages into req.files, and
// vmm/src/api/http/http_endpoint.rs hands them to the handler). net/http
// cannot attach ancillary data, so this writes the request on the unix
// connection itself and reads the answer with http.ReadResponse. The
// connection is opened as Call opens it (the transport's dialer).
//
// The caller keeps its files: the kernel gives the VMM its own copies when
// the message is sent, so the caller closes its copies once this returns,
// whatever the outcome.
func (c *Client) CallWithFiles(ctx context.Context, method, path string, body any, files []*os.File) (*Response, error) {
	call := method + " " + path
	if len(files) == 0 {
		return c.Call(ctx, method, path, body)
	}
	if len(files) > MaxFiles {
		return nil, c.fail(call, "encode request", fmt.Errorf("%d fds: at most %d fit in one message", len(files), MaxFiles))
	}
	fds := make([]int, len(files))
	for i, f := range files {
		if f == nil {
			return nil, c.fail(call, "encode request", fmt.Errorf("fd %d is nil", i))
		}
		fds[i] = int(f.Fd())
	}
	ctx, cancel := context.WithTimeoutCause(ctx, c.Timeout, errCallTimeout)
	defer cancel()
	req, err := c.newRequest(ctx, call, method, path, body)
	if err != nil {
		return nil, err
	}
	req.Close = true // one connection per call, as Call
	var raw bytes.Buffer
	if err := req.Write(&raw); err != nil {
		return nil, c.fail(call, "build request", err)
	}

	tr, ok := c.http.Transport.(*http.Transport)
	if !ok || tr.DialContext == nil {
		return nil, c.fail(call, "connect", errors.New("client has no unix dialer"))
	}
	nc, err := tr.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return nil, c.classify(ctx, call, err)
	}
	defer nc.Close()
	uc, ok := nc.(*net.UnixConn)
	if !ok {
		return nil, c.fail(call, "connect", fmt.Errorf("the connection to %s is a %T, not a unix socket: cannot pass fds", c.Socket, nc))
	}
	if err := c.checkPeer(uc); err != nil {
		return nil, c.fail(call, "check the peer", err)
	}
	// The context bounds every read and write: when it ends, the deadline
	// moves to the past and the blocked call returns.
	stop := context.AfterFunc(ctx, func() { uc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := writeWithRights(uc, raw.Bytes(), syscall.UnixRights(fds...)); err != nil {
		return nil, c.classify(ctx, call, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(uc), req)
	if err != nil {
		return nil, c.classify(ctx, call, err)
	}
	return c.readResponse(ctx, call, resp)
}

// writeWithRights sends b with oob attached to its first bytes, then the
// rest of b if the kernel took only part of it.
func writeWithRights(uc *net.UnixConn, b, oob []byte) error {
	n, oobn, err := uc.WriteMsgUnix(b, oob, nil)
	if err != nil {
		return err
	}
	if oobn != len(oob) {
		return fmt.Errorf("sendmsg passed %d of %d bytes of SCM_RIGHTS data", oobn, len(oob))
	}
	for n < len(b) {
		m, err := uc.Write(b[n:])
		if err != nil {
			return err
		}
		n += m
	}
	return nil
}

// checkPeer refuses a connection whose peer (SO_PEERCRED, taken by the
// kernel at connect) is not c.PeerPID, when that is set.
func (c *Client) checkPeer(uc *net.UnixConn) error {
	return sockdial.CheckPeer(uc, c.PeerPID, c.Socket)
}
