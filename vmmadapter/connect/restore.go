package connect

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/qemu"
)

// RestoreNIC is one NIC of a VM restored from a snapshot: the NIC as it is
// now (its TAP is the one vmnic made for the restored sandbox), the device
// id the VMM's snapshot holds it under, the TAP name the snapshot refers
// to, and its guest PCI address in the snapshot when known.
type RestoreNIC struct {
	vmmadapter.NIC
	DeviceID    string
	SnapshotTap string
	BDF         string
	// Bus is the QEMU bus (a pcie-root-port id) the device sat on, for a
	// NIC behind a root port; "" when it is on the root bus or unknown.
	Bus string
}

// RestoreOptions are the paths of the VM snapshot a VMM restores from.
type RestoreOptions struct {
	// Firecracker: the microVM state and guest memory files.
	SnapshotPath, MemPath string
	// Cloud Hypervisor: vm.restore's source_url (file:///dir).
	SourceURL string
	// QEMU: the -incoming URI ("defer", "exec:cat FILE", ...) and the
	// root ports the VM had (vmm-args --root-ports).
	Incoming  string
	RootPorts int
	// Resume: the VMM resumes the VM once restored (FC resume_vm, CH
	// resume).
	Resume bool
}

// Restore is what a VMM needs to restore a snapshot with vmnic's TAPs: an
// API request (Method, Path, Body: Firecracker, Cloud Hypervisor) or
// command-line arguments (QEMU). Missing says what vmnic cannot provide
// yet for this restore (empty when nothing is missing).
type Restore struct {
	Method  string          `json:"method,omitempty"`
	Path    string          `json:"path,omitempty"`
	Body    json.RawMessage `json:"body,omitempty"`
	Args    []string        `json:"args,omitempty"`
	Missing string          `json:"missing,omitempty"`
}

// RestoreArgs renders the restore of nics for a VMM of kind.
//
// Firecracker: PUT /snapshot/load with network_overrides (iface_id ->
// host_dev_name, FC >= 1.12, firecracker #4731) for each NIC whose TAP name
// differs from the snapshot's; none when all names are the same (older FCs
// reject the field).
//
// Cloud Hypervisor: PUT /api/v1/vm.restore {source_url}. CH reopens each
// TAP by the name in the snapshot's NetConfig (vmm/src/vm_config.rs
// NetConfig.tap); a TAP under another name can only be handed over as
// net_fds [{id, num_fds}] with the fds over SCM_RIGHTS
// (vmm/src/api/http/http_endpoint.rs, vm.restore), which needs the TAP fd
// handoff vmnic does not have yet: Missing says so.
//
// QEMU: -netdev/-device pairs with the device and netdev ids of the
// snapshot, each device at its PCI address (addr= on the root bus, bus=
// for one behind a root port), the root ports, and -incoming.
func RestoreArgs(kind vmmadapter.Kind, nics []RestoreNIC, o RestoreOptions) (Restore, error) {
	if len(nics) == 0 {
		return Restore{}, fmt.Errorf("restore arguments: no NICs")
	}
	switch kind {
	case vmmadapter.Firecracker:
		return fcRestore(nics, o)
	case vmmadapter.CloudHypervisor:
		return chRestore(nics, o)
	case vmmadapter.QEMU:
		return qemuRestore(nics, o)
	}
	_, err := lookup(kind)
	return Restore{}, fmt.Errorf("restore arguments: %w", err)
}

func fcRestore(nics []RestoreNIC, o RestoreOptions) (Restore, error) {
	if o.SnapshotPath == "" || o.MemPath == "" {
		return Restore{}, fmt.Errorf("firecracker restore: the snapshot and memory file paths are needed")
	}
	type override struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
	}
	body := struct {
		SnapshotPath string `json:"snapshot_path"`
		MemBackend   struct {
			BackendType string `json:"backend_type"`
			BackendPath string `json:"backend_path"`
		} `json:"mem_backend"`
		ResumeVM         bool       `json:"resume_vm,omitempty"`
		NetworkOverrides []override `json:"network_overrides,omitempty"`
	}{SnapshotPath: o.SnapshotPath, ResumeVM: o.Resume}
	body.MemBackend.BackendType, body.MemBackend.BackendPath = "File", o.MemPath
	for _, n := range nics {
		if n.SnapshotTap != "" && n.SnapshotTap != n.Tap {
			body.NetworkOverrides = append(body.NetworkOverrides, override{IfaceID: n.DeviceID, HostDevName: n.Tap})
		}
	}
	data, err := json.Marshal(body)
	if err != nil {
		return Restore{}, err
	}
	return Restore{Method: "PUT", Path: "/snapshot/load", Body: data}, nil
}

func chRestore(nics []RestoreNIC, o RestoreOptions) (Restore, error) {
	if o.SourceURL == "" {
		return Restore{}, fmt.Errorf("cloud-hypervisor restore: the snapshot's source URL (file:///dir) is needed")
	}
	body := struct {
		SourceURL string `json:"source_url"`
		Resume    bool   `json:"resume,omitempty"`
	}{o.SourceURL, o.Resume}
	data, err := json.Marshal(body)
	if err != nil {
		return Restore{}, err
	}
	r := Restore{Method: "PUT", Path: "/api/v1/vm.restore", Body: data}
	var renamed []string
	for _, n := range nics {
		if n.SnapshotTap != "" && n.SnapshotTap != n.Tap {
			renamed = append(renamed, fmt.Sprintf("%s (snapshot TAP %s, now %s)", n.DeviceID, n.SnapshotTap, n.Tap))
		}
	}
	if len(renamed) > 0 {
		r.Missing = "Cloud Hypervisor reopens TAPs by the snapshot's names, and these NICs' TAPs have other names: " + strings.Join(renamed, ", ") +
			"; they must be handed over as vm.restore net_fds with the TAP fds over SCM_RIGHTS, which needs vmnic's TAP fd handoff (not available yet). Free the snapshot's TAP names in the netns and restore again, or use that handoff once it is there."
	}
	return r, nil
}

func qemuRestore(nics []RestoreNIC, o RestoreOptions) (Restore, error) {
	if o.RootPorts < 0 || o.RootPorts > qemu.MaxRootPorts {
		return Restore{}, fmt.Errorf("root ports %d: must be 0 to %d", o.RootPorts, qemu.MaxRootPorts)
	}
	incoming := o.Incoming
	if incoming == "" {
		incoming = "defer"
	}
	var args []string
	for _, n := range nics {
		nic := n.NIC
		nic.ID = n.DeviceID // the snapshot's device id (netdev id follows)
		pair := qemu.Args([]vmmadapter.NIC{nic})
		if len(pair) != 4 {
			return Restore{}, fmt.Errorf("qemu restore: NIC %s: unexpected arguments %q", n.DeviceID, pair)
		}
		dev := pair[3]
		switch bus, slot, fn, ok := parseBDF(n.BDF); {
		case n.Bus != "":
			dev += ",bus=" + n.Bus
		case ok && bus == 0:
			dev += fmt.Sprintf(",addr=0x%x.%x", slot, fn)
		}
		args = append(args, pair[0], pair[1], pair[2], dev)
	}
	args = append(args, qemu.RootPortArgs(o.RootPorts)...)
	args = append(args, "-incoming", incoming)
	return Restore{Args: args}, nil
}

// parseBDF reads "0000:00:04.0".
func parseBDF(s string) (bus, slot, fn int, ok bool) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return 0, 0, 0, false
	}
	df := strings.Split(parts[2], ".")
	if len(df) != 2 {
		return 0, 0, 0, false
	}
	b, e1 := strconv.ParseUint(parts[1], 16, 8)
	d, e2 := strconv.ParseUint(df[0], 16, 8)
	f, e3 := strconv.ParseUint(df[1], 16, 8)
	if e1 != nil || e2 != nil || e3 != nil {
		return 0, 0, 0, false
	}
	return int(b), int(d), int(f), true
}
