package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/failpoint"
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
	TapOwner   int    // uid; < 0 = not set
	TapGroup   int    // gid; < 0 = not set
	MAC        string // the interface's MAC in prevResult (checked; the live veth MAC is used)
	// DataPath chooses how the cni backend joins veth and TAP ("" = the
	// $VMNIC_DATAPATH default, else auto); see hostnet.JoinOptions.
	DataPath hostnet.DataPathMode

	IPs     []string
	Gateway string
	Routes  []netsetup.Route
	DNS     *netsetup.DNS

	// Pod identity, recorded when the ADD creates the record.
	PodName, PodNamespace, PodUID string
}

// AddedNIC is what AddNIC did.
type AddedNIC struct {
	NIC     netsetup.NIC
	TapMAC  string // the TAP device's own MAC
	Sandbox string // netns path of the TAP ("" when it is on the host)
	Warning string // set when the NIC could not be brought into the VMM but the ADD succeeded
}

// NICID is the VMM device id vmnic gives the NIC on ifname: the ifname when
// it matches [A-Za-z0-9_]+ (valid for every VMM), else a sanitised form with
// a hash suffix.
func NICID(ifname string) string {
	ok := ifname != ""
	var b strings.Builder
	for i := 0; i < len(ifname); i++ {
		c := ifname[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
			ok = false
		}
	}
	if ok {
		return ifname
	}
	return b.String() + "_" + hostnetHash(ifname)
}

func hostnetHash(s string) string { return hostnet.TapNameOnHost("", s)[3:11] }

// ValidateIfName checks a CNI interface name (1-15 bytes, not . or .., no
// '/', ':' or white space).
func ValidateIfName(name string) error {
	switch {
	case name == "":
		return errors.New("interface name is empty")
	case len(name) > hostnet.MaxIfNameLen:
		return fmt.Errorf("interface name %q is longer than %d bytes", name, hostnet.MaxIfNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is not valid", name)
	case strings.ContainsAny(name, "/: \t\n\v\f\r"):
		return fmt.Errorf("interface name %q contains '/', ':' or white space", name)
	}
	return nil
}

// ValidateQueueSize accepts 0 (default) or a power of two from 2 to 32768.
func ValidateQueueSize(n int) error {
	if n == 0 || (n >= 2 && n <= 32768 && n&(n-1) == 0) {
		return nil
	}
	return fmt.Errorf("queueSize %d: must be a power of two from 2 to 32768", n)
}

func (s *NICSpec) validate() error {
	if err := netsetup.ValidateSandboxID(s.SandboxID); err != nil {
		return coded(CodeInvalidEnv, err, "sandbox id")
	}
	if err := ValidateIfName(s.IfName); err != nil {
		return coded(CodeInvalidEnv, err, "CNI_IFNAME")
	}
	if s.QueuePairs == 0 {
		s.QueuePairs = 1
	}
	if s.QueuePairs < 1 || s.QueuePairs > hostnet.MaxQueuePairs {
		return codedf(CodeInvalidConfig, "queues %d: must be 1 to %d queue pairs", s.QueuePairs, hostnet.MaxQueuePairs)
	}
	if err := ValidateQueueSize(s.QueueSize); err != nil {
		return coded(CodeInvalidConfig, err, "invalid conf")
	}
	if s.QueueSize == 0 {
		s.QueueSize = DefaultQueueSize
	}
	switch s.Backend {
	case "":
		s.Backend = netsetup.BackendCNI
	case netsetup.BackendCNI:
	case netsetup.BackendBridge:
		if s.Bridge == "" {
			return codedf(CodeInvalidConfig, "backend bridge needs the conf key \"bridge\" (the host bridge)")
		}
	default:
		return codedf(CodeInvalidConfig, "backend %q: must be \"cni\" or \"bridge\"", s.Backend)
	}
	if s.MAC != "" {
		if _, err := parseUnicastMAC(s.MAC); err != nil {
			return coded(CodeInvalidConfig, err, "prevResult interface %s: mac", s.IfName)
		}
	}
	for _, ip := range s.IPs {
		if _, _, err := net.ParseCIDR(ip); err != nil {
			return coded(CodeInvalidConfig, err, "prevResult ip %q", ip)
		}
	}
	return nil
}

func parseUnicastMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil {
		return nil, fmt.Errorf("invalid MAC %q: %w", s, err)
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("invalid MAC %q: not a 6-byte Ethernet address", s)
	}
	if mac[0]&1 != 0 {
		return nil, fmt.Errorf("invalid MAC %q: a multicast address", s)
	}
	if allZero(mac) {
		return nil, fmt.Errorf("invalid MAC %q: all zero", s)
	}
	return mac, nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// undo is a rollback stack; steps that must run inside the sandbox netns are
// kept apart from those that run in the host netns.
type undo struct {
	ns, host []func() error
}

func runReverse(steps []func() error) error {
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// AddNIC sets up a NIC for a sandbox: records it pending, creates the TAP
// and joins it to the veth (or the host bridge), records it host-ready, and
// brings it into the sandbox's VMM when one is attached. Any failure rolls
// back every change and returns an *Error naming what failed.
func (m *Manager) AddNIC(ctx context.Context, s NICSpec) (*AddedNIC, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	var nsid netsetup.NetnsID
	if s.NetnsID != nil {
		nsid = *s.NetnsID
	} else {
		id, err := netsetup.IdentifyNetns(s.NetnsPath)
		if err != nil {
			return nil, coded(CodeInvalidNetns, err, "CNI_NETNS")
		}
		nsid = id
	}
	tx, err := m.Store.Lock(ctx, s.SandboxID)
	if err != nil {
		return nil, coded(CodeTryAgain, err, "sandbox %s", s.SandboxID)
	}
	defer tx.Unlock()
	rec, err := tx.Load()
	created := false
	switch {
	case errors.Is(err, netsetup.ErrNotFound):
		created = true
		rec = netsetup.New(s.SandboxID)
		rec.CreatedBy = netsetup.CreatedByCNI
		rec.NetnsPath = s.NetnsPath
		rec.NetnsID = &nsid
		rec.PodName, rec.PodNamespace, rec.PodUID = s.PodName, s.PodNamespace, s.PodUID
	case err != nil:
		return nil, coded(CodeIOFailure, err, "load the record of sandbox %s", s.SandboxID)
	}
	// Before the first save nothing was changed: a failure only has to
	// drop the lock file of a sandbox this call would have created.
	early := func(e error) (*AddedNIC, error) {
		if created {
			_ = tx.Delete()
		}
		return nil, e
	}
	if err := m.step("add-locked"); err != nil {
		return early(asCoded(err, "add NIC %s", s.IfName))
	}
	if err := m.admit(rec, &s, nsid); err != nil {
		return early(err)
	}
	if old, ok := rec.NIC(s.IfName); ok {
		if old.HostReady || old.State != netsetup.NICPending {
			return early(codedf(CodeInvalidEnv, "CNI_IFNAME %s: sandbox %s already has this NIC (TAP %s, %s): DEL it first", s.IfName, s.SandboxID, old.Tap, old.State))
		}
		// A pending NIC that never became host-ready: the leftover of an
		// ADD that crashed. Undo what it may have done and start again.
		m.log().Warn("cleaning up a NIC left pending by an earlier ADD", "sandbox", s.SandboxID, "ifname", s.IfName, "tap", old.Tap)
		if err := m.removeStray(ctx, rec, *old); err != nil {
			return early(err)
		}
		if err := m.cleanupHost(rec, *old); err != nil {
			return early(coded(CodeInternal, err, "clean up the pending NIC %s left by an earlier ADD", s.IfName))
		}
		rec.RemoveNIC(s.IfName)
	}

	nic := netsetup.NIC{
		ID:          NICID(s.IfName),
		Network:     s.Network,
		ContainerID: s.ContainerID,
		IfName:      s.IfName,
		NumQueues:   2 * s.QueuePairs,
		QueueSize:   s.QueueSize,
		IPs:         s.IPs,
		Gateway:     s.Gateway,
		Routes:      s.Routes,
		DNS:         s.DNS,
		State:       netsetup.NICPending,
	}
	res := &AddedNIC{}
	bridge := s.Backend == netsetup.BackendBridge
	var brLink netlink.Link
	var hostHandle *netlink.Handle
	if bridge {
		// A handle on the host netns, usable from inside the sandbox netns.
		if hostHandle, err = netlink.NewHandle(); err != nil {
			return early(coded(CodeInternal, err, "netlink"))
		}
		defer hostHandle.Close()
		nic.Tap = hostnet.TapNameOnHost(s.SandboxID, s.IfName)
		if brLink, err = hostnet.LookupBridge(s.Bridge); err != nil {
			return early(coded(CodeInvalidConfig, err, "conf bridge"))
		}
		if l, err := netlink.LinkByName(nic.Tap); err == nil {
			return early(codedf(CodeInvalidEnv, "TAP name %s is already taken on the host by a %s device", nic.Tap, l.Type()))
		}
	} else {
		nic.Tap = hostnet.TapNameInNetns(s.IfName)
		res.Sandbox = s.NetnsPath
	}

	var u undo
	saved := false
	// rollback undoes host changes and the record entry after the first save.
	rollback := func(cause error) error {
		var errs []error
		if err := runReverse(u.host); err != nil {
			errs = append(errs, err)
		}
		if len(u.ns) > 0 {
			steps := u.ns
			if err := netns.Do(s.NetnsPath, func() error { return runReverse(steps) }); err != nil && !netns.IsGone(err) {
				errs = append(errs, err)
			}
		}
		u = undo{}
		if saved {
			if created {
				if err := tx.Delete(); err != nil {
					errs = append(errs, err)
				}
			} else {
				rec.RemoveNIC(s.IfName)
				if err := tx.Save(rec); err != nil {
					errs = append(errs, err)
				}
			}
			m.unindexContainers(s.SandboxID, recOrNil(rec, created), s.ContainerID)
		} else if created {
			_ = tx.Delete()
		}
		if len(errs) > 0 {
			m.log().Error("rollback of a failed ADD was incomplete", "sandbox", s.SandboxID, "ifname", s.IfName, "error", errors.Join(errs...))
			var e *Error
			if errors.As(cause, &e) {
				e.Msg += fmt.Sprintf(" (and the rollback failed: %v)", errors.Join(errs...))
			}
		}
		return cause
	}

	err = netns.Do(s.NetnsPath, func() error {
		veth, err := netlink.LinkByName(s.IfName)
		if err != nil {
			if hostnet.IsNotFound(err) {
				return codedf(CodeInvalidEnv, "CNI_IFNAME %s: no such interface in netns %s", s.IfName, s.NetnsPath)
			}
			return coded(CodeInternal, err, "look up %s in netns %s", s.IfName, s.NetnsPath)
		}
		if hostnet.IsTap(veth) {
			return codedf(CodeInvalidConfig, "CNI_IFNAME %s is a TAP: vmnic chains after a plugin that makes a veth (bridge, ptp, …)", s.IfName)
		}
		mac, err := parseUnicastMAC(veth.Attrs().HardwareAddr.String())
		if err != nil {
			return coded(CodeInvalidConfig, err, "interface %s", s.IfName)
		}
		if s.MAC != "" && !strings.EqualFold(s.MAC, mac.String()) {
			m.log().Warn("prevResult MAC differs from the interface's; the interface's is used", "ifname", s.IfName, "prevResult", s.MAC, "interface", mac.String())
		}
		nic.MAC = mac.String()
		nic.MTU = veth.Attrs().MTU
		if !bridge {
			if l, err := netlink.LinkByName(nic.Tap); err == nil {
				return codedf(CodeInvalidEnv, "TAP name %s is already taken in netns %s by a %s device", nic.Tap, s.NetnsPath, l.Type())
			}
		}

		// Record the NIC as pending before any change (crash safety).
		rec.PutNIC(nic)
		if err := tx.Save(rec); err != nil {
			rec.RemoveNIC(s.IfName)
			return coded(CodeIOFailure, err, "record NIC %s", s.IfName)
		}
		saved = true
		if err := m.indexContainer(s.ContainerID, s.SandboxID); err != nil {
			m.log().Warn("container index not written", "error", err)
		}
		if err := m.step("pending-saved"); err != nil {
			return err
		}

		if bridge {
			// The guest takes the veth's MAC and IP on the host bridge:
			// park the veth so the two never answer at once.
			undo, where, err := parkVeth(veth, hostHandle, brLink)
			if err != nil {
				return coded(CodeInternal, err, "park %s", s.IfName)
			}
			if where == "host" {
				u.host = append(u.host, undo)
			} else {
				u.ns = append(u.ns, undo)
			}
			return nil
		}
		tap, err := hostnet.CreateTap(hostnet.TapSpec{Name: nic.Tap, MTU: nic.MTU, QueuePairs: s.QueuePairs, Owner: s.TapOwner, Group: s.TapGroup})
		if err != nil {
			return tapError(err, nic.Tap, s.NetnsPath)
		}
		u.ns = append(u.ns, func() error { return hostnet.DeleteTap(nic.Tap) })
		res.TapMAC = tap.Attrs().HardwareAddr.String()
		if err := m.step("tap-created"); err != nil {
			return err
		}
		j, err := hostnet.Join(veth, tap, hostnet.JoinOptions{Mode: s.DataPath, Log: m.log(), Step: m.step})
		if err != nil {
			if errors.Is(err, hostnet.ErrBPFUnavailable) {
				return coded(CodeNotAvailable, err, "join %s and %s", s.IfName, nic.Tap)
			}
			return asCoded(err, "join %s and %s", s.IfName, nic.Tap)
		}
		u.ns = append(u.ns, func() error { return hostnet.Unjoin(veth, nil, j) })
		nic.VethQdiscOwned = j.VethQdiscOwned
		nic.DataPath = string(j.DataPath)
		return nil
	})
	if err != nil {
		if netns.IsGone(err) {
			err = coded(CodeInvalidNetns, err, "CNI_NETNS")
		}
		return nil, rollback(asCoded(err, "set up NIC %s", s.IfName))
	}

	if bridge {
		tap, err := hostnet.CreateTap(hostnet.TapSpec{Name: nic.Tap, MTU: nic.MTU, QueuePairs: s.QueuePairs, Owner: s.TapOwner, Group: s.TapGroup})
		if err != nil {
			return nil, rollback(tapError(err, nic.Tap, "the host netns"))
		}
		u.host = append(u.host, func() error { return hostnet.DeleteTap(nic.Tap) })
		res.TapMAC = tap.Attrs().HardwareAddr.String()
		if err := m.step("bridge-tap-created"); err != nil {
			return nil, rollback(asCoded(err, "set up NIC %s", s.IfName))
		}
		if err := hostnet.SetMaster(tap, brLink); err != nil {
			return nil, rollback(coded(CodeInternal, err, "bridge port"))
		}
		user := bridgeUser(s.SandboxID, s.IfName)
		if err := m.forwardRules().Acquire(s.Bridge, user); err != nil {
			return nil, rollback(coded(CodeInternal, err, "bridge %s forward rules", s.Bridge))
		}
		u.host = append(u.host, func() error { return m.forwardRules().Release(s.Bridge, user) })
	}
	if err := m.step("host-ready"); err != nil {
		return nil, rollback(asCoded(err, "set up NIC %s", s.IfName))
	}

	if rec.VMM != nil {
		att, err := m.vmmAdd(ctx, rec.VMM, nic)
		switch {
		case err == nil:
			nic.State = netsetup.NICAttached
			nic.VMMDeviceID = att.ID
			nic.BDF = att.BDF
			vmm := *rec.VMM
			devID := att.ID
			u.host = append(u.host, func() error { return m.vmmRemove(context.WithoutCancel(ctx), &vmm, devID) })
		case errors.Is(err, vmmadapter.ErrHotplugUnsupported):
			res.Warning = fmt.Sprintf("NIC %s stays pending: %v", s.IfName, err)
		case !rec.VMM.Booted && errors.Is(err, vmmadapter.ErrUnavailable):
			res.Warning = fmt.Sprintf("NIC %s stays pending until the VMM starts: %v", s.IfName, err)
		case errors.Is(err, vmmadapter.ErrUnavailable):
			return nil, rollback(coded(CodeTryAgain, err, "add NIC %s to the %s VMM of sandbox %s", s.IfName, rec.VMM.Kind, s.SandboxID))
		default:
			if !errors.Is(err, vmmadapter.ErrDeviceIDInUse) && !errors.Is(err, vmmadapter.ErrTapBusy) {
				// No answer, a lost connection or a garbled one: the VMM
				// may have added the device anyway. Take it out again
				// before the TAP goes (best effort; logged).
				_ = m.removeStray(context.WithoutCancel(ctx), rec, nic)
			}
			return nil, rollback(coded(CodeInternal, err, "add NIC %s to the %s VMM of sandbox %s", s.IfName, rec.VMM.Kind, s.SandboxID))
		}
		if res.Warning != "" {
			nic.Note = res.Warning
			m.log().Warn(res.Warning, "sandbox", s.SandboxID)
		}
		if err := m.step("vmm-added"); err != nil {
			return nil, rollback(asCoded(err, "add NIC %s", s.IfName))
		}
	}

	nic.HostReady = true
	rec.PutNIC(nic)
	if err := tx.Save(rec); err != nil {
		return nil, rollback(coded(CodeIOFailure, err, "record NIC %s", s.IfName))
	}
	if err := m.step("add-saved"); err != nil {
		return nil, rollback(asCoded(err, "add NIC %s", s.IfName))
	}
	res.NIC = nic
	m.log().Info("NIC added", "sandbox", s.SandboxID, "ifname", s.IfName, "tap", nic.Tap, "state", nic.State)
	return res, nil
}

func recOrNil(rec *netsetup.NetSetup, created bool) *netsetup.NetSetup {
	if created {
		return nil
	}
	return rec
}

func tapError(err error, tap, where string) error {
	if errors.Is(err, hostnet.ErrNameTaken) {
		return coded(CodeInvalidEnv, err, "TAP name %s is already taken in %s", tap, where)
	}
	return coded(CodeInternal, err, "create TAP %s", tap)
}

// asCoded keeps an *Error as it is and wraps anything else as internal.
func asCoded(err error, format string, args ...any) error {
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return coded(CodeInternal, err, format, args...)
}

func bridgeUser(id, ifname string) string { return id + "/" + ifname }

func (m *Manager) forwardRules() hostnet.ForwardRules {
	return hostnet.ForwardRules{Dir: m.Store.Dir() + "/bridge-forward"}
}

// parkVeth takes the veth out of the bridge backend's L2: the host-side
// peer goes down when it is a port of the bridge (the container side stays
// up, so the previous plugin's CHECK still passes), else the veth itself.
// It returns the undo and where it must run ("host" or "ns").
func parkVeth(veth netlink.Link, host *netlink.Handle, br netlink.Link) (func() error, string, error) {
	if peer := hostPeer(veth, host, br); peer != nil {
		if err := host.LinkSetDown(peer); err != nil {
			return nil, "", fmt.Errorf("set %s down: %w", peer.Attrs().Name, err)
		}
		idx := peer.Attrs().Index
		return func() error {
			l, err := netlink.LinkByIndex(idx)
			if err != nil {
				return nil
			}
			return netlink.LinkSetUp(l)
		}, "host", nil
	}
	name := veth.Attrs().Name
	if err := netlink.LinkSetDown(veth); err != nil {
		return nil, "", fmt.Errorf("set %s down: %w", name, err)
	}
	return func() error { return setUpIfPresent(name) }, "ns", nil
}

// hostPeer is veth's peer when it is a veth port of the host bridge br
// (nil otherwise). Call it inside the sandbox netns with a host handle.
func hostPeer(veth netlink.Link, host *netlink.Handle, br netlink.Link) netlink.Link {
	v, ok := veth.(*netlink.Veth)
	if !ok || br == nil {
		return nil
	}
	idx, err := netlink.VethPeerIndex(v)
	if err != nil || idx <= 0 {
		return nil
	}
	peer, err := host.LinkByIndex(idx)
	if err != nil {
		return nil
	}
	if _, ok := peer.(*netlink.Veth); !ok || peer.Attrs().MasterIndex != br.Attrs().Index {
		return nil
	}
	return peer
}

// unparkVeth undoes parkVeth at DEL (inside the sandbox netns).
func unparkVeth(ifname string, host *netlink.Handle, br netlink.Link) error {
	veth, err := netlink.LinkByName(ifname)
	if err != nil {
		if hostnet.IsNotFound(err) {
			return nil
		}
		return err
	}
	if peer := hostPeer(veth, host, br); peer != nil && peer.Attrs().Flags&net.FlagUp == 0 {
		if err := host.LinkSetUp(peer); err != nil {
			return fmt.Errorf("set %s up again: %w", peer.Attrs().Name, err)
		}
	}
	if veth.Attrs().Flags&net.FlagUp == 0 {
		return netlink.LinkSetUp(veth)
	}
	return nil
}

func setUpIfPresent(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if hostnet.IsNotFound(err) {
			return nil
		}
		return err
	}
	return netlink.LinkSetUp(l)
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

// step runs the test hook at a named point of a change. Each name is also
// a failpoint (internal/failpoint; registered in failpoint.Points), armed
// only in test builds made with -tags vmnic_failpoints.
func (m *Manager) step(name string) error {
	m.Steps.Step(name)
	if err := failpoint.Inject(name); err != nil {
		return err
	}
	if m.hook == nil {
		return nil
	}
	return m.hook(name)
}
