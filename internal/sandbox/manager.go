// Package sandbox is vmnic's sandbox engine: it prepares a sandbox (netns and
// NetSetup record at zero NICs), adds and removes NICs (TAP, tc redirect,
// bridge port, VMM hot-plug) and tears a sandbox down. The CNI plugin,
// vmnicctl and the NRI hook all drive it.
//
// Where things are: manager.go builds the Manager; validate.go checks a
// NICSpec; add.go is AddNIC; remove.go is DelNIC and the removal of one
// NIC (also used by teardown.go and gc.go); backend.go is the host side of
// a NIC, with one implementation per backend (backend_cni.go,
// backend_bridge.go); vmm.go talks to the VMM; prepare.go, teardown.go,
// gc.go, resolve.go and check.go hold the operations they name; quiesce.go
// takes a sandbox's NICs out of the data path and back (VMM paused, stopped,
// gone), restore.go prepares a sandbox for a restored VM and matches its
// ADDs to the snapshot's NICs.
package sandbox

import (
	"io"
	"log/slog"

	"github.com/vmnic/vmnic/internal/failpoint"
	"github.com/vmnic/vmnic/internal/steptime"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// DefaultNetnsDir is where owned network namespaces are bind-mounted.
const DefaultNetnsDir = "/var/run/netns"

// OwnedNetnsPrefix prefixes the names of the network namespaces vmnic owns.
const OwnedNetnsPrefix = "vmnic-"

// Config is what a Manager is built from (see New).
type Config struct {
	Store      *netsetup.Store
	NetnsDir   string             // where owned netns are bind-mounted; default /var/run/netns
	Logger     *slog.Logger       // nil = discard
	VMMOptions vmmadapter.Options // timeouts for VMM calls
	// VMMSocketDirs confines the VMM API sockets vmnic dials (attach, and
	// every socket read from a record) to these directories (see
	// CheckVMMSocket); nil = no check (library use: the programs set it
	// with SocketDirs).
	VMMSocketDirs []string

	// OpenVMM opens an adapter for a VMM; nil uses the default (vmmadapter/connect).
	OpenVMM func(kind vmmadapter.Kind, socket string, opts vmmadapter.Options) (vmmadapter.Adapter, error)
}

// Manager drives sandboxes recorded in Store. Build it with New.
type Manager struct {
	Config

	// stepHooks run, in order, at every named point of a change (see
	// step); New wires them once.
	stepHooks []func(step string) error
}

// Option is an optional part of a Manager, given to New.
type Option func(*hooks)

// hooks are what the options ask New to wire at the named points.
type hooks struct {
	times *steptime.Recorder
	test  func(step string) error
}

// WithStepTimes times the stretches between the named points of a change
// with rec (see internal/steptime); a nil rec times nothing.
func WithStepTimes(rec *steptime.Recorder) Option {
	return func(h *hooks) { h.times = rec }
}

// withHook runs hook (tests) at every named point of a change; an error it
// returns makes the change fail there.
func withHook(hook func(step string) error) Option {
	return func(h *hooks) { h.test = hook }
}

// New builds a Manager from c. Its step hooks are wired here, once, in this
// order: the step-time recorder (WithStepTimes), the failpoints
// (internal/failpoint; only in a build made with -tags vmnic_failpoints),
// then a test's hook.
func New(c Config, opts ...Option) *Manager {
	var h hooks
	for _, o := range opts {
		o(&h)
	}
	m := &Manager{Config: c}
	if c.Store != nil {
		// An unreadable record is quarantined by the store and made again
		// from the host here (recover.go); what the store repairs or
		// reports goes to the engine's log.
		c.Store.SetRebuild(m.rebuild)
		if c.Logger != nil {
			c.Store.SetLogger(c.Logger)
		}
	}
	if h.times != nil {
		m.stepHooks = append(m.stepHooks, func(name string) error { h.times.Step(name); return nil })
	}
	if failpoint.Enabled {
		m.stepHooks = append(m.stepHooks, failpoint.Inject)
	}
	if h.test != nil {
		m.stepHooks = append(m.stepHooks, h.test)
	}
	return m
}

// step marks a named point of a change and runs the step hooks there; the
// first error stops the change. Each name is also a failpoint, registered
// in failpoint.Points.
func (m *Manager) step(name string) error {
	for _, hook := range m.stepHooks {
		if err := hook(name); err != nil {
			return err
		}
	}
	return nil
}

// PrepareOptions say how a sandbox is prepared.
type PrepareOptions struct {
	NetnsPath                     string // adopt this netns; empty = create and own <NetnsDir>/vmnic-<id>
	PodName, PodNamespace, PodUID string
	RuntimeDir                    string // per-sandbox dir for the VMM API socket (recorded)
	// Origin is recorded with the record itself (NetSetup.Origin), so a
	// crash right after the prepare cannot leave a record without it.
	Origin string
	// PodPID, PodPIDStart and PodPIDNS, when PodPID is not 0, are recorded
	// as the pod process (NetSetup.PodPID), with the record itself: the
	// NRI hook's RunPodSandbox is then one record write.
	PodPID      int
	PodPIDStart uint64
	PodPIDNS    netsetup.NetnsID
}

// TeardownOptions say how much a teardown removes. KeepNetns (a pod stop)
// removes the NICs and keeps an owned netns and the record (at zero NICs);
// without it (a pod removal) everything goes. IfNetnsGone (a gc) tears
// down only when, checked again under the sandbox's lock, the recorded
// netns is gone from its path (or another namespace is there).
type TeardownOptions struct {
	KeepNetns   bool
	IfNetnsGone bool
}

func (m *Manager) log() *slog.Logger {
	if m.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return m.Logger
}

func (m *Manager) netnsDir() string {
	if m.NetnsDir == "" {
		return DefaultNetnsDir
	}
	return m.NetnsDir
}
