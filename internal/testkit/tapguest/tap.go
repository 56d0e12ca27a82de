package tapguest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/netns"
)

// TapOptions say how to open a TAP, as a VMM would.
type TapOptions struct {
	// NetnsPath is the network namespace holding the TAP ("" = the caller's).
	NetnsPath string
	// Name of the existing TAP.
	Name string
	// VnetHdrLen is the virtio-net header size: 10 (default), 12, or -1 for
	// no header (IFF_VNET_HDR not set).
	VnetHdrLen int
	// MultiQueue opens with IFF_MULTI_QUEUE. When the kernel refuses the
	// mode the TAP was not created with (EINVAL), Open retries with the other
	// mode, so callers need not know it.
	MultiQueue bool
}

// Tap is one open queue of a TAP device.
type Tap struct {
	f          *os.File
	name       string
	hdrLen     int
	multiQueue bool
}

// ifreq for TUNSETIFF: name + flags.
type ifreqFlags struct {
	Name  [unix.IFNAMSIZ]byte
	Flags uint16
	_     [22]byte
}

// OpenTap opens /dev/net/tun inside the TAP's netns and attaches to the
// named TAP with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (plus IFF_MULTI_QUEUE when
// the TAP is multiqueue), exactly as a VMM does. The returned fd is usable
// from any thread.
func OpenTap(o TapOptions) (*Tap, error) {
	if o.Name == "" || len(o.Name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("open tap %q: bad name", o.Name)
	}
	hdr := o.VnetHdrLen
	switch hdr {
	case 0:
		hdr = VnetHdrLen
	case -1:
		hdr = 0
	case VnetHdrLen, VnetHdrMrgLen:
	default:
		return nil, fmt.Errorf("open tap %s: vnet header size %d is not 10 or 12", o.Name, o.VnetHdrLen)
	}
	var fd int
	var mq bool
	err := inNetns(o.NetnsPath, func() error {
		// TUNSETIFF would create a missing TAP: a stand-in for a VMM must
		// only attach to the one the plugin made.
		if _, err := net.InterfaceByName(o.Name); err != nil {
			return fmt.Errorf("no such TAP: %w", err)
		}
		var err error
		fd, mq, err = attach(o.Name, hdr > 0, o.MultiQueue)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open tap %s (netns %q): %w", o.Name, o.NetnsPath, err)
	}
	// Attaching gives the TAP carrier, but the kernel activates its queue
	// discipline (until then frames towards the guest are dropped) from
	// the link watch, up to a second later. Wait for it (operstate UP,
	// set in the same step), so the data path works once OpenTap returns.
	// Best effort: a TAP that is administratively down never gets there.
	_ = inNetns(o.NetnsPath, func() error { waitRunning(o.Name, 2*time.Second); return nil })
	if hdr > 0 {
		sz := int32(hdr)
		if err := ioctlPtr(fd, unix.TUNSETVNETHDRSZ, unsafe.Pointer(&sz)); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("open tap %s: TUNSETVNETHDRSZ %d: %w", o.Name, hdr, err)
		}
	}
	// Non-blocking so the Go runtime poller serves Read (Close and
	// deadlines then interrupt a pending Read).
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: set non-blocking: %w", o.Name, err)
	}
	return &Tap{f: os.NewFile(uintptr(fd), "tap:"+o.Name), name: o.Name, hdrLen: hdr, multiQueue: mq}, nil
}

// OpenMacvtap opens a queue of a macvtap device through its character
// device (/dev/tapN, or wherever devPath is), as a VMM given a macvtap does:
// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (TUNSETIFF on the queue), a 10-byte
// virtio-net header. Every open adds a queue; name is for messages.
func OpenMacvtap(devPath, name string) (*Tap, error) {
	fd, err := unix.Open(devPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open macvtap %s: %w", devPath, err)
	}
	var req ifreqFlags
	req.Flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if err := ioctlPtr(fd, unix.TUNSETIFF, unsafe.Pointer(&req)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open macvtap %s: TUNSETIFF: %w", devPath, err)
	}
	sz := int32(VnetHdrLen)
	if err := ioctlPtr(fd, unix.TUNSETVNETHDRSZ, unsafe.Pointer(&sz)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open macvtap %s: TUNSETVNETHDRSZ: %w", devPath, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open macvtap %s: set non-blocking: %w", devPath, err)
	}
	return &Tap{f: os.NewFile(uintptr(fd), "macvtap:"+name), name: name, hdrLen: VnetHdrLen, multiQueue: true}, nil
}

// waitRunning polls until the interface is up and running (IFF_RUNNING:
// carrier and operstate up) or the timeout passes.
func waitRunning(name string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		itf, err := net.InterfaceByName(name)
		if err == nil && itf.Flags&net.FlagUp != 0 && itf.Flags&net.FlagRunning != 0 {
			return true
		}
		if err != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// attach opens the clone device in the current netns and attaches to name.
func attach(name string, vnetHdr, multiQueue bool) (int, bool, error) {
	try := func(mq bool) (int, error) {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, fmt.Errorf("open /dev/net/tun: %w", err)
		}
		var req ifreqFlags
		copy(req.Name[:], name)
		req.Flags = unix.IFF_TAP | unix.IFF_NO_PI
		if vnetHdr {
			req.Flags |= unix.IFF_VNET_HDR
		}
		if mq {
			req.Flags |= unix.IFF_MULTI_QUEUE
		}
		if err := ioctlPtr(fd, unix.TUNSETIFF, unsafe.Pointer(&req)); err != nil {
			unix.Close(fd)
			return -1, err
		}
		return fd, nil
	}
	fd, err := try(multiQueue)
	if errors.Is(err, unix.EINVAL) {
		// The TAP exists in the other queue mode: match it.
		if fd2, err2 := try(!multiQueue); err2 == nil {
			return fd2, !multiQueue, nil
		}
	}
	if err != nil {
		return -1, false, fmt.Errorf("TUNSETIFF: %w", err)
	}
	return fd, multiQueue, nil
}

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// inNetns runs fn in the netns at path (path "" runs fn in the caller's
// netns); see netns.Do.
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return netns.Do(path, fn)
}

// Name is the TAP's name.
func (t *Tap) Name() string { return t.name }

// VnetHdrLen is the virtio-net header size in use (0 = none).
func (t *Tap) VnetHdrLen() int { return t.hdrLen }

// MultiQueue reports whether the queue was opened with IFF_MULTI_QUEUE.
func (t *Tap) MultiQueue() bool { return t.multiQueue }

// ReadFrame reads one frame into buf and returns the Ethernet frame (a
// sub-slice of buf) and its virtio-net header.
func (t *Tap) ReadFrame(buf []byte) (VnetHdr, []byte, error) {
	n, err := t.f.Read(buf)
	if err != nil {
		return VnetHdr{}, nil, err
	}
	return ParseVnetHdr(buf[:n], t.hdrLen)
}

// WriteFrame writes one Ethernet frame (behind a zero virtio-net header).
func (t *Tap) WriteFrame(frame []byte) error {
	b := frame
	if t.hdrLen > 0 {
		b = PrependVnetHdr(frame, t.hdrLen)
	}
	n, err := t.f.Write(b)
	if err != nil {
		return fmt.Errorf("write to tap %s: %w", t.name, err)
	}
	if n != len(b) {
		return fmt.Errorf("write to tap %s: short write %d of %d", t.name, n, len(b))
	}
	return nil
}

// WriteRaw writes b as is: a virtio-net header the caller built (when the
// queue has one, VnetHdrLen bytes) followed by the Ethernet frame. A
// userspace stack that offloads segmentation and checksums (GSO) writes
// this way.
func (t *Tap) WriteRaw(b []byte) error {
	n, err := t.f.Write(b)
	if err != nil {
		return fmt.Errorf("write to tap %s: %w", t.name, err)
	}
	if n != len(b) {
		return fmt.Errorf("write to tap %s: short write %d of %d", t.name, n, len(b))
	}
	return nil
}

// TUNSETOFFLOAD flags (include/uapi/linux/if_tun.h): what the reader of
// the TAP accepts, as a virtio-net driver negotiates guest_csum and
// guest_tso4/6. They are the TAP device's offload features, so frames
// reach its queues unsegmented and with partial checksums.
const (
	OffloadCsum = 0x01 // TUN_F_CSUM
	OffloadTSO4 = 0x02 // TUN_F_TSO4
	OffloadTSO6 = 0x04 // TUN_F_TSO6
)

// SetOffload sets the TAP's offloads (TUNSETOFFLOAD); 0 turns them off.
// It needs a queue opened with a virtio-net header.
func (t *Tap) SetOffload(flags uint) error {
	raw, err := t.f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := raw.Control(func(fd uintptr) {
		ierr = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, int(flags))
	}); err != nil {
		return err
	}
	if ierr != nil {
		return fmt.Errorf("TUNSETOFFLOAD %#x on tap %s: %w", flags, t.name, ierr)
	}
	return nil
}

// Close releases the fd (the TAP itself stays: it is persistent).
func (t *Tap) Close() error { return t.f.Close() }
