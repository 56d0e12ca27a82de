package vmmsim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/openapi"
)

// FCState is Firecracker's instance state (InstanceInfo.state).
type FCState string

const (
	FCNotStarted FCState = "Not started"
	FCRunning    FCState = "Running"
	FCPaused     FCState = "Paused"
)

// FCConfig configures a Firecracker simulator.
type FCConfig struct {
	// Version is the vmm_version, e.g. "1.12.1", "1.15.0", "1.16.1".
	// Default "1.16.1".
	Version string
	// PCI: started with --enable-pci (meaningful from 1.13; hot-plug from 1.16).
	PCI bool
	// State at start; default FCNotStarted.
	State FCState
	// NoSpec disables spec validation.
	NoSpec bool
	// Snapshot is the network of the snapshot PUT /snapshot/load loads
	// (what the state file would hold; fc_snapshot.go).
	Snapshot []FCNet
}

// FCNet is one network interface as the simulated Firecracker holds it.
type FCNet struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
	MTU         int    `json:"mtu,omitempty"`
	Hot         bool   `json:"-"` // hot-plugged after boot
	// GuestBound: the guest's PCI bus has the device (a driver may use it).
	// Cold interfaces are bound at InstanceStart; a hot-added one only
	// after GuestRescan, because Firecracker sends no notification
	// (docs/device-hotplug.md "No automatic guest notification").
	GuestBound bool `json:"-"`
}

// FC is a simulated Firecracker API server.
type FC struct {
	*server
	cfg          FCConfig
	major, minor int
	state        FCState
	pre          bool // a pre-release ("1.16.0-dev")
	ifaces       []FCNet
	held         map[string]bool
	surprise     []string
}

// FirecrackerIDPattern is what Firecracker accepts as a resource id
// (checked_id: alphanumerics and underscores, at most 64 bytes).
const FirecrackerIDPattern = `^[A-Za-z0-9_]{1,64}$`

var fcIDRe = regexp.MustCompile(FirecrackerIDPattern)

// NewFC starts a simulator on a socket in a temporary directory; it stops
// when the test ends.
func NewFC(t testing.TB, cfg FCConfig) *FC {
	t.Helper()
	s, err := StartFC(socketFor(t, "fc.sock"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// StartFC starts a simulator on socket. Close it when done.
func StartFC(socket string, cfg FCConfig) (*FC, error) {
	if cfg.Version == "" {
		cfg.Version = "1.16.1"
	}
	if cfg.State == "" {
		cfg.State = FCNotStarted
	}
	major, minor, ok := parseVer(cfg.Version)
	if !ok {
		return nil, fmt.Errorf("firecracker simulator: bad version %q", cfg.Version)
	}
	spec, specErr, err := specFor(openapi.FirecrackerSpec, cfg.NoSpec, func(s *openapi.Spec) error {
		// The swagger leaves iface_id a plain string; the server checks it.
		return s.SetParamRule("iface_id", FirecrackerIDPattern)
	})
	if err != nil {
		return nil, err
	}
	var gaps []gap
	if major > 1 || minor >= 16 {
		gaps = append(gaps, gap{http.MethodDelete, "/network-interfaces/{iface_id}",
			"DELETE exists since v1.16.0 but the swagger lacks it (reference §0)"})
	}
	f := &FC{cfg: cfg, major: major, minor: minor, pre: strings.Contains(cfg.Version, "-"), state: cfg.State, held: map[string]bool{}}
	srv, err := newServer("firecracker", socket, spec, specErr, gaps)
	if err != nil {
		return nil, err
	}
	srv.handle = f.handle
	f.server = srv
	return f, nil
}

func parseVer(s string) (major, minor int, ok bool) {
	s = strings.TrimPrefix(s, "v")
	if i := strings.IndexAny(s, "-+"); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return 0, 0, false
	}
	a, err1 := strconv.Atoi(parts[0])
	b, err2 := strconv.Atoi(parts[1])
	return a, b, err1 == nil && err2 == nil
}

func (f *FC) atLeast(major, minor int) bool {
	return f.major > major || (f.major == major && f.minor >= minor)
}

// --- test accessors ---

// State returns the instance state.
func (f *FC) State() FCState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

// Interfaces returns the configured network interfaces.
func (f *FC) Interfaces() []FCNet {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]FCNet(nil), f.ifaces...)
}

// Start boots the microVM (as InstanceStart would).
func (f *FC) Start() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.start()
}

func (f *FC) start() {
	f.state = FCRunning
	for i := range f.ifaces {
		f.ifaces[i].GuestBound = true // enumerated at boot
	}
}

// GuestRescan is the guest's "echo 1 > /sys/bus/pci/rescan": it finds the
// hot-added devices.
func (f *FC) GuestRescan() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.ifaces {
		f.ifaces[i].GuestBound = true
	}
}

// GuestRemove is the guest's "echo 1 > /sys/bus/pci/devices/<BDF>/remove"
// for iface id: the guest lets go of the device.
func (f *FC) GuestRemove(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i := f.index(id); i >= 0 {
		f.ifaces[i].GuestBound = false
	}
}

// SurpriseRemovals lists the iface_ids that a DELETE tore down while the
// guest still had them on its PCI bus (Firecracker gives it no notice).
func (f *FC) SurpriseRemovals() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.surprise...)
}

// HoldTap makes a TAP busy as if another process had it open.
func (f *FC) HoldTap(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held[name] = true
}

// --- VMM logic (runs under mu) ---

func fault(w *reply, msg string) {
	b, _ := json.Marshal(map[string]string{"fault_message": msg})
	w.json(http.StatusBadRequest, b)
}

func (f *FC) invalidPath(w *reply, r *http.Request) {
	fault(w, fmt.Sprintf("Invalid request method and/or path: %s %s.", r.Method, r.URL.Path))
}

func (f *FC) handle(w *reply, r *http.Request, body []byte) {
	path := r.URL.Path
	switch {
	case path == "/" && r.Method == http.MethodGet:
		b, _ := json.Marshal(map[string]string{"app_name": "Firecracker", "id": "anonymous-instance", "state": string(f.state), "vmm_version": f.cfg.Version})
		w.json(http.StatusOK, b)
	case path == "/version" && r.Method == http.MethodGet:
		b, _ := json.Marshal(map[string]string{"firecracker_version": f.cfg.Version})
		w.json(http.StatusOK, b)
	case path == "/machine-config" && r.Method == http.MethodGet:
		w.json(http.StatusOK, []byte(`{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}`))
	case path == "/vm/config" && r.Method == http.MethodGet:
		ifaces := f.ifaces
		if ifaces == nil {
			ifaces = []FCNet{}
		}
		b, _ := json.Marshal(map[string]any{
			"machine-config":     map[string]any{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": false, "huge_pages": "None"},
			"drives":             []any{},
			"network-interfaces": ifaces,
		})
		w.json(http.StatusOK, b)
	case path == "/actions" && r.Method == http.MethodPut:
		var a struct {
			ActionType string `json:"action_type"`
		}
		if err := json.Unmarshal(body, &a); err != nil {
			fault(w, "An error occurred when deserializing the json body of a request: "+err.Error())
			return
		}
		if a.ActionType == "InstanceStart" {
			if f.state != FCNotStarted {
				fault(w, "The requested operation is not supported after starting the microVM.")
				return
			}
			f.start()
		}
		w.empty(http.StatusNoContent)
	case path == "/snapshot/load" && r.Method == http.MethodPut:
		f.loadSnapshot(w, body)
	case strings.HasPrefix(path, "/network-interfaces/"):
		id := strings.TrimPrefix(path, "/network-interfaces/")
		switch r.Method {
		case http.MethodPut:
			f.put(w, id, body)
		case http.MethodDelete:
			if !f.atLeast(1, 16) {
				f.invalidPath(w, r)
				return
			}
			f.delete(w, id)
		case http.MethodPatch:
			f.patch(w, id, body)
		default:
			f.invalidPath(w, r)
		}
	default:
		f.invalidPath(w, r)
	}
}

func checkedID(id string) string {
	if !fcIDRe.MatchString(id) {
		return "API Resource IDs can only contain alphanumeric characters and underscores."
	}
	return ""
}

// strictDecode parses a body like serde with deny_unknown_fields.
func strictDecode(body []byte, known, required []string, out any) string {
	const pre = "An error occurred when deserializing the json body of a request: "
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return pre + "invalid JSON: " + err.Error()
	}
	quoted := make([]string, len(known))
	for i, k := range known {
		quoted[i] = "`" + k + "`"
	}
	for k := range m {
		ok := false
		for _, kk := range known {
			ok = ok || k == kk
		}
		if !ok {
			return fmt.Sprintf("%sunknown field `%s`, expected one of %s.", pre, k, strings.Join(quoted, ", "))
		}
	}
	for _, k := range required {
		if _, ok := m[k]; !ok {
			return fmt.Sprintf("%smissing field `%s`.", pre, k)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(out); err != nil {
		return pre + "invalid type: " + err.Error()
	}
	return ""
}

func (f *FC) put(w *reply, id string, body []byte) {
	if msg := checkedID(id); msg != "" {
		fault(w, msg)
		return
	}
	known := []string{"iface_id", "host_dev_name", "guest_mac", "rx_rate_limiter", "tx_rate_limiter"}
	// mtu: commit e865b9c5f (2026-05-17), first released in v1.16.0; the
	// "1.16.0-dev" builds before it reject the field, so a 1.16.0
	// pre-release is simulated without it.
	if f.atLeast(1, 16) && !(f.pre && strings.HasPrefix(strings.TrimPrefix(f.cfg.Version, "v"), "1.16.0-")) {
		known = append(known, "mtu")
	}
	var n struct {
		IfaceID     string          `json:"iface_id"`
		HostDevName string          `json:"host_dev_name"`
		GuestMAC    string          `json:"guest_mac"`
		MTU         *int            `json:"mtu"`
		RX          json.RawMessage `json:"rx_rate_limiter"`
		TX          json.RawMessage `json:"tx_rate_limiter"`
	}
	if msg := strictDecode(body, known, []string{"iface_id", "host_dev_name"}, &n); msg != "" {
		fault(w, msg)
		return
	}
	if n.IfaceID != id {
		fault(w, fmt.Sprintf("The id from the path [%s] does not match the id from the body [%s]!", id, n.IfaceID))
		return
	}
	if n.MTU != nil && (*n.MTU < 68 || *n.MTU > 65535) {
		fault(w, fmt.Sprintf("Network config error: Invalid MTU %d: must be between 68 and 65535", *n.MTU))
		return
	}
	hot := f.state != FCNotStarted
	if hot {
		switch {
		case !f.atLeast(1, 16):
			fault(w, "The requested operation is not supported after starting the microVM.")
			return
		case !f.cfg.PCI:
			fault(w, "PCI is not enabled")
			return
		case f.index(id) >= 0:
			fault(w, "Device ID in use")
			return
		}
	}
	// src/vmm/src/vmm_config/net.rs NetBuilder::build: the MAC conflict
	// check comes first (a failure leaves everything as it was), then an
	// existing interface with this id is dropped (a pre-boot "update"), and
	// only then is the new device created and its TAP opened
	// (Net::new → Tap::open_named). A TAP failure therefore leaves no
	// interface with this id at all.
	for _, e := range f.ifaces {
		if e.IfaceID != id && n.GuestMAC != "" && e.GuestMAC == n.GuestMAC {
			fault(w, "Network config error: The MAC address is already in use: "+n.GuestMAC)
			return
		}
	}
	if i := f.index(id); i >= 0 {
		f.ifaces = append(f.ifaces[:i], f.ifaces[i+1:]...)
	}
	busy := f.held[n.HostDevName]
	for _, e := range f.ifaces {
		busy = busy || e.HostDevName == n.HostDevName // single-queue TAP, one opener
	}
	if busy {
		f.tapBusy(w, n.HostDevName)
		return
	}
	entry := FCNet{IfaceID: id, HostDevName: n.HostDevName, GuestMAC: n.GuestMAC, Hot: hot}
	if n.MTU != nil {
		entry.MTU = *n.MTU
	}
	f.ifaces = append(f.ifaces, entry)
	w.empty(http.StatusNoContent)
}

func (f *FC) tapBusy(w *reply, tap string) {
	fault(w, fmt.Sprintf("Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: Resource busy (os error 16). Invalid TUN/TAP Backend provided by %s. Check our documentation on setting up the network devices.", tap))
}

func (f *FC) index(id string) int {
	for i, e := range f.ifaces {
		if e.IfaceID == id {
			return i
		}
	}
	return -1
}

func (f *FC) delete(w *reply, id string) {
	if msg := checkedID(id); msg != "" {
		fault(w, msg)
		return
	}
	switch {
	case f.state == FCNotStarted:
		fault(w, "The requested operation is not supported before starting the microVM.")
	case !f.cfg.PCI:
		fault(w, "PCI is not enabled")
	case f.index(id) < 0:
		fault(w, "Device not found")
	default:
		// detach_pci_virtio_device: the device goes at once, whatever the
		// guest is doing with it.
		i := f.index(id)
		if f.ifaces[i].GuestBound {
			f.surprise = append(f.surprise, id)
		}
		f.ifaces = append(f.ifaces[:i], f.ifaces[i+1:]...)
		w.empty(http.StatusNoContent)
	}
}

func (f *FC) patch(w *reply, id string, body []byte) {
	if msg := checkedID(id); msg != "" {
		fault(w, msg)
		return
	}
	var n struct {
		IfaceID string          `json:"iface_id"`
		RX      json.RawMessage `json:"rx_rate_limiter"`
		TX      json.RawMessage `json:"tx_rate_limiter"`
	}
	if msg := strictDecode(body, []string{"iface_id", "rx_rate_limiter", "tx_rate_limiter"}, []string{"iface_id"}, &n); msg != "" {
		fault(w, msg)
		return
	}
	switch {
	case f.state == FCNotStarted:
		fault(w, "The requested operation is not supported before starting the microVM.")
	case f.index(id) < 0:
		fault(w, "Device not found")
	default:
		w.empty(http.StatusNoContent)
	}
}
