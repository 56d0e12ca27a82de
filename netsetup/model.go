// Package netsetup is the NetSetup record: the per-sandbox state file shared by
// the vmnic CNI plugin, the NRI hook, vmnicctl and any VM manager that imports
// it. It holds the model (this file), the loading of older record shapes
// (legacy.go) and the store, which owns every file under the state dir
// (store.go; by job: records.go, index.go, locks.go, bridgeforward.go,
// mirror.go, prune.go, and the file primitives in file.go).
package netsetup

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// SchemaVersion is the record shape this package writes.
const SchemaVersion = 2

// Phase is a sandbox's lifecycle phase.
type Phase string

const (
	// PhasePrepared: the netns exists, the sandbox has zero NICs.
	PhasePrepared Phase = "prepared"
	// PhaseConfigured: at least one NIC is recorded.
	PhaseConfigured Phase = "configured"
	// PhaseTearingDown: a teardown is under way.
	PhaseTearingDown Phase = "tearing_down"
	// PhaseInvalid: a teardown failed half way; only a teardown may follow.
	PhaseInvalid Phase = "invalid"
)

// NICState is the state of one NIC.
type NICState string

const (
	// NICPending: recorded before any host change, or set up on the host but
	// not (yet) inside the VMM.
	NICPending NICState = "pending"
	// NICAttached: the VMM has the device.
	NICAttached NICState = "attached"
	// NICDetaching: a removal from the VMM or the host is under way.
	NICDetaching NICState = "detaching"
	// NICQuiesced: the NIC is out of the data path because its VMM is
	// paused, stopped or gone: frames arriving on the veth are dropped
	// there instead of being redirected into a TAP nobody reads. Its host
	// side is otherwise intact (healthy); ResumeState is the state it goes
	// back to when the VMM runs again (see Quiesce and Resume in
	// internal/sandbox).
	NICQuiesced NICState = "quiesced"
)

// Backend is how NICs reach the VM.
type Backend string

const (
	// BackendCNI: the VM has its own netns; each NIC is a TAP joined to the
	// CNI veth by tc redirect.
	BackendCNI Backend = "cni"
	// BackendBridge: TAPs are ports of a host bridge; no netns.
	BackendBridge Backend = "bridge"
)

// NetSetup is one sandbox's record.
type NetSetup struct {
	Schema       int    `json:"schema"`
	SandboxID    string `json:"sandbox_id"`
	PodUID       string `json:"pod_uid,omitempty"`
	PodName      string `json:"pod_name,omitempty"`
	PodNamespace string `json:"pod_namespace,omitempty"`
	Phase        Phase  `json:"phase"`

	NetBackend   Backend  `json:"net_backend,omitempty"`
	NetnsPath    string   `json:"netns_path,omitempty"`
	NetnsOwned   bool     `json:"netns_owned"`
	NetnsID      *NetnsID `json:"netns_id,omitempty"`
	NetBridgeDev string   `json:"net_bridge_dev,omitempty"`

	// RuntimeDir is the per-sandbox directory for the VMM's API socket.
	RuntimeDir string `json:"runtime_dir,omitempty"`

	// Origin names what manages the record's lifecycle: "nri" for sandboxes
	// of the NRI hook (torn down when the runtime no longer lists them);
	// empty for records of vmnicctl or the CNI plugin alone.
	Origin string `json:"origin,omitempty"`

	// PodPID is the pod sandbox's process (the pause process) as the runtime
	// reported it, and PodPIDStart its start time (clock ticks after boot,
	// field 22 of /proc/<pid>/stat), so that a reused pid is not taken for
	// it. The NRI hook records them to notice a pod that went without
	// telling it; 0 when unknown.
	PodPID      int    `json:"pod_pid,omitempty"`
	PodPIDStart uint64 `json:"pod_pid_start,omitempty"`
	// PodPIDNS is the pid namespace PodPID is valid in (nsfs dev:ino, as
	// NetnsID): a process seen from another pid namespace (the hook
	// redeployed without the host's pids) is never judged by that pid.
	PodPIDNS *NetnsID `json:"pod_pid_ns,omitempty"`

	VMM            *VMM  `json:"vmm,omitempty"`
	NetworkConfigs []NIC `json:"network_configs"`

	// Restore is set on a sandbox prepared for a restored VM (vmnicctl
	// restore): the NICs it expects, from the snapshot manifest. A CNI ADD
	// of an expected ifname is matched to it (restore.go in
	// internal/sandbox).
	Restore *Restore `json:"restore,omitempty"`

	// Error says why the record is invalid (set with PhaseInvalid).
	Error string `json:"error,omitempty"`

	// CreatedBy says who made the record: CreatedByCNI for a record a CNI ADD
	// made for a sandbox nobody prepared (GC and the last DEL remove it),
	// empty or anything else for a prepared sandbox (kept at zero NICs).
	CreatedBy string `json:"created_by,omitempty"`

	// Quarantined is set on a record rebuilt from the host objects: where
	// the unreadable file it replaces went (<stateDir>/quarantine/…).
	Quarantined string `json:"quarantined,omitempty"`

	// legacy is set when the record was loaded from an older schema.
	legacy int
}

// Restore is what a sandbox prepared for a restore expects.
type Restore struct {
	// From is the sandbox the snapshot was taken of.
	From string `json:"from"`
	// KeepIPs: each ADD must bring the snapshot's IPs (the guest keeps
	// its configuration); else only the MAC must match (a clone whose
	// guest is told its new addresses).
	KeepIPs bool `json:"keep_ips"`
	// VMMKind is the kind of the VMM the snapshot was taken from.
	VMMKind string `json:"vmm_kind,omitempty"`
	// Expected are the snapshot's NICs.
	Expected []SnapNIC `json:"expected_nics"`
}

// ExpectedNIC is the snapshot NIC the sandbox expects at ifname.
func (s *NetSetup) ExpectedNIC(ifname string) (*SnapNIC, bool) {
	if s.Restore == nil {
		return nil, false
	}
	for i := range s.Restore.Expected {
		if s.Restore.Expected[i].IfName == ifname {
			return &s.Restore.Expected[i], true
		}
	}
	return nil, false
}

// CreatedByCNI marks a record made by a CNI ADD (see NetSetup.CreatedBy).
const CreatedByCNI = "cni"

// NetnsID identifies a network namespace by the nsfs device and inode, the
// only identity that survives different paths to one namespace.
type NetnsID struct {
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

func (n NetnsID) String() string { return fmt.Sprintf("%d:%d", n.Dev, n.Ino) }

// VMM is the VMM a sandbox is attached to.
type VMM struct {
	Kind      string `json:"kind"`
	APISocket string `json:"api_socket"`
	Booted    bool   `json:"booted"`
	Version   string `json:"version,omitempty"`
	// SocketUID is the owner of the API socket when the VMM was attached;
	// vmnic dials only a socket of that owner (nil: not known, any).
	SocketUID *uint32 `json:"socket_uid,omitempty"`
	// PID is the VMM's process id as the adapter learnt it at attach
	// (Cloud Hypervisor's vmm.ping; QEMU's QMP peer, SO_PEERCRED): TAP fds
	// are sent only to that process (SO_PEERCRED).
	PID int `json:"pid,omitempty"`
}

// DNS mirrors the CNI DNS block.
type DNS struct {
	Nameservers []string `json:"nameservers,omitempty"`
	Domain      string   `json:"domain,omitempty"`
	Search      []string `json:"search,omitempty"`
	Options     []string `json:"options,omitempty"`
}

// Route is a route the guest should install, with the CNI 1.1 route fields.
// A route without GW goes via the NIC's gateway of its family (see
// NIC.GatewayFor), as the CNI plugins' ipam.ConfigureIface installs it.
type Route struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
	MTU int    `json:"mtu,omitempty"`
	// AdvMSS is the TCP MSS advertised on the route (0: not set).
	AdvMSS int `json:"advmss,omitempty"`
	// Priority is the route metric (0: not set).
	Priority int `json:"priority,omitempty"`
	// Table is the routing table (nil: main).
	Table *int `json:"table,omitempty"`
	// Scope is the route scope as rtnetlink numbers it (nil: by the kernel's
	// rule: link without a gateway, universe with one).
	Scope *int `json:"scope,omitempty"`
}

// NIC is one VM network interface.
type NIC struct {
	ID          string `json:"id"`
	Network     string `json:"network,omitempty"`
	ContainerID string `json:"container_id,omitempty"`
	IfName      string `json:"ifname"`
	Tap         string `json:"tap"`
	MAC         string `json:"mac,omitempty"`
	MTU         int    `json:"mtu,omitempty"`
	NumQueues   int    `json:"num_queues,omitempty"`
	QueueSize   int    `json:"queue_size,omitempty"`

	IPs []string `json:"ips,omitempty"`
	// Gateway is the NIC's first gateway, IPv4 preferred (the only one
	// records before Gateways kept).
	Gateway string `json:"gateway,omitempty"`
	// Gateways holds the NIC's gateway of each family, IPv4 first, as the
	// CNI result gave them (at most one per family).
	Gateways []string `json:"gateways,omitempty"`
	Routes   []Route  `json:"routes,omitempty"`
	DNS      *DNS     `json:"dns,omitempty"`

	State NICState `json:"state"`
	// Note says why a NIC is still pending (e.g. a VMM that cannot
	// hot-plug), or what the guest must do for an attached or detaching
	// one (the adapter's Attachment.Note; Firecracker's rescan/unplug
	// steps, an MTU the guest will not learn).
	Note        string `json:"note,omitempty"`
	HostReady   bool   `json:"host_ready,omitempty"`
	VMMDeviceID string `json:"vmm_device_id,omitempty"`
	BDF         string `json:"bdf,omitempty"`
	// GuestAcked: the VM manager said the guest has let go of the device
	// (vmnicctl guest-acked), so a VMM that tears devices down without
	// telling the guest (Firecracker) may remove it.
	GuestAcked bool `json:"guest_acked,omitempty"`

	// ResumeState is the state a quiesced NIC returns to on resume
	// (pending or attached); QuiesceReason says why it was quiesced. Both
	// are empty unless State is NICQuiesced.
	ResumeState   NICState `json:"resume_state,omitempty"`
	QuiesceReason string   `json:"quiesce_reason,omitempty"`

	// SnapshotTap is the TAP name the VM snapshot refers to when this
	// restored NIC's TAP had to get another name (that name was taken in
	// the netns): the override the VMM's restore is given (vmnicctl
	// restore-args). Empty when the names are the same.
	SnapshotTap string `json:"snapshot_tap,omitempty"`
	// L2Bridge is the host bridge the veth's peer is a port of, for a
	// restored NIC (clones of one snapshot share the guest MAC: two on
	// one bridge are refused). Empty on point-to-point CNIs.
	L2Bridge string `json:"l2_bridge,omitempty"`

	// TapHandoff is the handoff the NIC's conf asked for: HandoffFd,
	// HandoffName, or empty for auto (fd where the VMM takes fds).
	TapHandoff Handoff `json:"tap_handoff,omitempty"`
	// Handoff is how the VMM got the TAP when the NIC was attached: its
	// queue fds over the control socket (HandoffFd) or by name
	// (HandoffName); empty while no VMM has it.
	Handoff Handoff `json:"handoff,omitempty"`

	// VethQdiscOwned: vmnic added the ingress qdisc on the veth (there was
	// none), so it removes it again at DEL when no filter is left on it.
	VethQdiscOwned bool `json:"veth_qdisc_owned,omitempty"`
	// DataPath is how the cni backend joins the veth and the TAP: "bpf"
	// (cls_bpf redirect) or "u32" (tc u32 + mirred). Absent: u32 (records
	// written before the field existed), or a bridge-backend NIC.
	DataPath string `json:"datapath,omitempty"`

	// Recovered: the NIC was rebuilt from its host objects (the TAP's
	// marker) after the record was lost or quarantined; what only the record
	// knew (IPs, routes, DNS, the VMM device) is missing.
	Recovered bool `json:"recovered,omitempty"`

	// Schema-1 records kept the sandbox-wide fields on each NIC.
	LegacyBackend   Backend `json:"backend,omitempty"`
	LegacyNetnsPath string  `json:"netns_path,omitempty"`
	LegacyBridge    string  `json:"bridge,omitempty"`
}

// Handoff is how a VMM gets a NIC's TAP.
type Handoff string

const (
	// HandoffFd: vmnic opens one fd per queue pair of the TAP in the
	// sandbox netns and passes them over the VMM's control socket
	// (SCM_RIGHTS); the VMM needs no /dev/net/tun and no CAP_NET_ADMIN.
	HandoffFd Handoff = "fd"
	// HandoffName: the VMM opens the TAP by name in its own netns.
	HandoffName Handoff = "name"
)

// QueuePairs is the TAP's queue-pair count (num_queues counts virtqueues: 2 per pair).
func (n NIC) QueuePairs() int {
	if n.NumQueues < 2 {
		return 1
	}
	return n.NumQueues / 2
}

// New returns an empty record at phase prepared.
func New(sandboxID string) *NetSetup {
	return &NetSetup{Schema: SchemaVersion, SandboxID: sandboxID, Phase: PhasePrepared, NetBackend: BackendCNI}
}

// LegacySchema reports the schema the record was loaded from when it was
// older than SchemaVersion (0 otherwise). Saving writes the current schema.
func (s *NetSetup) LegacySchema() int { return s.legacy }

// ResolvedNetBackend is the sandbox's backend, falling back to NIC 0 for
// schema-1 records, and to cni when nothing says otherwise.
func (s *NetSetup) ResolvedNetBackend() Backend {
	if s.NetBackend != "" {
		return s.NetBackend
	}
	if len(s.NetworkConfigs) > 0 && s.NetworkConfigs[0].LegacyBackend != "" {
		return s.NetworkConfigs[0].LegacyBackend
	}
	return BackendCNI
}

// ResolvedNetnsPath is the sandbox's netns path, falling back to NIC 0.
func (s *NetSetup) ResolvedNetnsPath() string {
	return s.orFirstNIC(s.NetnsPath, func(n NIC) string { return n.LegacyNetnsPath })
}

// ResolvedNetBridgeDev is the bridge of the bridge backend, falling back to NIC 0.
func (s *NetSetup) ResolvedNetBridgeDev() string {
	return s.orFirstNIC(s.NetBridgeDev, func(n NIC) string { return n.LegacyBridge })
}

// orFirstNIC is v, or when v is empty the legacy field of NIC 0 (older
// record shapes kept sandbox-wide fields on each NIC).
func (s *NetSetup) orFirstNIC(v string, legacy func(NIC) string) string {
	if v == "" && len(s.NetworkConfigs) > 0 {
		return legacy(s.NetworkConfigs[0])
	}
	return v
}

// NIC returns the NIC with the given ifname.
func (s *NetSetup) NIC(ifname string) (*NIC, bool) {
	for i := range s.NetworkConfigs {
		if s.NetworkConfigs[i].IfName == ifname {
			return &s.NetworkConfigs[i], true
		}
	}
	return nil, false
}

// PutNIC adds or replaces the NIC with nic.IfName, keeps the list ordered and
// updates the phase.
func (s *NetSetup) PutNIC(nic NIC) {
	if cur, ok := s.NIC(nic.IfName); ok {
		*cur = nic
	} else {
		s.NetworkConfigs = append(s.NetworkConfigs, nic)
	}
	s.normalize()
}

// RemoveNIC drops the NIC with the given ifname (no-op when absent) and
// updates the phase. It reports whether a NIC was removed.
func (s *NetSetup) RemoveNIC(ifname string) bool {
	for i := range s.NetworkConfigs {
		if s.NetworkConfigs[i].IfName == ifname {
			s.NetworkConfigs = append(s.NetworkConfigs[:i], s.NetworkConfigs[i+1:]...)
			s.normalize()
			return true
		}
	}
	return false
}

// normalize orders NICs (eth0 first, then by the trailing index of the
// ifname, then by name) and derives the phase from the NIC count unless the
// sandbox is tearing down or invalid.
func (s *NetSetup) normalize() {
	SortNICs(s.NetworkConfigs)
	if s.Phase == PhaseTearingDown || s.Phase == PhaseInvalid {
		return
	}
	if len(s.NetworkConfigs) == 0 {
		s.Phase = PhasePrepared
	} else {
		s.Phase = PhaseConfigured
	}
}

// SortNICs orders NICs so that eth0 comes first, then by ifname index
// (net1 < net2 < net10), then by name.
func SortNICs(nics []NIC) {
	sort.SliceStable(nics, func(i, j int) bool { return nicLess(nics[i].IfName, nics[j].IfName) })
}

func nicLess(a, b string) bool {
	if (a == "eth0") != (b == "eth0") {
		return a == "eth0"
	}
	ai, aok := ifIndex(a)
	bi, bok := ifIndex(b)
	if aok && bok && ai != bi {
		return ai < bi
	}
	if aok != bok {
		return aok
	}
	return a < b
}

// ifIndex is the trailing decimal number of an ifname ("net12" → 12).
func ifIndex(name string) (int, bool) {
	i := len(name)
	for i > 0 && name[i-1] >= '0' && name[i-1] <= '9' {
		i--
	}
	if i == len(name) {
		return 0, false
	}
	n, err := strconv.Atoi(name[i:])
	return n, err == nil
}

var sandboxIDPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// MaxSandboxIDLen bounds sandbox ids (they become file names).
const MaxSandboxIDLen = 200

// ValidateSandboxID accepts the characters CNI allows in a container id and
// nothing that could escape the state directory.
func ValidateSandboxID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("sandbox id is empty")
	case len(id) > MaxSandboxIDLen:
		return fmt.Errorf("sandbox id %.20q… is longer than %d bytes", id, MaxSandboxIDLen)
	case !sandboxIDPattern.MatchString(id) || strings.Contains(id, ".."):
		return fmt.Errorf("sandbox id %q: only letters, digits, '_', '.' and '-' are allowed, starting with a letter or digit", id)
	}
	return nil
}

// Validate checks a record's invariants before it is written.
// validateReadable is what a record must be to be read at all: Validate,
// except that values a newer vmnic may have written (a phase, a NIC state,
// a backend this version does not know) are kept, as Validate keeps them
// while a sandbox is torn down. Such a record is not unreadable: it is not
// quarantined, a teardown finishes it (issue 16 item 2), and a change that
// would save it as it is fails Validate with a message naming the value.
func (s *NetSetup) validateReadable() error {
	c := *s
	c.Phase = PhaseTearingDown
	return c.Validate()
}

func (s *NetSetup) Validate() error {
	if err := ValidateSandboxID(s.SandboxID); err != nil {
		return err
	}
	switch s.Phase {
	case PhasePrepared, PhaseConfigured, PhaseTearingDown, PhaseInvalid:
	default:
		return fmt.Errorf("sandbox %s: unknown phase %q", s.SandboxID, s.Phase)
	}
	tearingDown := s.Phase == PhaseTearingDown || s.Phase == PhaseInvalid
	switch s.ResolvedNetBackend() {
	case BackendCNI, BackendBridge:
	default:
		// As an unknown NIC state below: kept as written while the
		// sandbox is torn down.
		if !tearingDown {
			return fmt.Errorf("sandbox %s: unknown net_backend %q", s.SandboxID, s.NetBackend)
		}
	}
	seen := map[string]bool{}
	for _, n := range s.NetworkConfigs {
		if n.IfName == "" {
			return fmt.Errorf("sandbox %s: a NIC has no ifname", s.SandboxID)
		}
		if seen[n.IfName] {
			return fmt.Errorf("sandbox %s: NIC %s recorded twice", s.SandboxID, n.IfName)
		}
		seen[n.IfName] = true
		switch n.State {
		case NICPending, NICAttached, NICDetaching:
		case NICQuiesced:
			switch n.ResumeState {
			case NICPending, NICAttached:
			default:
				return fmt.Errorf("sandbox %s: NIC %s: quiesced with resume state %q (want pending or attached)", s.SandboxID, n.IfName, n.ResumeState)
			}
		default:
			// A state this version does not know (a newer vmnic wrote it
			// before a downgrade) is kept as written while the sandbox is
			// torn down: a teardown must always be able to finish
			// (DESIGN "Lifecycle"), and it removes the NIC.
			if tearingDown {
				continue
			}
			return fmt.Errorf("sandbox %s: NIC %s: unknown state %q", s.SandboxID, n.IfName, n.State)
		}
		for field, h := range map[string]Handoff{"handoff": n.Handoff, "tap_handoff": n.TapHandoff} {
			switch h {
			case "", HandoffFd, HandoffName:
			default:
				return fmt.Errorf("sandbox %s: NIC %s: unknown %s %q", s.SandboxID, n.IfName, field, h)
			}
		}
	}
	return nil
}
