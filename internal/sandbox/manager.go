// Package sandbox is vmnic's sandbox engine: it prepares a sandbox (netns and
// NetSetup record at zero NICs), adds and removes NICs (TAP, tc redirect,
// bridge port, VMM hot-plug) and tears a sandbox down. The CNI plugin,
// vmnicctl and the NRI hook all drive it.
package sandbox

import (
	"io"
	"log/slog"

	"github.com/vmnic/vmnic/internal/steptime"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// DefaultNetnsDir is where owned network namespaces are bind-mounted.
const DefaultNetnsDir = "/var/run/netns"

// OwnedNetnsPrefix prefixes the names of the network namespaces vmnic owns.
const OwnedNetnsPrefix = "vmnic-"

// Manager drives sandboxes recorded in Store.
type Manager struct {
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

	// hook, when set (tests), runs at named points of a change; an error
	// it returns makes the change fail there.
	hook func(step string) error

	// Steps, when set, times the stretches between the named points of a
	// change (the points step() marks); see internal/steptime.
	Steps *steptime.Recorder
}

// PrepareOptions say how a sandbox is prepared.
type PrepareOptions struct {
	NetnsPath                     string // adopt this netns; empty = create and own <NetnsDir>/vmnic-<id>
	PodName, PodNamespace, PodUID string
	RuntimeDir                    string // per-sandbox dir for the VMM API socket (recorded)
	// Origin is recorded with the record itself (NetSetup.Origin), so a
	// crash right after the prepare cannot leave a record without it.
	Origin string
}

// TeardownOptions say how much a teardown removes. KeepNetns (a pod stop)
// removes the NICs and keeps an owned netns and the record (at zero NICs);
// without it (a pod removal) everything goes.
type TeardownOptions struct{ KeepNetns bool }

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
