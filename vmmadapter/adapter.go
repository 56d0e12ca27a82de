// Package vmmadapter is vmnic's one small interface to a running (or not yet
// booted) VMM: bring a NIC in, take it out, list what the VMM has. Each VMM
// has its own package (cloudhypervisor, firecracker, qemu) that talks to the
// VMM's own control socket; vmmadapter/connect is the one package that picks
// one by kind (Open, launch arguments, device ids).
package vmmadapter

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"time"
)

// Kind names a VMM. The values are the ones stored in NetSetup.vmm.kind.
type Kind string

const (
	CloudHypervisor Kind = "cloud-hypervisor"
	Firecracker     Kind = "firecracker"
	QEMU            Kind = "qemu"
)

// Kinds lists every supported kind, for flag help and validation.
var Kinds = []Kind{CloudHypervisor, Firecracker, QEMU}

// NIC is what a VMM needs to attach a TAP as a virtio-net device.
type NIC struct {
	ID         string // VMM device id (CH id, FC iface_id, QEMU device id); adapters may sanitise it and return the id used
	Tap        string // host device name of the TAP (opened by name by the VMM, in its netns)
	MAC        string // guest MAC
	MTU        int    // 0 = leave to the VMM
	QueuePairs int    // TAP queue pairs; CH num_queues = 2 × QueuePairs; 0 means 1
	QueueSize  int    // 0 = VMM default
	// Fds, when set, are the TAP's queue fds (one per queue pair, opened
	// by vmnic in the sandbox netns): the VMM gets them over its control
	// socket (SCM_RIGHTS) instead of opening Tap by name, so it needs no
	// /dev/net/tun, no CAP_NET_ADMIN and need not live in the netns. Only
	// adapters whose TakesFds is true accept them; the caller keeps
	// ownership and closes its copies once AddNIC returns.
	Fds []*os.File
}

// Attachment is what the VMM reports for an attached NIC.
type Attachment struct {
	ID  string // device id as the VMM knows it
	BDF string // PCI address when the VMM reports one (CH after boot)
	Hot bool   // true when it was hot-added into a running guest
	// Note is what the user must know about this NIC although it is
	// attached ("" when nothing): a step the guest must take (Firecracker
	// sends no hot-plug notification), or a setting the VMM could not pass
	// on (an MTU the guest will not learn). The engine records it with the
	// NIC; several notes are joined with "; ".
	Note string
}

// Info describes the VMM behind the socket.
type Info struct {
	Kind    Kind
	Version string
	// PID is the VMM's process id: what its API reports (Cloud
	// Hypervisor's vmm.ping) or, for QEMU, whose QMP names no process,
	// the peer of the QMP connection (SO_PEERCRED); 0 when not known.
	// Recorded, it lets fds be sent only to that process (Options.PeerPID).
	PID       int
	Booted    bool // the guest is running (hot-plug rules apply)
	HotAdd    bool // NICs can be added after boot
	HotRemove bool // NICs can be removed after boot
}

// Adapter drives one VMM instance. Every method honours ctx's deadline and
// also applies the adapter's own per-call timeout: a VMM that does not
// answer is an error, never a hang.
type Adapter interface {
	Info(ctx context.Context) (Info, error)
	// AddNIC cold-attaches before boot and hot-adds after boot.
	// It returns ErrHotplugUnsupported when the VMM is booted and cannot hot-add.
	AddNIC(ctx context.Context, nic NIC) (Attachment, error)
	// RemoveNIC removes the device and waits (bounded) until the VMM/guest
	// has really let it go. Removing an id the VMM does not have is not an error.
	RemoveNIC(ctx context.Context, id string) error
	// NICs lists the ids of the network devices the VMM has now.
	NICs(ctx context.Context) ([]string, error)
	Close() error
}

// The defaults of Options' timeouts. Every adapter, and every caller that
// bounds its own wait by them, reads them here (through WithDefaults).
const (
	DefaultCallTimeout   = 5 * time.Second
	DefaultRemoveTimeout = 30 * time.Second
)

// Options tune an adapter; zero values mean the defaults.
type Options struct {
	CallTimeout   time.Duration // per request; default DefaultCallTimeout
	RemoveTimeout time.Duration // wait for the guest to eject a NIC; default DefaultRemoveTimeout
	// PCI says whether the VMM was started with a PCI transport when its API
	// cannot tell (Firecracker's --enable-pci). PCIUnknown lets the adapter try
	// and map the VMM's refusal to ErrHotplugUnsupported.
	PCI PCIMode
	// SocketDirs confines the socket the adapter dials: its directory, as
	// resolved when the dial opens it, must be one of these or below one
	// (nil: anywhere). Every dial also refuses a symlink in the socket's
	// place (vmmadapter/internal/sockdial).
	SocketDirs []string
	// SocketOwner, when set, is the uid the socket must belong to (the
	// owner it had when the VMM was attached): a socket of another sandbox
	// hard-linked into the VMM's directory is refused.
	SocketOwner *uint32

	// PeerPID, when > 0, is the process that must be at the other end of
	// the control socket for TAP fds to be sent there (checked with
	// SO_PEERCRED on the connection that carries them); another peer gets
	// no fd and the call fails with ErrPeerMismatch.
	PeerPID int
	// Logger receives the adapter's log records (key "error" for errors);
	// nil discards them.
	Logger *slog.Logger
}

// Log returns o.Logger, or a logger that discards everything.
func (o Options) Log() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

type guestAckedKey struct{}

// WithGuestAcked marks ctx: the caller knows the guest has already let go of
// the device being removed (for Firecracker: the guest removed it from its
// PCI bus), so the VMM may tear it down.
func WithGuestAcked(ctx context.Context) context.Context {
	return context.WithValue(ctx, guestAckedKey{}, true)
}

// GuestAcked reports whether ctx carries WithGuestAcked.
func GuestAcked(ctx context.Context) bool {
	v, _ := ctx.Value(guestAckedKey{}).(bool)
	return v
}

// WithDefaults returns o with every unset (zero or negative) timeout
// replaced by its default.
func (o Options) WithDefaults() Options {
	if o.CallTimeout <= 0 {
		o.CallTimeout = DefaultCallTimeout
	}
	if o.RemoveTimeout <= 0 {
		o.RemoveTimeout = DefaultRemoveTimeout
	}
	return o
}

// PCIMode is what the caller knows about the VMM's PCI transport.
type PCIMode int

const (
	PCIUnknown  PCIMode = iota // not known: the adapter finds out from the VMM's answers
	PCIEnabled                 // started with PCI (Firecracker --enable-pci)
	PCIDisabled                // started without PCI (MMIO only)
)

var (
	// ErrHotplugUnsupported: the VMM is running and cannot add/remove NICs.
	ErrHotplugUnsupported = errors.New("hot-plug not supported by this VMM")
	// ErrUnavailable: the VMM's socket is missing or refuses connections (VMM gone).
	ErrUnavailable = errors.New("VMM not reachable")
	// ErrDeviceIDInUse: the VMM already has a device with this id (for Cloud
	// Hypervisor also one that was removed but not yet ejected by the guest).
	ErrDeviceIDInUse = errors.New("device id already in use")
	// ErrTapBusy: the TAP is held by another VMM or by a NIC not yet ejected.
	ErrTapBusy = errors.New("TAP device busy")
	// ErrEjectTimeout: the device was removed from the VMM but the guest did
	// not release it within Options.RemoveTimeout; it may still go later.
	ErrEjectTimeout = errors.New("guest did not release the device in time")
	// ErrVMPaused: the VM is paused, so its guest cannot acknowledge an
	// eject; resume it, or remove the NIC once the VM is shut down.
	ErrVMPaused = errors.New("VM is paused; resume it or remove the NIC at shutdown")
	// ErrTapQueueMismatch: the TAP's multi-queue flag does not match the
	// NIC's queue pairs (a multi-queue TAP for one pair, or the other way
	// round); the TAP must be recreated, or the NIC's queues changed.
	ErrTapQueueMismatch = errors.New("TAP multi-queue flag does not match the NIC's queue pairs")
	// ErrFdsUnsupported: the VMM cannot take TAP fds over its control
	// socket (Firecracker; a Cloud Hypervisor that refused them): the NIC
	// must be handed over by name.
	ErrFdsUnsupported = errors.New("the VMM does not take TAP fds")
	// ErrFdCount: the number of fds does not match the NIC's queue pairs
	// (Cloud Hypervisor: fds.len()*2 != num_queues).
	ErrFdCount = errors.New("TAP fd count does not match the queue pairs")
	// ErrPeerMismatch: the process behind the VMM socket is not the
	// recorded VMM (SO_PEERCRED), so no fd is sent to it.
	ErrPeerMismatch = errors.New("the socket's peer is not the recorded VMM process")
	// ErrGuestMustAct: the VMM would tear the device down under a guest
	// that still uses it (Firecracker notifies the guest of nothing); the
	// guest must release it first, and the caller then says so
	// (WithGuestAcked; vmnicctl guest-acked).
	ErrGuestMustAct = errors.New("the guest must release the device first")
)
