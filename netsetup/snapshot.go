package netsetup

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// ManifestKind marks a snapshot manifest (the "kind" field), so that a
// record or another JSON file is never taken for one.
const ManifestKind = "vmnic-snapshot"

// ManifestSchema is the manifest shape this package writes. ReadManifest
// refuses a newer one with a clear error and reads every older one.
const ManifestSchema = 1

// Manifest is what a restore of a VM snapshot needs of its network: per
// NIC, how to ask CNI for the same interface again (network, ifname, MAC,
// IPs) and what the VMM's snapshot refers to (device id, TAP name). A VM
// manager writes it next to its VM snapshot (vmnicctl snapshot, or
// Snapshot here) and hands it to vmnicctl restore.
type Manifest struct {
	Kind   string `json:"kind"`
	Schema int    `json:"schema"`
	// SandboxID is the sandbox the snapshot was taken of.
	SandboxID  string       `json:"sandbox_id"`
	NetBackend Backend      `json:"net_backend,omitempty"`
	VMM        *ManifestVMM `json:"vmm,omitempty"`
	NICs       []SnapNIC    `json:"nics"`
}

// ManifestVMM is the VMM the snapshot was taken from.
type ManifestVMM struct {
	Kind    string `json:"kind"`
	Version string `json:"version,omitempty"`
}

// SnapNIC is one NIC of a snapshot.
type SnapNIC struct {
	// ID is vmnic's NIC id (from the ifname: the same in every sandbox).
	ID string `json:"id"`
	// Network and IfName are the CNI network and CNI_IFNAME: a restore
	// matches each ADD to a NIC by both.
	Network string `json:"network,omitempty"`
	IfName  string `json:"ifname"`
	// MAC is the guest's MAC, baked into the VM snapshot: the restored
	// veth must carry it (CNI "mac" capability / MAC CNI_ARGS).
	MAC      string   `json:"mac"`
	IPs      []string `json:"ips,omitempty"`
	Gateways []string `json:"gateways,omitempty"`
	Routes   []Route  `json:"routes,omitempty"`
	DNS      *DNS     `json:"dns,omitempty"`
	MTU      int      `json:"mtu,omitempty"`
	// NumQueues counts virtqueues (2 per queue pair), QueueSize their size.
	NumQueues int `json:"num_queues,omitempty"`
	QueueSize int `json:"queue_size,omitempty"`
	// VMMDeviceID is the device's id inside the VMM (CH net id, FC
	// iface_id, QEMU device id); Tap the TAP's name the snapshot refers
	// to; BDF the guest PCI address when known.
	VMMDeviceID string `json:"vmm_device_id"`
	Tap         string `json:"tap"`
	BDF         string `json:"bdf,omitempty"`
}

// Snapshot is the manifest of rec. Every NIC must be set up on the host
// (host-ready) and not being removed; a sandbox without NICs, or being torn
// down, has nothing a restore could use.
func Snapshot(rec *NetSetup) (*Manifest, error) {
	switch rec.Phase {
	case PhaseInvalid, PhaseTearingDown:
		return nil, fmt.Errorf("snapshot of sandbox %s: it is %s", rec.SandboxID, rec.Phase)
	}
	if len(rec.NetworkConfigs) == 0 {
		return nil, fmt.Errorf("snapshot of sandbox %s: it has no NICs", rec.SandboxID)
	}
	m := &Manifest{Kind: ManifestKind, Schema: ManifestSchema, SandboxID: rec.SandboxID, NetBackend: rec.ResolvedNetBackend()}
	if rec.VMM != nil {
		m.VMM = &ManifestVMM{Kind: rec.VMM.Kind, Version: rec.VMM.Version}
	}
	for _, n := range rec.NetworkConfigs {
		if !n.HostReady || n.State == NICDetaching {
			return nil, fmt.Errorf("snapshot of sandbox %s: NIC %s is %s (host ready: %v): only NICs set up and not being removed can be restored", rec.SandboxID, n.IfName, n.State, n.HostReady)
		}
		dev := n.VMMDeviceID
		if dev == "" {
			dev = n.ID // what vmm-args gives a NIC the VMM got at launch
		}
		gws := n.Gateways
		if len(gws) == 0 && n.Gateway != "" {
			gws = []string{n.Gateway}
		}
		m.NICs = append(m.NICs, SnapNIC{
			ID: n.ID, Network: n.Network, IfName: n.IfName, MAC: n.MAC,
			IPs: n.IPs, Gateways: gws, Routes: n.Routes, DNS: n.DNS, MTU: n.MTU,
			NumQueues: n.NumQueues, QueueSize: n.QueueSize,
			VMMDeviceID: dev, Tap: n.Tap, BDF: n.BDF,
		})
	}
	return m, m.Validate()
}

// Snapshot is the manifest of the recorded sandbox id.
func (s *Store) Snapshot(id string) (*Manifest, error) {
	rec, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	return Snapshot(rec)
}

// Validate checks a manifest's invariants: its kind and schema, one NIC
// per ifname, and for each a unicast MAC, a TAP name and a device id.
func (m *Manifest) Validate() error {
	if m.Kind != ManifestKind {
		return fmt.Errorf("not a vmnic snapshot manifest (kind %q, want %q)", m.Kind, ManifestKind)
	}
	switch {
	case m.Schema < 1:
		return fmt.Errorf("snapshot manifest: schema %d is not valid", m.Schema)
	case m.Schema > ManifestSchema:
		return fmt.Errorf("snapshot manifest has schema %d, newer than this vmnic reads (%d): restore with the vmnic that wrote it or a newer one", m.Schema, ManifestSchema)
	}
	if len(m.NICs) == 0 {
		return fmt.Errorf("snapshot manifest of %s has no NICs", m.SandboxID)
	}
	seen := map[string]bool{}
	for _, n := range m.NICs {
		switch {
		case n.IfName == "":
			return fmt.Errorf("snapshot manifest: a NIC has no ifname")
		case seen[n.IfName]:
			return fmt.Errorf("snapshot manifest: NIC %s listed twice", n.IfName)
		case n.Tap == "" || n.VMMDeviceID == "":
			return fmt.Errorf("snapshot manifest: NIC %s needs its TAP name and VMM device id", n.IfName)
		}
		seen[n.IfName] = true
		hw, err := net.ParseMAC(n.MAC)
		if err != nil || len(hw) != 6 || hw[0]&1 != 0 {
			return fmt.Errorf("snapshot manifest: NIC %s: MAC %q is not a unicast Ethernet address", n.IfName, n.MAC)
		}
	}
	return nil
}

// NIC returns the manifest's NIC of ifname.
func (m *Manifest) NIC(ifname string) (*SnapNIC, bool) {
	for i := range m.NICs {
		if m.NICs[i].IfName == ifname {
			return &m.NICs[i], true
		}
	}
	return nil, false
}

// WriteManifest writes m to path atomically (a temp file in the same
// directory, renamed), mode 0600.
func WriteManifest(path string, m *Manifest) error {
	if err := m.Validate(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".vmnic-snapshot-*")
	if err != nil {
		return fmt.Errorf("write snapshot manifest %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("write snapshot manifest %s: %w", path, err)
	}
	return nil
}

// ReadManifest reads and validates the manifest at path. Unknown fields
// are refused: a manifest this vmnic does not fully understand is not
// restored from.
func ReadManifest(path string) (*Manifest, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read snapshot manifest: %w", err)
	}
	return ParseManifest(data)
}

// ParseManifest decodes and validates a manifest.
func ParseManifest(data []byte) (*Manifest, error) {
	// The schema first: a newer manifest gets the schema error, not an
	// unknown-field one.
	var head struct {
		Kind   string `json:"kind"`
		Schema int    `json:"schema"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("snapshot manifest: %w", err)
	}
	if head.Kind != ManifestKind || head.Schema > ManifestSchema {
		return nil, (&Manifest{Kind: head.Kind, Schema: head.Schema}).Validate()
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("snapshot manifest: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}
