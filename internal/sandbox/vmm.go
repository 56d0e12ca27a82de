package sandbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

// defaultOpenVMM opens an adapter when Manager.OpenVMM is nil.
var defaultOpenVMM = connect.Open

// callTimeout and removeTimeout are the adapter's timeouts (defaults
// applied), used to bound the engine's own waits.
func (m *Manager) callTimeout() time.Duration { return m.VMMOptions.WithDefaults().CallTimeout }

func (m *Manager) removeTimeout() time.Duration { return m.VMMOptions.WithDefaults().RemoveTimeout }

func (m *Manager) openVMM(v *netsetup.VMM) (vmmadapter.Adapter, error) {
	open := m.OpenVMM
	if open == nil {
		open = defaultOpenVMM
	}
	if v.APISocket == "" {
		return nil, fmt.Errorf("%s VMM has no API socket recorded: %w", v.Kind, vmmadapter.ErrUnavailable)
	}
	if m.VMMSocketDirs != nil {
		if err := CheckVMMSocket(v.APISocket, m.VMMSocketDirs); err != nil {
			// Never dialled: to a DEL this VMM is unreachable (the host
			// side is still cleaned up).
			if !errors.Is(err, vmmadapter.ErrUnavailable) {
				err = fmt.Errorf("%w (%w)", err, vmmadapter.ErrUnavailable)
			}
			return nil, fmt.Errorf("%s VMM: %w", v.Kind, err)
		}
	}
	// The adapter's every dial checks again, on the directory's and the
	// socket's fds, what CheckVMMSocket checked by path.
	opts := m.VMMOptions
	if opts.SocketDirs == nil {
		opts.SocketDirs = m.VMMSocketDirs
	}
	if v.SocketUID != nil {
		opts.SocketOwner = v.SocketUID
	}
	if v.PID > 0 {
		opts.PeerPID = v.PID
	}
	if opts.Logger == nil {
		opts.Logger = m.log()
	}
	a, err := open(vmmadapter.Kind(v.Kind), v.APISocket, opts)
	if err != nil {
		// No adapter means no VMM vmnic can reach: a DEL cleans the host
		// side instead of failing for ever.
		if !errors.Is(err, vmmadapter.ErrUnavailable) {
			err = fmt.Errorf("%w: %w", vmmadapter.ErrUnavailable, err)
		}
		return nil, fmt.Errorf("open %s VMM at %s: %w", v.Kind, v.APISocket, err)
	}
	return a, nil
}

// AdapterNIC is the adapter's view of a recorded NIC.
func AdapterNIC(n netsetup.NIC) vmmadapter.NIC {
	return vmmadapter.NIC{
		ID:         n.ID,
		Tap:        n.Tap,
		MAC:        n.MAC,
		MTU:        n.MTU,
		QueuePairs: n.QueuePairs(),
		QueueSize:  n.QueueSize,
	}
}

// vmmAdd brings nic into the VMM of rec (hot-add after boot, cold
// before), handing the TAP over as fds or by name (addWithHandoff).
func (m *Manager) vmmAdd(ctx context.Context, rec *netsetup.NetSetup, nic netsetup.NIC) (vmmadapter.Attachment, netsetup.Handoff, error) {
	a, err := m.openVMM(rec.VMM)
	if err != nil {
		return vmmadapter.Attachment{}, "", err
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*m.callTimeout())
	defer cancel()
	att, h, err := m.addWithHandoff(ctx, a, rec, nic)
	if err != nil {
		return att, h, err
	}
	if att.ID == "" {
		att.ID = nic.ID
	}
	return att, h, nil
}

// errFdOpen marks a hot-add that failed before the VMM was called: the TAP
// fds could not be opened, so the VMM has no device.
var errFdOpen = errors.New("TAP fds not opened")

// addWithHandoff adds nic through a, handing its TAP over as the NIC and
// the VMM's kind say (handoffFor): with fd handoff it opens the TAP's
// queue fds in the sandbox netns (OpenTapFds), passes them with the add
// and closes vmnic's copies as soon as the VMM has answered (the VMM holds
// its own). A VMM that refuses fds while the NIC asked for auto gets the
// TAP by name instead, with a warning logged and a note on the NIC. It
// returns the handoff used.
func (m *Manager) addWithHandoff(ctx context.Context, a vmmadapter.Adapter, rec *netsetup.NetSetup, nic netsetup.NIC) (vmmadapter.Attachment, netsetup.Handoff, error) {
	kind := vmmadapter.Kind(rec.VMM.Kind)
	h, err := handoffFor(kind, nic.TapHandoff)
	if err != nil {
		return vmmadapter.Attachment{}, "", err
	}
	an := AdapterNIC(nic)
	if h == netsetup.HandoffName {
		att, err := a.AddNIC(ctx, an)
		return att, h, err
	}
	files, err := OpenTapFds(rec, nic)
	if err != nil {
		return vmmadapter.Attachment{}, h, fmt.Errorf("%w: %w", errFdOpen, err)
	}
	if err := m.step("fds-opened"); err != nil {
		hostnet.CloseFiles(files)
		return vmmadapter.Attachment{}, h, fmt.Errorf("%w: %w", errFdOpen, err)
	}
	an.Fds = files
	att, err := a.AddNIC(ctx, an)
	hostnet.CloseFiles(files)
	if err == nil || !errors.Is(err, vmmadapter.ErrFdsUnsupported) || nic.TapHandoff == netsetup.HandoffFd {
		return att, h, err
	}
	note := fmt.Sprintf("the %s VMM refused the TAP fds (%v); it was handed the TAP by name", kind, err)
	m.log().Warn("VMM refused TAP fds; falling back to name handoff", "ifname", nic.IfName, "tap", nic.Tap, "error", err)
	an.Fds = nil
	att, err = a.AddNIC(ctx, an)
	att.Note = joinNotes(att.Note, note)
	return att, netsetup.HandoffName, err
}

func joinNotes(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

// checkNICForVMM refuses, at ADD, a NIC the sandbox's VMM cannot take
// (vmmadapter.ValidateNIC: queue sizes and pairs per VMM), before anything
// is set up. Without a recorded VMM there is nothing to check yet.
func checkNICForVMM(v *netsetup.VMM, nic netsetup.NIC) error {
	if v == nil {
		return nil
	}
	if err := vmmadapter.ValidateNIC(vmmadapter.Kind(v.Kind), AdapterNIC(nic)); err != nil {
		return coded(CodeInvalidConfig, err, "NIC %s for the sandbox's %s VMM", nic.IfName, v.Kind)
	}
	if _, err := handoffFor(vmmadapter.Kind(v.Kind), nic.TapHandoff); err != nil {
		return coded(CodeInvalidConfig, err, "NIC %s for the sandbox's %s VMM", nic.IfName, v.Kind)
	}
	return nil
}

// vmmRemove removes a device and waits (bounded) for the guest to let go.
func (m *Manager) vmmRemove(ctx context.Context, v *netsetup.VMM, id string) error {
	a, err := m.openVMM(v)
	if err != nil {
		return err
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(ctx, m.removeTimeout()+2*m.callTimeout())
	defer cancel()
	return a.RemoveNIC(ctx, id)
}

// AttachVMM records the sandbox's VMM (kind, API socket, booted and version
// from the VMM itself) and brings in the NICs that are set up on the host
// but not in the VMM yet. NICs the VMM refuses stay pending; their errors
// are returned joined, with the record saved.
func (m *Manager) AttachVMM(ctx context.Context, id string, kind vmmadapter.Kind, socket string) (*netsetup.NetSetup, error) {
	if !slices.Contains(vmmadapter.Kinds, kind) {
		return nil, fmt.Errorf("VMM kind %q: must be one of %v", kind, vmmadapter.Kinds)
	}
	if socket == "" {
		return nil, errors.New("VMM API socket is empty")
	}
	tx, rec, err := m.Store.LockLoad(ctx, id)
	if err != nil {
		return nil, err
	}
	defer tx.Unlock()
	if rec.Phase == netsetup.PhaseInvalid || rec.Phase == netsetup.PhaseTearingDown {
		return nil, fmt.Errorf("sandbox %s is %s (%s): %w", id, rec.Phase, rec.Error, ErrInvalidRecord)
	}
	v := vmmAt(kind, socket)
	a, err := m.openVMM(v)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	ictx, cancel := context.WithTimeout(ctx, m.callTimeout())
	info, err := a.Info(ictx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("ask the %s VMM at %s: %w", kind, socket, err)
	}
	v.Booted = info.Booted
	v.Version = info.Version
	v.PID = m.vmmPID(id, socket, info.PID)
	rec.VMM = v
	if err := tx.Save(rec); err != nil {
		return nil, err
	}
	var errs []error
	// What the VMM has is the truth, not the record: NICs it already has
	// (cold-plugged from vmm-args at launch) are only marked attached, and
	// NICs recorded attached that it does not have (a VMM restarted on the
	// record of the old one) are added again.
	lctx, cancel := context.WithTimeout(ctx, m.callTimeout())
	have, err := a.NICs(lctx)
	cancel()
	listed := err == nil
	if err != nil {
		errs = append(errs, fmt.Errorf("list the NICs of the %s VMM: %w", kind, err))
	}
	for i := range rec.NetworkConfigs {
		n := &rec.NetworkConfigs[i]
		switch {
		case n.State == netsetup.NICPending && n.HostReady:
		case n.State == netsetup.NICAttached && listed:
		default:
			continue
		}
		if id, ok := vmmHasNIC(have, *n); ok {
			n.State = netsetup.NICAttached
			n.VMMDeviceID = id
			n.Note = ""
			continue
		}
		if err := checkNICForVMM(v, *n); err != nil {
			errs = append(errs, fmt.Errorf("NIC %s stays pending: %w", n.IfName, err))
			n.State = netsetup.NICPending
			n.VMMDeviceID, n.BDF = "", ""
			n.Note = fmt.Sprintf("NIC %s stays pending: %v", n.IfName, err)
			continue
		}
		if n.State == netsetup.NICAttached {
			m.log().Warn("attach-vmm: the VMM does not have a NIC recorded attached (restarted?): adding it again",
				"sandbox", id, "ifname", n.IfName, "device", n.VMMDeviceID)
		}
		actx, cancel := context.WithTimeout(ctx, 2*m.callTimeout())
		att, h, err := m.addWithHandoff(actx, a, rec, *n)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("NIC %s stays pending: %w", n.IfName, err))
			n.State = netsetup.NICPending
			n.VMMDeviceID, n.BDF = "", ""
			n.Note = fmt.Sprintf("NIC %s stays pending: %v", n.IfName, err)
			continue
		}
		n.State = netsetup.NICAttached
		n.Note = att.Note
		n.Handoff = h
		n.VMMDeviceID = att.ID
		if n.VMMDeviceID == "" {
			n.VMMDeviceID = n.ID
		}
		n.BDF = att.BDF
	}
	if err := tx.Save(rec); err != nil {
		errs = append(errs, err)
	}
	return rec, errors.Join(errs...)
}

// vmmHasNIC finds the device of n among the VMM's device ids: its
// recorded device id, or one its NIC id gives (vmmHas).
func vmmHasNIC(have []string, n netsetup.NIC) (string, bool) {
	if n.VMMDeviceID != "" && slices.Contains(have, n.VMMDeviceID) {
		return n.VMMDeviceID, true
	}
	return vmmHas(have, n.ID)
}

// vmmHas finds the device of NIC id among the VMM's device ids, as given or
// as a VMM sanitises it.
func vmmHas(have []string, id string) (string, bool) {
	for _, cand := range connect.DeviceIDs(id) {
		if slices.Contains(have, cand) {
			return cand, true
		}
	}
	return "", false
}

// vmmAt is the record of the VMM of kind at socket before it is asked
// anything: the socket's owner now is the VMM's, and every later dial
// checks it.
func vmmAt(kind vmmadapter.Kind, socket string) *netsetup.VMM {
	v := &netsetup.VMM{Kind: string(kind), APISocket: socket}
	var st unix.Stat_t
	if err := unix.Lstat(socket, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
		uid := st.Uid
		v.SocketUID = &uid
	}
	return v
}

// vmmPID is the pid to record for the VMM at socket that reported pid
// reported: the pid vmnic sees (vmmHostPID), which the fd handoff's peer
// check compares; the reported one, with a warning, when that is unknown.
func (m *Manager) vmmPID(id, socket string, reported int) int {
	pid, err := vmmHostPID(socket, reported)
	if err != nil {
		m.log().Warn("the VMM's pid as vmnic sees it is unknown: TAP fds go only to the pid it reported",
			"sandbox", id, "socket", socket, "reportedPID", reported, "error", err)
		return reported
	}
	return pid
}
