package sockdial

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/vmmadapter"
)

// PeerCred is the process at the other end of a unix connection, as the
// kernel recorded it when the connection was made (SO_PEERCRED, in this
// process's pid namespace).
func PeerCred(c net.Conn) (*unix.Ucred, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("the connection is a %T, not a unix socket", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return cred, nil
}

// CheckPeer refuses a connection whose peer is not process pid (when pid
// > 0): TAP fds are sent only to the recorded VMM. socket names the socket
// in the error, which wraps vmmadapter.ErrPeerMismatch.
func CheckPeer(c net.Conn, pid int, socket string) error {
	if pid <= 0 {
		return nil
	}
	cred, err := PeerCred(c)
	if err != nil {
		return err
	}
	if int(cred.Pid) != pid {
		return fmt.Errorf("%w: pid %d (uid %d) answers on %s, the recorded VMM is pid %d (re-attach the VMM if it was restarted)",
			vmmadapter.ErrPeerMismatch, cred.Pid, cred.Uid, socket, pid)
	}
	return nil
}
