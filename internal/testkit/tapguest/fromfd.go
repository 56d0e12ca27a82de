package tapguest

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TapFromFile wraps a TAP queue fd the caller was handed (a VMM given its
// TAP by fd handoff: no /dev/net/tun, no netns of its own needed). It learns
// the TAP's name and queue mode with TUNGETIFF, as Cloud Hypervisor's
// Net::from_tap_fds does, fails when the fd is no TAP queue with
// IFF_VNET_HDR, sets the 10-byte virtio-net header and makes the fd
// non-blocking (which the file description shares with every duplicate of
// it). It uses a duplicate of f's fd: the caller still closes f.
func TapFromFile(f *os.File) (*Tap, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("tap fd %s: %w", f.Name(), err)
	}
	fd := -1
	var dupErr error
	if err := rc.Control(func(raw uintptr) { fd, dupErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("tap fd %s: %w", f.Name(), err)
	}
	if dupErr != nil {
		return nil, fmt.Errorf("tap fd %s: dup: %w", f.Name(), dupErr)
	}
	t, err := tapFromFd(fd, f.Name())
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return t, nil
}

func tapFromFd(fd int, what string) (*Tap, error) {
	ifr, err := unix.NewIfreq("")
	if err != nil {
		return nil, err
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return nil, fmt.Errorf("tap fd %s: TUNGETIFF: %w", what, err)
	}
	name, flags := ifr.Name(), ifr.Uint16()
	if flags&unix.IFF_TAP == 0 || flags&unix.IFF_VNET_HDR == 0 {
		return nil, fmt.Errorf("tap fd %s (%s): flags %#x, want a TAP queue with IFF_VNET_HDR", what, name, flags)
	}
	sz := int32(VnetHdrLen)
	if err := ioctlPtr(fd, unix.TUNSETVNETHDRSZ, unsafe.Pointer(&sz)); err != nil {
		return nil, fmt.Errorf("tap fd %s (%s): TUNSETVNETHDRSZ: %w", what, name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("tap fd %s (%s): set non-blocking: %w", what, name, err)
	}
	return &Tap{f: os.NewFile(uintptr(fd), "tap:"+name), name: name, hdrLen: VnetHdrLen, multiQueue: flags&unix.IFF_MULTI_QUEUE != 0}, nil
}
