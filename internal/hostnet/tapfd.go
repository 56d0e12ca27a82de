package hostnet

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// OpenTapQueues opens queuePairs queue fds of the existing TAP name in the
// calling thread's netns, for a VMM that takes its TAP as fds instead of
// opening it by name: one open of /dev/net/tun and TUNSETIFF per queue,
// with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, and IFF_MULTI_QUEUE when
// queuePairs > 1 (the flags Kata's netlink Tuntap and Cloud Hypervisor's
// net_util/src/tap.rs use). The kernel attaches each fd as one queue of the
// device (drivers/net/tun.c tun_set_iff → tun_attach), so the TAP must
// already exist with the matching multi-queue flag: a single-queue TAP
// takes one fd only (EBUSY while another holds it) and a flag mismatch is
// EINVAL. Only a TAP is opened (never a TUN, never a missing device, which
// TUNSETIFF would create). The files are close-on-exec: a child gets one
// only when it is handed over explicitly (ExtraFiles, SCM_RIGHTS). On error
// none is left open.
func OpenTapQueues(name string, queuePairs int) ([]*os.File, error) {
	if name == "" || len(name) > MaxIfNameLen {
		return nil, fmt.Errorf("open tap queues: name %q: must be 1 to %d bytes", name, MaxIfNameLen)
	}
	if queuePairs < 1 || queuePairs > MaxQueuePairs {
		return nil, fmt.Errorf("open tap %s queues: %d queue pairs: must be 1 to %d", name, queuePairs, MaxQueuePairs)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("open tap %s queues: %w", name, err)
	}
	if !IsTap(link) {
		return nil, fmt.Errorf("open tap %s queues: the device is a %s, not a TAP", name, link.Type())
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if queuePairs > 1 {
		flags |= unix.IFF_MULTI_QUEUE
	}
	files := make([]*os.File, 0, queuePairs)
	fail := func(err error) ([]*os.File, error) {
		CloseFiles(files)
		return nil, err
	}
	for q := range queuePairs {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(fmt.Errorf("open tap %s queue %d: open /dev/net/tun: %w", name, q, err))
		}
		f := os.NewFile(uintptr(fd), "tap:"+name)
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(flags)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			f.Close()
			switch {
			case errors.Is(err, unix.EBUSY):
				err = fmt.Errorf("%w (a single-queue TAP is held by another process, or its queues are all taken)", err)
			case errors.Is(err, unix.EINVAL):
				err = fmt.Errorf("%w (the TAP's multi-queue flag does not match %d queue pair(s))", err, queuePairs)
			}
			return fail(fmt.Errorf("open tap %s queue %d: TUNSETIFF: %w", name, q, err))
		}
		files = append(files, f)
	}
	// The device may have been replaced between the look-up and the
	// opens; the fds must be queues of a TAP of this name.
	for q, f := range files {
		got, fl, err := TapQueueInfo(f)
		if err != nil {
			return fail(fmt.Errorf("open tap %s queue %d: %w", name, q, err))
		}
		if got != name || fl&unix.IFF_TAP == 0 {
			return fail(fmt.Errorf("open tap %s queue %d: the fd is attached to %q (flags %#x), not the TAP", name, q, got, fl))
		}
	}
	return files, nil
}

// TapQueueInfo reports the device name and flags (IFF_TAP, IFF_MULTI_QUEUE,
// IFF_VNET_HDR, …) of a TUN/TAP queue fd, by TUNGETIFF: what a VMM learns
// of an fd it is handed (Cloud Hypervisor's Net::from_tap_fds).
func TapQueueInfo(f *os.File) (name string, flags uint16, err error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return "", 0, fmt.Errorf("TUNGETIFF: %w", err)
	}
	var ifr *unix.Ifreq
	var ioErr error
	if cerr := rc.Control(func(fd uintptr) {
		ifr, ioErr = unix.NewIfreq("")
		if ioErr == nil {
			ioErr = unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr)
		}
	}); cerr != nil {
		return "", 0, fmt.Errorf("TUNGETIFF: %w", cerr)
	}
	if ioErr != nil {
		return "", 0, fmt.Errorf("TUNGETIFF: %w", ioErr)
	}
	return ifr.Name(), ifr.Uint16(), nil
}

// CloseFiles closes every file in files (nil entries are skipped).
func CloseFiles(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}
