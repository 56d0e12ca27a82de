package netsetup

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Decode parses a record of any known shape:
//   - schema 2 (this version);
//   - schema 1: backend, netns path and bridge kept on each NIC, the guest IP
//     config as a {ip, gateway, prefix} object under "network";
//   - schema 0 (no "schema" key): the flat cocoon-style NetSetup, with the
//     same per-NIC legacy fields, optionally embedded in a VM record
//     ("id", "hypervisor", "socket_path", "state").
//
// fallbackID names the sandbox when the record itself does not (older shapes
// were keyed by file name).
func Decode(data []byte, fallbackID string) (*NetSetup, error) {
	var head struct {
		Schema *int `json:"schema"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	schema := 0
	if head.Schema != nil {
		schema = *head.Schema
	}
	switch {
	case schema == SchemaVersion:
		var s NetSetup
		if err := json.Unmarshal(data, &s); err != nil {
			return nil, fmt.Errorf("decode schema %d record: %w", schema, err)
		}
		if s.SandboxID == "" {
			s.SandboxID = fallbackID
		}
		if s.NetworkConfigs == nil {
			s.NetworkConfigs = []NIC{}
		}
		SortNICs(s.NetworkConfigs)
		return &s, nil
	case schema == 0 || schema == 1:
		return decodeLegacy(data, schema, fallbackID)
	case schema > SchemaVersion:
		return nil, fmt.Errorf("record schema %d is newer than this vmnic understands (%d): upgrade vmnic", schema, SchemaVersion)
	default:
		return nil, fmt.Errorf("record schema %d is not valid", schema)
	}
}

type legacyIPConfig struct {
	IP      string `json:"ip"`
	Gateway string `json:"gateway"`
	Prefix  int    `json:"prefix"`
}

type legacyNIC struct {
	ID        string          `json:"id"`
	IfName    string          `json:"ifname"`
	Tap       string          `json:"tap"`
	MAC       string          `json:"mac"`
	MTU       int             `json:"mtu"`
	NumQueues int             `json:"num_queues"`
	QueueSize int             `json:"queue_size"`
	Backend   Backend         `json:"backend"`
	NetnsPath string          `json:"netns_path"`
	Bridge    string          `json:"bridge"`
	BridgeDev string          `json:"bridge_dev"`
	Network   json.RawMessage `json:"network"`
	State     NICState        `json:"state"`
}

type legacyRecord struct {
	SandboxID    string      `json:"sandbox_id"`
	VMID         string      `json:"id"`
	PodUID       string      `json:"pod_uid"`
	PodName      string      `json:"pod_name"`
	PodNamespace string      `json:"pod_namespace"`
	Phase        Phase       `json:"phase"`
	NetBackend   Backend     `json:"net_backend"`
	NetnsPath    string      `json:"netns_path"`
	NetnsOwned   bool        `json:"netns_owned"`
	NetBridgeDev string      `json:"net_bridge_dev"`
	VMM          *VMM        `json:"vmm"`
	Hypervisor   string      `json:"hypervisor"`
	SocketPath   string      `json:"socket_path"`
	VMState      string      `json:"state"`
	NICs         []legacyNIC `json:"network_configs"`
}

func decodeLegacy(data []byte, schema int, fallbackID string) (*NetSetup, error) {
	var old legacyRecord
	if err := json.Unmarshal(data, &old); err != nil {
		return nil, fmt.Errorf("decode schema %d record: %w", schema, err)
	}
	s := &NetSetup{
		Schema:       SchemaVersion,
		SandboxID:    firstNonEmpty(old.SandboxID, old.VMID, fallbackID),
		PodUID:       old.PodUID,
		PodName:      old.PodName,
		PodNamespace: old.PodNamespace,
		Phase:        old.Phase,
		NetBackend:   old.NetBackend,
		NetnsPath:    old.NetnsPath,
		NetnsOwned:   old.NetnsOwned,
		NetBridgeDev: old.NetBridgeDev,
		VMM:          old.VMM,
		legacy:       schema,
	}
	if s.VMM == nil && old.SocketPath != "" {
		s.VMM = &VMM{Kind: legacyKind(old.Hypervisor), APISocket: old.SocketPath, Booted: old.VMState == "running"}
	}
	s.NetworkConfigs = make([]NIC, 0, len(old.NICs))
	for i, o := range old.NICs {
		n := NIC{
			ID:              o.ID,
			IfName:          firstNonEmpty(o.IfName, "eth"+strconv.Itoa(i)),
			Tap:             o.Tap,
			MAC:             o.MAC,
			MTU:             o.MTU,
			NumQueues:       o.NumQueues,
			QueueSize:       o.QueueSize,
			State:           o.State,
			HostReady:       o.Tap != "",
			LegacyBackend:   o.Backend,
			LegacyNetnsPath: o.NetnsPath,
			LegacyBridge:    firstNonEmpty(o.Bridge, o.BridgeDev),
		}
		if n.ID == "" {
			n.ID = n.IfName
		}
		if n.State == "" {
			n.State = NICPending
			if s.VMM != nil && s.VMM.Booted {
				n.State = NICAttached
			}
		}
		if err := decodeLegacyNetwork(o.Network, &n); err != nil {
			return nil, fmt.Errorf("decode schema %d record: NIC %d: %w", schema, i, err)
		}
		s.NetworkConfigs = append(s.NetworkConfigs, n)
	}
	// Schema-0/1 records: an empty backend means cni when there are NICs.
	if s.Phase == "" {
		s.Phase = PhasePrepared
	}
	s.normalize()
	return s, nil
}

// decodeLegacyNetwork reads the old "network" key: the guest IP config object
// (null meaning DHCP), or, in records that already named the CNI network
// there, a string.
func decodeLegacyNetwork(raw json.RawMessage, n *NIC) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	if raw[0] == '"' {
		return json.Unmarshal(raw, &n.Network)
	}
	var ipc legacyIPConfig
	if err := json.Unmarshal(raw, &ipc); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if ipc.IP != "" {
		addr := ipc.IP
		if ipc.Prefix > 0 && !strings.Contains(addr, "/") {
			addr += "/" + strconv.Itoa(ipc.Prefix)
		}
		n.IPs = []string{addr}
	}
	n.Gateway = ipc.Gateway
	return nil
}

func legacyKind(h string) string {
	switch strings.ToLower(strings.ReplaceAll(h, "-", "")) {
	case "cloudhypervisor", "ch":
		return "cloud-hypervisor"
	case "firecracker", "fc":
		return "firecracker"
	case "qemu":
		return "qemu"
	}
	return h
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}
