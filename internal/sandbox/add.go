package sandbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// DefaultQueueSize is the virtqueue size recorded when none is configured.
const DefaultQueueSize = 256

// NICSpec is a NIC to add: what a CNI ADD knows about it.
type NICSpec struct {
	SandboxID   string
	ContainerID string
	Network     string // CNI network name
	IfName      string // the veth (CNI_IFNAME) the TAP is joined to
	NetnsPath   string // CNI_NETNS
	// NetnsID is NetnsPath's identity when the caller has just taken it
	// (netsetup.IdentifyNetns); nil: AddNIC takes it.
	NetnsID    *netsetup.NetnsID
	Backend    netsetup.Backend
	Bridge     string // host bridge of the bridge backend
	QueuePairs int    // TAP queue pairs; > 1 makes a multiqueue TAP
	QueueSize  int    // 0 = DefaultQueueSize
	// TapHandoff is how the VMM gets the TAP: netsetup.HandoffFd,
	// HandoffName, or "" for auto (fd where the VMM takes fds).
	TapHandoff netsetup.Handoff
	TapOwner   int    // uid; < 0 = not set
	TapGroup   int    // gid; < 0 = not set
	MAC        string // the interface's MAC in prevResult (checked; the live veth MAC is used)
	// DataPath chooses how the cni backend joins veth and TAP ("" = the
	// $VMNIC_DATAPATH default, else auto); see hostnet.JoinOptions.
	DataPath hostnet.DataPathMode

	IPs     []string
	Gateway string
	// Gateways: the gateway of each family, IPv4 first (netsetup.NIC.Gateways).
	Gateways []string
	Routes   []netsetup.Route
	DNS      *netsetup.DNS

	// Pod identity, recorded when the ADD creates the record.
	PodName, PodNamespace, PodUID string

	// Prepared, when set, is the sandbox netns entered (and the veth
	// looked up) ahead of AddNIC, by PrepareNetns(NetnsPath, IfName); the
	// caller closes it. AddNIC uses it only for that path and ifname, and
	// only when the namespace entered is NetnsID.
	Prepared *PreparedNetns
	// preload is Prepared's TAP -> veth program for the cni backend's Join
	// (set in the netns, once Prepared served).
	preload *hostnet.Preload
}

// PreparedNetns is the read-only start of an ADD's work in the sandbox
// netns, begun before the ADD takes the sandbox's lock: an OS thread enters
// the namespace, opens the netlink socket the ADD's requests share and looks
// the veth up, while the caller parses its conf, opens the store and
// resolves and loads the sandbox. Nothing in the namespace changes before
// AddNIC holds the lock.
type PreparedNetns struct {
	path, ifname string
	t            *netns.Thread
	// Set by the thread before its entry ends (read after Do or Close).
	conn    *hostnet.Conn
	veth    netlink.Link
	vethErr error
	preload *hostnet.Preload
}

// NetnsPrepOptions say what an ADD will do with the netns PrepareNetns
// prepares.
type NetnsPrepOptions struct {
	// Backend is the conf's backend: for the cni backend the TAP -> veth
	// BPF program (hostnet.PreloadJoin) of DataPath is loaded too.
	Backend  netsetup.Backend
	DataPath hostnet.DataPathMode
}

// PrepareNetns starts the preparation of an ADD of ifname in the netns at
// path and returns at once; its errors are the ADD's, in AddNIC.
func PrepareNetns(path, ifname string, o NetnsPrepOptions) *PreparedNetns {
	p := &PreparedNetns{path: path, ifname: ifname}
	p.t = netns.Enter(path, func() error {
		c, err := hostnet.OpenConn()
		if err != nil {
			return err
		}
		p.conn = c
		p.veth, p.vethErr = c.LinkByName(ifname)
		if p.vethErr == nil && o.Backend == netsetup.BackendCNI && !hostnet.IsTap(p.veth) {
			p.preload = hostnet.PreloadJoin(p.veth, o.DataPath)
		}
		return nil
	})
	return p
}

// serves reports whether p was prepared for s's netns path and ifname.
func (p *PreparedNetns) serves(s *NICSpec) bool {
	return p != nil && p.path == s.NetnsPath && p.ifname == s.IfName
}

// Close ends the preparation: the thread leaves the namespace, the socket
// is closed. A nil PreparedNetns is fine.
func (p *PreparedNetns) Close() {
	if p == nil {
		return
	}
	p.t.Close()
	p.conn.Close()
	p.preload.Close()
}

// AddedNIC is what AddNIC did.
type AddedNIC struct {
	NIC     netsetup.NIC
	TapMAC  string // the TAP device's own MAC
	Sandbox string // netns path of the TAP ("" when it is on the host)
	Warning string // set when the NIC could not be brought into the VMM but the ADD succeeded
}

// AddNIC sets up a NIC for a sandbox: creates the TAP and joins it to the
// veth (or the host bridge), brings it into the sandbox's VMM when one is
// attached, and then records it, in the one durable write of the ADD. Any
// failure rolls back every change and returns an *Error naming what failed.
//
// Nothing is recorded before the host changes: a crash part way leaves host
// objects that DEL, teardown and GC find without a record, by their
// deterministic names (the TAP hostnet.TapNameInNetns(ifname) in the
// sandbox netns, or hostnet.TapNameOnHost(sandbox, ifname) with its
// FORWARD-rule user "<sandbox>/<ifname>" for the bridge backend; vmnic's
// filter priority; the VMM device id NICID(ifname)): see leftover.go.
func (m *Manager) AddNIC(ctx context.Context, s NICSpec) (*AddedNIC, error) {
	nsid, err := s.check()
	if err != nil {
		return nil, err
	}
	// Every entry into the netns below is by this identity.
	s.NetnsID = &nsid
	tx, err := m.Store.Lock(ctx, s.SandboxID)
	if err != nil {
		return nil, coded(CodeTryAgain, err, "sandbox %s", s.SandboxID)
	}
	defer tx.Unlock()
	a, err := m.loadForAdd(tx, &s, nsid)
	if err != nil {
		return nil, err
	}
	defer a.releaseClones() // restore.go
	if err := m.step("add-locked"); err != nil {
		return a.early(asCoded(err, "add NIC %s", s.IfName))
	}
	if err := m.admit(a.rec, &s, nsid); err != nil {
		return a.early(err)
	}
	if err := a.clearLeftover(ctx); err != nil {
		return a.early(err)
	}
	a.nic = s.newNIC()
	if err := checkNICForVMM(a.rec.VMM, a.nic); err != nil {
		return a.early(err)
	}
	b, closeBackend, err := m.openBackend(&s, &a.nic)
	if err != nil {
		return a.early(err)
	}
	defer closeBackend()

	// In the sandbox netns: read the veth, then make the backend's part
	// there, every request on one netlink socket.
	inNetns := func(c *hostnet.Conn, link netlink.Link, lookupErr error, pre *hostnet.Preload) error {
		s.preload = pre // the backend's (b.spec is &s)
		veth, err := a.readVeth(b, link, lookupErr)
		if err != nil {
			return err
		}
		if err := m.step("veth-read"); err != nil {
			return err
		}
		u, err := b.setupInNetns(c, veth, &a.nic)
		a.u.add(u)
		return err
	}
	if p := s.Prepared; p.serves(&s) {
		err = p.t.Do(s.NetnsID, func() error { return inNetns(p.conn, p.veth, p.vethErr, p.preload) })
	} else {
		err = netns.DoExpected(s.NetnsPath, s.NetnsID, func() error {
			c, err := hostnet.OpenConn()
			if err != nil {
				return err
			}
			defer c.Close()
			link, err := c.LinkByName(s.IfName)
			return inNetns(c, link, err, nil)
		})
	}
	if err != nil {
		if netns.IsGone(err) {
			err = coded(CodeInvalidNetns, err, "CNI_NETNS")
		}
		return nil, a.rollback(asCoded(err, "set up NIC %s", s.IfName))
	}
	if err := a.checkClones(ctx); err != nil { // restore.go
		return nil, a.rollback(err)
	}
	u, err := b.setupOnHost(ctx, &a.nic)
	a.u.add(u)
	if err == nil {
		err = m.step("host-ready")
	}
	if err != nil {
		return nil, a.rollback(asCoded(err, "set up NIC %s", s.IfName))
	}

	var warning string
	if a.rec.VMM != nil {
		if warning, err = a.addToVMM(ctx); err != nil {
			return nil, a.rollback(err)
		}
		if err := m.step("vmm-added"); err != nil {
			return nil, a.rollback(asCoded(err, "add NIC %s", s.IfName))
		}
	}

	a.nic.HostReady = true
	if err := a.save(); err != nil {
		return nil, a.rollback(err)
	}
	if err := m.step("add-saved"); err != nil {
		return nil, a.rollback(asCoded(err, "add NIC %s", s.IfName))
	}
	m.log().Info("NIC added", "sandbox", s.SandboxID, "ifname", s.IfName, "tap", a.nic.Tap, "state", a.nic.State)
	return a.result(b, warning), nil
}

// adding is one AddNIC in progress: its spec, the record under the lock,
// the NIC being made and the undo of every change made so far.
type adding struct {
	m       *Manager
	s       *NICSpec
	tx      *netsetup.Tx
	rec     *netsetup.NetSetup
	created bool // the record is new: this ADD made it
	saved   bool // the record was saved with the NIC
	nic     netsetup.NIC
	u       undo
	// restored: the NIC matches one a restored sandbox expects
	// (restore.go); vethPeer is the veth's peer ifindex then.
	restored bool
	vethPeer int
	// cloneLock is the bridge's clone MAC lock, held from checkClones
	// until the ADD ends (restore.go).
	cloneLock *netsetup.CloneLock
}

// check validates s (filling its defaults) and returns the identity of
// s.NetnsPath: the caller's, or taken now.
func (s *NICSpec) check() (netsetup.NetnsID, error) {
	if err := s.validate(); err != nil {
		return netsetup.NetnsID{}, err
	}
	if s.NetnsID != nil {
		return *s.NetnsID, nil
	}
	id, err := netsetup.IdentifyNetns(s.NetnsPath)
	if err != nil {
		return id, coded(CodeInvalidNetns, err, "CNI_NETNS")
	}
	return id, nil
}

// loadForAdd loads the record of s's sandbox under tx, or makes a new one
// (not saved yet) that a CNI ADD creates.
func (m *Manager) loadForAdd(tx *netsetup.Tx, s *NICSpec, nsid netsetup.NetnsID) (*adding, error) {
	a := &adding{m: m, s: s, tx: tx}
	// An unreadable record is quarantined and rebuilt from the host: the
	// NICs whose marked TAPs are in CNI_NETNS are recorded again.
	tx.SetHint(s.NetnsPath)
	rec, err := tx.Load()
	switch {
	case errors.Is(err, netsetup.ErrNotFound):
		a.created = true
		rec = netsetup.New(s.SandboxID)
		rec.CreatedBy = netsetup.CreatedByCNI
		rec.NetnsPath = s.NetnsPath
		rec.NetnsID = &nsid
		rec.PodName, rec.PodNamespace, rec.PodUID = s.PodName, s.PodNamespace, s.PodUID
	case err != nil:
		return nil, coded(CodeIOFailure, err, "load the record of sandbox %s", s.SandboxID)
	}
	a.rec = rec
	return a, nil
}

// admit checks that a NIC may be added to rec with spec s, and fills the
// sandbox-wide fields of a record at zero NICs.
func (m *Manager) admit(rec *netsetup.NetSetup, s *NICSpec, nsid netsetup.NetnsID) error {
	switch rec.Phase {
	case netsetup.PhaseInvalid:
		return &Error{Code: CodeInvalidConfig, Msg: fmt.Sprintf("sandbox %s is invalid (%s): tear it down (vmnicctl teardown %s) before setting it up again", rec.SandboxID, rec.Error, rec.SandboxID), Err: ErrInvalidRecord}
	case netsetup.PhaseTearingDown:
		return codedf(CodeTryAgain, "sandbox %s is being torn down", rec.SandboxID)
	}
	recorded := rec.NetnsID
	if recorded == nil && rec.ResolvedNetnsPath() != "" {
		if id, err := netsetup.IdentifyNetns(rec.ResolvedNetnsPath()); err == nil {
			recorded = &id
		}
	}
	if recorded != nil && *recorded != nsid {
		return codedf(CodeInvalidNetns, "CNI_NETNS %s is not the netns of sandbox %s (%s)", s.NetnsPath, rec.SandboxID, rec.ResolvedNetnsPath())
	}
	if rec.ResolvedNetnsPath() == "" {
		rec.NetnsPath = s.NetnsPath
	}
	if rec.NetnsID == nil {
		rec.NetnsID = &nsid
	}
	others := 0
	for _, n := range rec.NetworkConfigs {
		if n.IfName != s.IfName {
			others++
		}
	}
	if others == 0 {
		rec.NetBackend = s.Backend
		rec.NetBridgeDev = ""
		if s.Backend == netsetup.BackendBridge {
			rec.NetBridgeDev = s.Bridge
		}
		return nil
	}
	if rec.ResolvedNetBackend() != s.Backend {
		return codedf(CodeInvalidConfig, "backend %s: sandbox %s already uses backend %s", s.Backend, rec.SandboxID, rec.ResolvedNetBackend())
	}
	if s.Backend == netsetup.BackendBridge && rec.ResolvedNetBridgeDev() != s.Bridge {
		return codedf(CodeInvalidConfig, "bridge %s: sandbox %s already uses bridge %s", s.Bridge, rec.SandboxID, rec.ResolvedNetBridgeDev())
	}
	return nil
}

// clearLeftover undoes what an ADD of an older vmnic that crashed may have
// done for the same NIC: a NIC recorded pending that never became
// host-ready (this version records a NIC only once its host side is made).
// Any other NIC of that name is refused.
func (a *adding) clearLeftover(ctx context.Context) error {
	s, rec := a.s, a.rec
	old, ok := rec.NIC(s.IfName)
	if !ok {
		return nil
	}
	if old.HostReady || old.State != netsetup.NICPending {
		return codedf(CodeInvalidEnv, "CNI_IFNAME %s: sandbox %s already has this NIC (TAP %s, %s): DEL it first", s.IfName, s.SandboxID, old.Tap, old.State)
	}
	a.m.log().Warn("cleaning up a NIC left pending by an earlier ADD", "sandbox", s.SandboxID, "ifname", s.IfName, "tap", old.Tap)
	if err := a.m.removeStray(ctx, rec, *old); err != nil {
		return err
	}
	if err := a.m.backendOf(rec).cleanup(ctx, rec, *old); err != nil {
		return coded(CodeInternal, err, "clean up the pending NIC %s left by an earlier ADD", s.IfName)
	}
	rec.RemoveNIC(s.IfName)
	return nil
}

// newNIC is the record entry of the NIC s asks for, pending; the backend
// names its TAP, the veth gives its MAC and MTU.
func (s *NICSpec) newNIC() netsetup.NIC {
	return netsetup.NIC{
		ID:          NICID(s.IfName),
		Network:     s.Network,
		ContainerID: s.ContainerID,
		IfName:      s.IfName,
		NumQueues:   2 * s.QueuePairs,
		QueueSize:   s.QueueSize,
		TapHandoff:  s.TapHandoff,
		IPs:         s.IPs,
		Gateway:     s.Gateway,
		Gateways:    s.Gateways,
		Routes:      s.Routes,
		DNS:         s.DNS,
		State:       netsetup.NICPending,
	}
}

// readVeth checks the veth, looked up in the sandbox netns (veth, or the
// lookup's error), takes its MAC and MTU for the NIC and lets the backend
// claim the TAP.
func (a *adding) readVeth(b backend, veth netlink.Link, err error) (netlink.Link, error) {
	s := a.s
	if err != nil {
		if hostnet.IsNotFound(err) {
			return nil, codedf(CodeInvalidEnv, "CNI_IFNAME %s: no such interface in netns %s", s.IfName, s.NetnsPath)
		}
		return nil, coded(CodeInternal, err, "look up %s in netns %s", s.IfName, s.NetnsPath)
	}
	if hostnet.IsTap(veth) {
		return nil, codedf(CodeInvalidConfig, "CNI_IFNAME %s is a TAP: vmnic chains after a plugin that makes a veth (bridge, ptp, …)", s.IfName)
	}
	mac, err := parseUnicastMAC(veth.Attrs().HardwareAddr.String())
	if err != nil {
		return nil, coded(CodeInvalidConfig, err, "interface %s", s.IfName)
	}
	if s.MAC != "" && !strings.EqualFold(s.MAC, mac.String()) {
		a.m.log().Warn("prevResult MAC differs from the interface's; the interface's is used", "ifname", s.IfName, "prevResult", s.MAC, "interface", mac.String())
	}
	a.nic.MAC = mac.String()
	a.nic.MTU = veth.Attrs().MTU
	if err := a.matchRestore(veth); err != nil { // restore.go
		return nil, err
	}
	if err := b.claim(&a.nic); err != nil {
		return nil, err
	}
	return veth, nil
}

// save records the NIC (and its container in the index): the one durable
// write of the ADD. The netns index is written only when the sandbox's
// netns is new to the record (netsetup.Tx.Save), the container index only
// when the container's sandbox has another id and no entry yet.
func (a *adding) save() error {
	a.rec.PutNIC(a.nic)
	if err := a.tx.Save(a.rec); err != nil {
		a.rec.RemoveNIC(a.s.IfName)
		return coded(CodeIOFailure, err, "record NIC %s", a.s.IfName)
	}
	a.saved = true
	if err := a.m.indexContainer(a.s.ContainerID, a.s.SandboxID); err != nil {
		a.m.log().Warn("container index not written", "error", err)
	}
	return nil
}

// result is what the ADD did, once it succeeded.
func (a *adding) result(b backend, warning string) *AddedNIC {
	res := &AddedNIC{NIC: a.nic, TapMAC: b.tapMAC(), Warning: warning}
	if a.s.Backend == netsetup.BackendCNI {
		res.Sandbox = a.s.NetnsPath // the TAP is in the sandbox netns
	}
	return res
}

// addToVMM brings the NIC into the sandbox's VMM. A VMM that cannot take it
// now leaves it pending with a warning (returned, and noted on the NIC);
// any other failure fails the ADD.
func (a *adding) addToVMM(ctx context.Context) (warning string, err error) {
	m, rec, s := a.m, a.rec, a.s
	// The record as it will be saved: the NIC is recorded only after this
	// step (one write per ADD), and the fd handoff opens only TAPs the
	// record lists (OpenTapFds).
	view := *rec
	view.NetworkConfigs = slices.Clone(rec.NetworkConfigs)
	view.PutNIC(a.nic)
	att, handoff, err := m.vmmAdd(ctx, &view, a.nic)
	if err == nil {
		a.nic.State = netsetup.NICAttached
		a.nic.Handoff = handoff
		a.nic.VMMDeviceID = att.ID
		a.nic.BDF = att.BDF
		a.nic.Note = att.Note // what the guest must know or do
		vmm, devID := *rec.VMM, att.ID
		// Rolling back a NIC this ADD just added: nobody has told the guest
		// about it yet (a Firecracker guest sees it only after a rescan), so
		// its removal needs no guest step.
		a.u.host = append(a.u.host, func() error {
			return m.vmmRemove(vmmadapter.WithGuestAcked(context.WithoutCancel(ctx)), &vmm, devID)
		})
		return "", nil
	}
	o := vmmAddOutcome(err, rec.VMM.Booted)
	if !o.stayPending {
		if o.mayHaveDevice {
			// Best effort; logged.
			_ = m.removeStray(context.WithoutCancel(ctx), rec, a.nic)
		}
		return "", coded(o.code, err, "add NIC %s to the %s VMM of sandbox %s", s.IfName, rec.VMM.Kind, s.SandboxID)
	}
	warning = fmt.Sprintf("NIC %s stays pending%s: %v", s.IfName, o.until, err)
	a.nic.Note = warning
	m.log().Warn(warning, "sandbox", s.SandboxID)
	return warning, nil
}

// addOutcome is what a failed hot-add means for the ADD.
type addOutcome struct {
	stayPending bool   // the ADD succeeds, the NIC stays pending (with a warning)
	until       string // why it waits, for the warning
	code        uint   // else: the ADD fails with this code
	// mayHaveDevice: the VMM may have added the device anyway; take it
	// out again before the TAP goes.
	mayHaveDevice bool
}

// vmmAddOutcome classifies the error of a hot-add into a VMM (booted or
// not).
func vmmAddOutcome(err error, booted bool) addOutcome {
	switch {
	case errors.Is(err, vmmadapter.ErrHotplugUnsupported):
		return addOutcome{stayPending: true}
	case !booted && errors.Is(err, vmmadapter.ErrUnavailable):
		return addOutcome{stayPending: true, until: " until the VMM starts"}
	case errors.Is(err, vmmadapter.ErrUnavailable):
		return addOutcome{code: CodeTryAgain}
	case errors.Is(err, vmmadapter.ErrDeviceIDInUse), errors.Is(err, vmmadapter.ErrTapBusy),
		errors.Is(err, errFdOpen), errors.Is(err, vmmadapter.ErrFdCount), errors.Is(err, vmmadapter.ErrFdsUnsupported):
		// The VMM was not called, or refused before making a device.
		return addOutcome{code: CodeInternal}
	default:
		// No answer, a lost connection or a garbled one.
		return addOutcome{code: CodeInternal, mayHaveDevice: true}
	}
}

// early ends an ADD that changed nothing. For a sandbox this call would
// have created it also deletes the record, which is a no-op unless a
// caller wrote one since (the ADD writes it only at save).
func (a *adding) early(err error) (*AddedNIC, error) {
	if a.created {
		_ = a.tx.Delete()
	}
	return nil, err
}

// rollback undoes the host changes and, once the NIC was recorded (a
// failure after the save), its record entry (or the record the ADD
// created). It returns cause, with a
// failed rollback added to its message.
func (a *adding) rollback(cause error) error {
	s := a.s
	var errs []error
	if err := runReverse(a.u.host); err != nil {
		errs = append(errs, err)
	}
	if len(a.u.ns) > 0 {
		steps := a.u.ns
		if err := netns.DoExpected(s.NetnsPath, s.NetnsID, func() error { return runReverse(steps) }); err != nil && !netns.IsGone(err) {
			errs = append(errs, err)
		}
	}
	a.u = undo{}
	if a.saved {
		if a.created {
			if err := a.tx.Delete(); err != nil {
				errs = append(errs, err)
			}
		} else {
			a.rec.RemoveNIC(s.IfName)
			if err := a.tx.Save(a.rec); err != nil {
				errs = append(errs, err)
			}
		}
		a.m.unindexContainers(s.SandboxID, recOrNil(a.rec, a.created), s.ContainerID)
	} else if a.created {
		_ = a.tx.Delete()
	}
	if len(errs) > 0 {
		a.m.log().Error("rollback of a failed ADD was incomplete", "sandbox", s.SandboxID, "ifname", s.IfName, "error", errors.Join(errs...))
		var e *Error
		if errors.As(cause, &e) {
			e.Msg += fmt.Sprintf(" (and the rollback failed: %v)", errors.Join(errs...))
		}
	}
	return cause
}

func recOrNil(rec *netsetup.NetSetup, created bool) *netsetup.NetSetup {
	if created {
		return nil
	}
	return rec
}

// asCoded keeps an *Error as it is and wraps anything else as internal.
func asCoded(err error, format string, args ...any) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return coded(CodeInternal, err, format, args...)
}
