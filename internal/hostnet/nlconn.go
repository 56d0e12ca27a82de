package hostnet

import (
	"fmt"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Conn is one NETLINK_ROUTE socket in the netns of the thread that opened
// it, shared by a run of requests there (an ADD's veth lookup, qdisc dump,
// qdisc and filter adds). vishvananda/netlink's package-level functions
// open, bind and close a socket for every request (nl.NetlinkRequest's
// ExecuteIter): eight syscalls around each round trip, which an ADD
// otherwise pays a dozen times.
//
// A nil *Conn is valid everywhere one is taken: each request then gets its
// own socket, as the package-level functions do. A Conn serves one thread
// (the one locked in the netns) and is closed before that thread leaves.
type Conn struct {
	h *netlink.Handle
}

// OpenConn opens a Conn in the calling thread's netns.
func OpenConn() (*Conn, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open a netlink socket: %w", err)
	}
	// The timeout the package-level requests use (nl.SocketTimeoutTv), so
	// a kernel that never answers fails the request instead of hanging.
	if err := h.SetSocketTimeout(time.Duration(nl.SocketTimeoutTv.Nano())); err != nil {
		h.Close()
		return nil, fmt.Errorf("netlink socket timeout: %w", err)
	}
	return &Conn{h: h}, nil
}

// Close closes the socket; a nil Conn has none.
func (c *Conn) Close() {
	if c != nil && c.h != nil {
		c.h.Close()
	}
}

// handle is the netlink handle of c's requests: c's socket, or for a nil
// Conn a handle without sockets (a socket per request, as the package-level
// functions).
func (c *Conn) handle() *netlink.Handle {
	if c == nil || c.h == nil {
		return &netlink.Handle{}
	}
	return c.h
}

// LinkByName looks up name in the Conn's netns.
func (c *Conn) LinkByName(name string) (netlink.Link, error) {
	return netlinksafe.Handle{Handle: c.handle()}.LinkByName(name)
}

// qdiscList lists link's qdiscs.
func (c *Conn) qdiscList(link netlink.Link) ([]netlink.Qdisc, error) {
	return (&netlinksafe.Handle{Handle: c.handle()}).QdiscList(link)
}
