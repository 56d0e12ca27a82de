// Package connect is vmnic's one seam to the VMMs: the only package that
// imports the per-VMM packages (cloudhypervisor, firecracker, qemu). The
// engine and vmnicctl reach everything that differs by VMM kind through it:
// the adapter (Open), the pre-boot NIC arguments for a launcher
// (LaunchNICs) and the device ids a VMM gives vmnic's NICs (DeviceIDs).
//
// It is a package of its own, not part of vmmadapter, because the per-VMM
// packages import vmmadapter for its types: vmmadapter importing them back
// would be an import cycle.
//
// A new VMM is one more package under vmmadapter/, one more Kind in
// vmmadapter.Kinds and one more entry in vmms below.
package connect

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/cloudhypervisor"
	"github.com/vmnic/vmnic/vmmadapter/firecracker"
	"github.com/vmnic/vmnic/vmmadapter/qemu"
)

// vmm is what vmnic needs of one VMM kind.
type vmm struct {
	// open returns the adapter for an API socket.
	open func(socket string, opts vmmadapter.Options) (vmmadapter.Adapter, error)
	// deviceID is the device id the VMM's adapter and launch arguments give
	// a NIC id (the id unchanged when the VMM accepts it as it is).
	deviceID func(nicID string) string
	// launch renders the NICs a launcher passes at boot.
	launch func(nics []vmmadapter.NIC, o LaunchOptions) (Launch, error)
}

// vmms holds one entry per vmmadapter.Kinds element (a test checks both
// lists agree). It is never written after init.
var vmms = map[vmmadapter.Kind]vmm{
	vmmadapter.CloudHypervisor: {
		open:     adapter(cloudhypervisor.New),
		deviceID: func(id string) string { return id }, // vm.add-net and --net take the id as given
		launch: func(nics []vmmadapter.NIC, o LaunchOptions) (Launch, error) {
			return Launch{Args: cloudhypervisor.NetFdArgs(nics, o.Fds)}, nil
		},
	},
	vmmadapter.Firecracker: {
		open:     adapter(firecracker.New),
		deviceID: firecracker.IfaceID,
		launch: func(nics []vmmadapter.NIC, o LaunchOptions) (Launch, error) {
			if len(o.Fds) > 0 {
				return Launch{}, fmt.Errorf("firecracker: %w (it opens TAPs by name)", vmmadapter.ErrFdsUnsupported)
			}
			out, err := firecracker.NetworkInterfacesJSON(nics, o.Version)
			if err != nil {
				return Launch{}, err
			}
			return Launch{Config: out}, nil
		},
	},
	vmmadapter.QEMU: {
		open:     adapter(qemu.New),
		deviceID: qemu.SanitizeID,
		launch: func(nics []vmmadapter.NIC, o LaunchOptions) (Launch, error) {
			if o.RootPorts < 0 || o.RootPorts > qemu.MaxRootPorts {
				return Launch{}, fmt.Errorf("root ports %d: must be 0 to %d", o.RootPorts, qemu.MaxRootPorts)
			}
			return Launch{Args: append(qemu.FdArgs(nics, o.Fds), qemu.RootPortArgs(o.RootPorts)...)}, nil
		},
	},
}

// adapter turns a per-VMM constructor into vmm.open, so that a failed
// constructor yields a nil interface, never a typed nil pointer.
func adapter[A vmmadapter.Adapter](newAdapter func(string, vmmadapter.Options) (A, error)) func(string, vmmadapter.Options) (vmmadapter.Adapter, error) {
	return func(socket string, opts vmmadapter.Options) (vmmadapter.Adapter, error) {
		a, err := newAdapter(socket, opts)
		if err != nil {
			return nil, err
		}
		return a, nil
	}
}

func lookup(kind vmmadapter.Kind) (vmm, error) {
	v, ok := vmms[kind]
	if !ok {
		return vmm{}, fmt.Errorf("unknown VMM kind %q (known: %s)", kind, kindList())
	}
	return v, nil
}

// Open returns the adapter for kind talking to socket (Cloud Hypervisor's
// --api-socket, Firecracker's --api-sock, QEMU's QMP socket). Cloud
// Hypervisor and Firecracker adapters do not connect here: an absent VMM
// shows up as vmmadapter.ErrUnavailable on the first call. QEMU's connects
// (QMP needs a capabilities handshake), so an absent QEMU is
// vmmadapter.ErrUnavailable here.
func Open(kind vmmadapter.Kind, socket string, opts vmmadapter.Options) (vmmadapter.Adapter, error) {
	if socket == "" {
		return nil, fmt.Errorf("open %s adapter: no API socket given", kind)
	}
	v, err := lookup(kind)
	if err != nil {
		return nil, fmt.Errorf("open adapter: %w", err)
	}
	return v.open(socket, opts)
}

// LaunchOptions is what a launcher's arguments depend on besides the NICs.
type LaunchOptions struct {
	// Version of the VMM that will boot ("1.16.1"), for kinds whose
	// arguments depend on it: Firecracker writes mtu only from 1.16.0, and
	// an empty Version leaves it out. Other kinds ignore it.
	Version string
	// RootPorts (QEMU) reserves this many free PCIe root ports for NICs
	// hot-added later (q35: pcie.0 refuses hot-plug); other kinds ignore
	// it.
	RootPorts int
	// Fds, when set, are the TAP queue fds the VMM inherits, per NIC (in
	// the order of the nics given, one per queue pair): the NICs are
	// rendered for fd handoff (CH "--net fd=[…]", QEMU "-netdev
	// tap,fds=…"). Firecracker takes none.
	Fds [][]int
}

// Launch is how a VMM launcher passes NICs at boot: command-line arguments
// (Cloud Hypervisor "--net …", QEMU "-netdev …" "-device …" pairs), or a
// fragment of the VMM's configuration file (Firecracker's
// "network-interfaces" array for --config-file). Exactly one is set for a
// kind; Args is nil when there are no NICs.
type Launch struct {
	Args   []string
	Config json.RawMessage
}

// LaunchNICs renders nics for a launcher of kind, with the device ids the
// kind's adapter would use, so that RemoveNIC works on them later.
func LaunchNICs(kind vmmadapter.Kind, nics []vmmadapter.NIC, o LaunchOptions) (Launch, error) {
	v, err := lookup(kind)
	if err != nil {
		return Launch{}, fmt.Errorf("launch arguments: %w", err)
	}
	if len(o.Fds) > 0 {
		if len(o.Fds) != len(nics) {
			return Launch{}, fmt.Errorf("launch arguments: fds for %d NICs, %d NICs: %w", len(o.Fds), len(nics), vmmadapter.ErrFdCount)
		}
		for i, nic := range nics {
			if want := max(nic.QueuePairs, 1); len(o.Fds[i]) != want {
				return Launch{}, fmt.Errorf("launch arguments: NIC %s: %d fds for %d queue pair(s): %w", nic.ID, len(o.Fds[i]), want, vmmadapter.ErrFdCount)
			}
			for _, fd := range o.Fds[i] {
				if fd <= 2 {
					return Launch{}, fmt.Errorf("launch arguments: NIC %s: fd %d: stdin, stdout and stderr cannot carry a TAP", nic.ID, fd)
				}
			}
		}
	}
	return v.launch(nics, o)
}

// DeviceIDs lists the device ids under which a VMM may hold the NIC with id
// nicID: nicID itself first, then the id each supported VMM makes of it
// when it does not accept nicID as it is (Firecracker's iface_id, QEMU's
// device id), without repeats. A caller matches it against what
// Adapter.NICs reports.
func DeviceIDs(nicID string) []string {
	ids := []string{nicID}
	for _, k := range vmmadapter.Kinds {
		if id := vmms[k].deviceID(nicID); !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// ParseKind reads a kind as users type it: the stored names
// ("cloud-hypervisor", "firecracker", "qemu") and the short forms "ch",
// "clh", "fc".
func ParseKind(s string) (vmmadapter.Kind, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "cloud-hypervisor", "cloudhypervisor", "ch", "clh":
		return vmmadapter.CloudHypervisor, nil
	case "firecracker", "fc":
		return vmmadapter.Firecracker, nil
	case "qemu":
		return vmmadapter.QEMU, nil
	}
	return "", fmt.Errorf("unknown VMM kind %q (known: %s)", s, kindList())
}

func kindList() string {
	names := make([]string, len(vmmadapter.Kinds))
	for i, k := range vmmadapter.Kinds {
		names[i] = string(k)
	}
	return strings.Join(names, ", ")
}
