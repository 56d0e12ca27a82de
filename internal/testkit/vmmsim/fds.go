package vmmsim

import (
	"context"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxRecvFds is how many fds one read can carry (the kernel's SCM_MAX_FD).
const maxRecvFds = 253

// fdListener hands out connections that keep the fds a client sends as
// SCM_RIGHTS ancillary data, as Cloud Hypervisor's micro-http server does
// (it reads with recvmsg and collects the fds of a request into req.files;
// vmm/src/api/http/mod.rs, http_endpoint.rs).
type fdListener struct{ *net.UnixListener }

func (l fdListener) Accept() (net.Conn, error) {
	c, err := l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	return &fdConn{UnixConn: c}, nil
}

// fdConn is a server connection that collects received fds.
type fdConn struct {
	*net.UnixConn
	mu    sync.Mutex
	files []*os.File
}

// Read reads with recvmsg so that ancillary data is not lost; every fd
// received is kept until the request's handler takes it. Go's ReadMsgUnix
// sets MSG_CMSG_CLOEXEC, so the fds do not leak into children.
func (c *fdConn) Read(b []byte) (int, error) {
	oob := make([]byte, syscall.CmsgSpace(maxRecvFds*4))
	n, oobn, _, _, err := c.ReadMsgUnix(b, oob)
	if n < 0 {
		n = 0 // a failed recvmsg; io.Reader never returns a negative count
	}
	if oobn > 0 {
		c.keep(oob[:oobn])
	}
	return n, err
}

func (c *fdConn) keep(oob []byte) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			c.files = append(c.files, os.NewFile(uintptr(fd), "received"))
		}
	}
}

// take returns the fds received so far and forgets them.
func (c *fdConn) take() []*os.File {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.files
	c.files = nil
	return f
}

// Close closes the connection and any fd no handler took.
func (c *fdConn) Close() error {
	closeAll(c.take())
	return c.UnixConn.Close()
}

type connKey struct{}

// withConn is http.Server.ConnContext: requests can find their connection.
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// requestFiles takes the fds that came with r (all of its bytes are read).
func requestFiles(r *http.Request) []*os.File {
	if c, ok := r.Context().Value(connKey{}).(*fdConn); ok {
		return c.take()
	}
	return nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}

// tapQueueInfo is TUNGETIFF on f: the device name and flags of a TUN/TAP
// queue fd, as Cloud Hypervisor's Net::from_tap_fds learns them. (The
// simulator does its own ioctl rather than importing vmnic's hostnet, so
// that modules using the test kit need none of hostnet's dependencies.)
func tapQueueInfo(f *os.File) (string, uint16, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return "", 0, err
	}
	var ifr *unix.Ifreq
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		if ifr, ioErr = unix.NewIfreq(""); ioErr == nil {
			ioErr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr)
		}
	}); err != nil {
		return "", 0, err
	}
	if ioErr != nil {
		return "", 0, ioErr
	}
	return ifr.Name(), ifr.Uint16(), nil
}
