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
	// SnapshotFds is, for Cloud Hypervisor, how many TAP fds the snapshot's
	// VM config has the device on (0: opened by name), when SnapshotKnown
	// (the snapshot's config.json could be read).
	SnapshotFds   int
	SnapshotKnown bool
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
// command-line arguments (QEMU). Missing says why this restore cannot be
// done with these TAPs (empty when it can); Note what the caller must know
// to do it (e.g. that fds must ride with the request).
type Restore struct {
	Method  string          `json:"method,omitempty"`
	Path    string          `json:"path,omitempty"`
	Body    json.RawMessage `json:"body,omitempty"`
	Args    []string        `json:"args,omitempty"`
	Missing string          `json:"missing,omitempty"`
	Note    string          `json:"note,omitempty"`
}

// RestoreArgs renders the restore of nics for a VMM of kind.
//
// Firecracker: PUT /snapshot/load with network_overrides (iface_id ->
// host_dev_name, FC >= 1.12, firecracker #4731) for each NIC whose TAP name
// differs from the snapshot's; none when all names are the same (older FCs
// reject the field).
//
// Cloud Hypervisor: PUT /api/v1/vm.restore {source_url, net_fds}. CH
// reopens a NIC it had by TAP name by the name in the snapshot's NetConfig
// (vmm/src/vm_config.rs NetConfig.tap), and needs new fds for a NIC it had
// on fds: net_fds [{id, num_fds}] with the fds over SCM_RIGHTS in that
// order (vmm/src/api/http/http_endpoint.rs, VmRestore; vmm/src/lib.rs
// vm_restore updates only the fd-backed NICs). The body lists net_fds for
// the NICs the snapshot has on fds (SnapshotFds), and Note says the fds
// must ride with it (vmnicctl restore-vmm sends it with them); a NIC CH
// had by name whose TAP has another name now cannot be restored: Missing
// says so.
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
	type restoredNet struct {
		ID     string `json:"id"`
		NumFds int    `json:"num_fds"`
	}
	body := struct {
		SourceURL string        `json:"source_url"`
		Resume    bool          `json:"resume,omitempty"`
		NetFds    []restoredNet `json:"net_fds,omitempty"`
	}{SourceURL: o.SourceURL, Resume: o.Resume}
	var renamed, byName, unknown []string
	for _, n := range nics {
		switch {
		case n.SnapshotKnown && n.SnapshotFds > 0:
			body.NetFds = append(body.NetFds, restoredNet{ID: n.DeviceID, NumFds: n.SnapshotFds})
		case n.SnapshotTap != "" && n.SnapshotTap != n.Tap:
			d := fmt.Sprintf("%s (snapshot TAP %s, now %s)", n.DeviceID, n.SnapshotTap, n.Tap)
			if n.SnapshotKnown {
				byName = append(byName, d)
			} else {
				renamed = append(renamed, d)
			}
		case !n.SnapshotKnown:
			unknown = append(unknown, n.DeviceID)
		}
	}
	data, err := json.Marshal(body)
	if err != nil {
		return Restore{}, err
	}
	r := Restore{Method: "PUT", Path: "/api/v1/vm.restore", Body: data}
	var notes []string
	if len(body.NetFds) > 0 {
		ids := make([]string, len(body.NetFds))
		for i, n := range body.NetFds {
			ids[i] = n.ID
		}
		notes = append(notes, "the TAP fds of "+strings.Join(ids, ", ")+" must ride with this request as SCM_RIGHTS, in net_fds order: vmnicctl restore-vmm <sandbox-id> --kind cloud-hypervisor --socket PATH --source-url "+o.SourceURL+" opens them and sends it")
	}
	if len(renamed)+len(unknown) > 0 {
		notes = append(notes, "the snapshot's VM config (config.json) was not read, so whether Cloud Hypervisor had "+strings.Join(append(renamed, unknown...), ", ")+
			" on TAP fds is not known: a NIC it had on fds needs them in net_fds, one it had by name keeps the snapshot's TAP name; vmnicctl restore-vmm reads the snapshot and does what it needs")
	}
	r.Note = strings.Join(notes, "; ")
	if len(byName) > 0 {
		r.Missing = "Cloud Hypervisor had these NICs by TAP name and reopens them by the snapshot's names (it takes fds at a restore only for NICs it had on fds), and their TAPs have other names now: " + strings.Join(byName, ", ") +
			". Free the snapshot's TAP names in the netns and ADD the NICs again."
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
