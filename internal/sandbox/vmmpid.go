package sandbox

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// vmmHostPID turns the pid a VMM reports for itself (Cloud Hypervisor's
// vmm.ping: std::process::id(), vmm/src/lib.rs) into the pid vmnic sees,
// which SO_PEERCRED reports for its socket. They differ when the VMM runs in
// a pid namespace of its own, as in a container: there it is pid 1, or a
// small number. The socket's peer (SO_PEERCRED, translated by the kernel
// into the caller's pid namespace) is the VMM's process when the last pid of
// its NSpid line (/proc/<pid>/status: one pid per nested namespace,
// innermost last) is the reported one; then that peer's pid is returned.
// Otherwise reported is returned unchanged, and the fd handoff's peer check
// refuses to send fds to a process that is not the VMM.
func vmmHostPID(socket string, reported int) (int, error) {
	if reported <= 0 {
		return reported, nil
	}
	peer, err := socketPeerPID(socket)
	if err != nil {
		return reported, err
	}
	if peer == reported {
		return reported, nil
	}
	inner, err := innermostPID(peer)
	if err != nil {
		return reported, err
	}
	if inner != reported {
		return reported, fmt.Errorf("the process serving %s is pid %d (pid %d in its own pid namespace), not the pid %d the VMM reported", socket, peer, inner, reported)
	}
	return peer, nil
}

// socketPeerPID is the pid of the process that accepted a connection to
// the unix socket at path (SO_PEERCRED).
func socketPeerPID(path string) (int, error) {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return 0, fmt.Errorf("dial %s: %w", path, err)
	}
	defer c.Close()
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("SO_PEERCRED on %s: %w", path, credErr)
	}
	return int(cred.Pid), nil
}

// innermostPID is the pid of process pid in the innermost pid namespace it
// belongs to (the last field of NSpid in /proc/<pid>/status).
func innermostPID(pid int) (int, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.Atoi(f[len(f)-1])
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no NSpid line", pid)
}
