package vmmsim

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// NetFiles returns duplicates of the TAP fds NIC id came with on
// vm.add-net (nil when it came by name or is gone). A stand-in guest runs on
// them as the VMM's virtio-net device would (e2e/cmd/vmmprobe); the caller
// closes them.
func (c *CH) NetFiles(id string) ([]*os.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*os.File
	for i, f := range c.files[id] {
		nf, err := dupFile(f)
		if err != nil {
			closeAll(out)
			return nil, fmt.Errorf("NIC %s fd %d: %w", id, i, err)
		}
		out = append(out, nf)
	}
	return out, nil
}

// dupFile duplicates f's fd (close-on-exec) without changing its mode.
func dupFile(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(raw uintptr) { fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, dupErr
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}
