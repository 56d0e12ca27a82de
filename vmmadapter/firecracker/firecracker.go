// Package firecracker drives Firecracker's API (HTTP over its --api-sock) to
// attach TAP NICs: PUT /network-interfaces/{iface_id} before boot; after boot
// only on v1.16+ started with --enable-pci (the same PUT hot-adds, DELETE
// removes). Everything else gets a clear error wrapping
// vmmadapter.ErrHotplugUnsupported, and the NIC stays pending for the next
// boot or a snapshot restore (network_overrides).
//
// Firecracker rejects unknown JSON fields, so a body carries only fields the
// running version knows: mtu only from the v1.16.0 release (commit
// e865b9c5f; builds calling themselves "1.16.0-dev" exist from before and
// after it, so a pre-release of 1.16.0 gets no mtu). Without it a NIC whose
// MTU is not 1500 is attached with a note that the guest assumes 1500.
//
// Upstream docs/device-hotplug.md: Firecracker delivers no hot-plug
// notification. After a hot-add the guest must rescan its PCI bus (the
// Attachment carries a note saying so), and before a hot-unplug the guest
// must remove the device itself; DELETE tears the device down at once
// (detach_pci_virtio_device), under a guest that may still use it. So
// RemoveNIC after boot sends DELETE only when the caller says the guest has
// let go (vmmadapter.WithGuestAcked), and otherwise returns
// vmmadapter.ErrGuestMustAct.
//
// A pre-boot PUT for an existing iface_id replaces the interface: upstream
// NetBuilder::build (src/vmm/src/vmm_config/net.rs) drops the old device
// before it opens the new TAP, so a failed replacement leaves no interface
// with that id. AddNIC then puts the previous one back.
package firecracker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/internal/apiclient"
)

// MaxIfaceIDLen bounds generated iface_ids (Firecracker's id check limit).
const MaxIfaceIDLen = 64

// Adapter is a vmmadapter.Adapter for one Firecracker API socket. It is safe
// for concurrent use.
type Adapter struct {
	c   *apiclient.Client
	pci vmmadapter.PCIMode
	log *slog.Logger

	mu      sync.Mutex
	learned vmmadapter.PCIMode // what the VMM's answers told us
}

var _ vmmadapter.Adapter = (*Adapter)(nil)

// New returns an adapter for the API socket. It does not connect: a missing
// VMM shows up as ErrUnavailable on the first call. Firecracker's API cannot
// tell whether it was started with --enable-pci; opts.PCI says so when the
// caller knows (PCIUnknown: the adapter tries and maps the refusal).
func New(socket string, opts vmmadapter.Options) (*Adapter, error) {
	if socket == "" {
		return nil, errors.New("firecracker: empty API socket path")
	}
	return &Adapter{c: apiclient.New(vmmadapter.Firecracker, socket, opts), pci: opts.PCI, log: opts.Log()}, nil
}

// Close releases the adapter's resources.
func (a *Adapter) Close() error { return a.c.Close() }

// Socket is the API socket path.
func (a *Adapter) Socket() string { return a.c.Socket }

// --- wire types (field names from the Firecracker swagger) ---

type networkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
	MTU         int    `json:"mtu,omitempty"`
}

type instanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

type vmConfig struct {
	NetworkInterfaces []networkInterface `json:"network-interfaces"`
}

// IfaceID maps a NIC id to a valid Firecracker iface_id ([A-Za-z0-9_]+, at
// most MaxIfaceIDLen bytes), deterministically. Valid ids pass unchanged;
// otherwise every other byte becomes '_' and "_" + 8 hex digits of the
// id's SHA-256 are appended, so "a-b" and "a.b" stay distinct.
func IfaceID(id string) string {
	b := []byte(id)
	changed := len(b) == 0
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
			changed = true
		}
	}
	if !changed && len(b) <= MaxIfaceIDLen {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	suffix := "_" + hex.EncodeToString(sum[:4])
	if len(b) > MaxIfaceIDLen-len(suffix) {
		b = b[:MaxIfaceIDLen-len(suffix)]
	}
	return string(b) + suffix
}

// mtuSupported: the mtu field exists from the v1.16.0 release on
// (CHANGELOG 1.16.0, #5828); "1.16.0-dev" does not count.
func mtuSupported(v apiclient.Version) bool { return v.ReleasedAtLeast(1, 16, 0) }

// hotplugVersion: PUT after boot and DELETE exist from v1.16.0 on.
func hotplugVersion(v apiclient.Version) bool { return v.AtLeast(1, 16) }

// guestDefaultMTU is what a virtio-net guest uses when the device
// advertises no MTU (no VIRTIO_NET_F_MTU).
const guestDefaultMTU = 1500

// body returns the PUT body for nic and the notes to record with it.
func body(nic vmmadapter.NIC, v apiclient.Version, versionKnown bool) (networkInterface, []string, error) {
	if nic.Tap == "" {
		return networkInterface{}, nil, fmt.Errorf("firecracker: NIC %q without a TAP name", nic.ID)
	}
	if err := vmmadapter.ValidateNIC(vmmadapter.Firecracker, nic); err != nil {
		return networkInterface{}, nil, err
	}
	ni := networkInterface{IfaceID: IfaceID(nic.ID), HostDevName: nic.Tap, GuestMAC: nic.MAC}
	var notes []string
	if nic.MTU > 0 {
		switch {
		case versionKnown && mtuSupported(v):
			ni.MTU = nic.MTU
		case nic.MTU != guestDefaultMTU:
			ver := "of unknown version"
			if versionKnown {
				ver = "v" + versionString(v)
			}
			notes = append(notes, fmt.Sprintf("Firecracker %s cannot advertise an MTU (the mtu field is new in v1.16.0): the guest will assume %d, not %d, unless it is set in the guest",
				ver, guestDefaultMTU, nic.MTU))
		}
	}
	return ni, notes, nil
}

func versionString(v apiclient.Version) string {
	s := strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) + "." + strconv.Itoa(v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}

// NetworkInterfacesJSON returns the "network-interfaces" array of a
// Firecracker config file (--config-file) for nics, for the given Firecracker
// version ("1.16.1"; mtu is included only from 1.16.0, and only when set; an
// empty version leaves mtu out).
func NetworkInterfacesJSON(nics []vmmadapter.NIC, version string) ([]byte, error) {
	v, known := apiclient.ParseVersion(version)
	if version != "" && !known {
		return nil, fmt.Errorf("firecracker: cannot read version %q", version)
	}
	out := make([]networkInterface, 0, len(nics))
	seen := map[string]string{}
	for _, nic := range nics {
		ni, _, err := body(nic, v, known)
		if err != nil {
			return nil, err
		}
		if prev, dup := seen[ni.IfaceID]; dup {
			return nil, fmt.Errorf("firecracker: NICs %q and %q map to the same iface_id %q", prev, nic.ID, ni.IfaceID)
		}
		seen[ni.IfaceID] = nic.ID
		out = append(out, ni)
	}
	return json.MarshalIndent(out, "", "  ")
}

// --- calls ---

func (a *Adapter) instance(ctx context.Context) (*instanceInfo, apiclient.Version, error) {
	resp, err := a.c.Call(ctx, http.MethodGet, "/", nil)
	if err != nil {
		return nil, apiclient.Version{}, err
	}
	call := "GET /"
	if !resp.OK() {
		return nil, apiclient.Version{}, a.c.NewAPIError(call, resp)
	}
	var in instanceInfo
	if err := json.Unmarshal(resp.Body, &in); err != nil || in.State == "" {
		return nil, apiclient.Version{}, a.badBody(call, resp, "InstanceInfo", err)
	}
	v, ok := apiclient.ParseVersion(in.VMMVersion)
	if !ok {
		// Fall back to GET /version (FirecrackerVersion).
		if fv, err := a.version(ctx); err == nil {
			if v, ok = apiclient.ParseVersion(fv); ok {
				in.VMMVersion = fv
			}
		}
	}
	if !ok {
		return nil, apiclient.Version{}, fmt.Errorf("firecracker API %s on %s: cannot read vmm_version %q", call, a.c.Socket, in.VMMVersion)
	}
	return &in, v, nil
}

// version returns GET /version's firecracker_version.
func (a *Adapter) version(ctx context.Context) (string, error) {
	resp, err := a.c.Call(ctx, http.MethodGet, "/version", nil)
	if err != nil {
		return "", err
	}
	if !resp.OK() {
		return "", a.c.NewAPIError("GET /version", resp)
	}
	var fv struct {
		FirecrackerVersion string `json:"firecracker_version"`
	}
	if err := json.Unmarshal(resp.Body, &fv); err != nil {
		return "", a.badBody("GET /version", resp, "FirecrackerVersion", err)
	}
	return fv.FirecrackerVersion, nil
}

func (a *Adapter) badBody(call string, resp *apiclient.Response, what string, err error) error {
	chain, raw := apiclient.DecodeErrorBody(resp.Body)
	detail := raw
	if detail == "" {
		detail = strings.Join(chain, ": ")
	}
	if err == nil {
		err = errors.New("required fields missing")
	}
	return fmt.Errorf("firecracker API %s on %s answered %d with a body that is not valid %s (%v): %q",
		call, a.c.Socket, resp.Status, what, err, detail)
}

func started(in *instanceInfo) bool { return in.State != "Not started" }

// pciMode is what is known about --enable-pci: the caller's word, else what
// the VMM told us.
func (a *Adapter) pciMode() vmmadapter.PCIMode {
	if a.pci != vmmadapter.PCIUnknown {
		return a.pci
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.learned
}

func (a *Adapter) learn(m vmmadapter.PCIMode) {
	a.mu.Lock()
	a.learned = m
	a.mu.Unlock()
}

// Info reports version, state and what hot-plug this Firecracker allows:
// v1.16+ unless known to run without --enable-pci.
func (a *Adapter) Info(ctx context.Context) (vmmadapter.Info, error) {
	in, v, err := a.instance(ctx)
	if err != nil {
		return vmmadapter.Info{}, err
	}
	hot := hotplugVersion(v) && a.pciMode() != vmmadapter.PCIDisabled
	return vmmadapter.Info{
		Kind:      vmmadapter.Firecracker,
		Version:   in.VMMVersion,
		Booted:    started(in),
		HotAdd:    hot,
		HotRemove: hot,
	}, nil
}

// NICs lists the iface_ids of GET /vm/config.
func (a *Adapter) NICs(ctx context.Context) ([]string, error) {
	cfg, err := a.vmConfig(ctx)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(cfg.NetworkInterfaces))
	for _, n := range cfg.NetworkInterfaces {
		ids = append(ids, n.IfaceID)
	}
	return ids, nil
}

func (a *Adapter) vmConfig(ctx context.Context) (*vmConfig, error) {
	resp, err := a.c.Call(ctx, http.MethodGet, "/vm/config", nil)
	if err != nil {
		return nil, err
	}
	call := "GET /vm/config"
	if !resp.OK() {
		return nil, a.c.NewAPIError(call, resp)
	}
	var cfg vmConfig
	if err := json.Unmarshal(resp.Body, &cfg); err != nil {
		return nil, a.badBody(call, resp, "FullVmConfiguration", err)
	}
	return &cfg, nil
}

func (a *Adapter) unsupported(what, ver, why string) error {
	return fmt.Errorf("%s: this Firecracker (v%s) cannot hot-plug NICs: %s; the NIC stays pending for the next boot or a snapshot restore (network_overrides): %w",
		what, strings.TrimPrefix(ver, "v"), why, vmmadapter.ErrHotplugUnsupported)
}

const (
	whyOld   = "hot-plug needs Firecracker v1.16.0 or later started with --enable-pci"
	whyNoPCI = "it was started without --enable-pci"
)

// NoteUnplug says what must happen before a running Firecracker's NIC can
// be removed.
const NoteUnplug = "Firecracker tears the device down without telling the guest: the guest must first remove it from its PCI bus (echo 1 > /sys/bus/pci/devices/<BDF>/remove), then the VM manager says so (vmnicctl guest-acked <sandbox> <ifname>) and the removal is retried"

// NoteRescan is recorded with a NIC hot-added into a running Firecracker.
const NoteRescan = "Firecracker sends the guest no hot-plug notification: the guest must rescan its PCI bus (echo 1 > /sys/bus/pci/rescan) to see this NIC"

// AddNIC puts the interface before boot, or hot-adds it after boot on v1.16+
// with PCI. Attachment.ID is the iface_id used (see IfaceID). After a hot-add
// the guest must rescan its PCI bus (Firecracker sends no notification); the
// Attachment's Notes say so. Before boot, a PUT that replaces an interface
// with the same iface_id and fails is undone: the previous interface is put
// back (Firecracker dropped it before trying the new one).
func (a *Adapter) AddNIC(ctx context.Context, nic vmmadapter.NIC) (vmmadapter.Attachment, error) {
	iface := IfaceID(nic.ID)
	what := fmt.Sprintf("add NIC %q (iface_id %s, TAP %s)", nic.ID, iface, nic.Tap)
	if err := vmmadapter.ValidateFds(vmmadapter.Firecracker, nic); err != nil {
		// Firecracker's API server reads no ancillary data and opens the
		// TAP by name in its own netns (Tap::open_named).
		return vmmadapter.Attachment{}, err
	}
	in, v, err := a.instance(ctx)
	if err != nil {
		return vmmadapter.Attachment{}, fmt.Errorf("%s: %w", what, err)
	}
	ni, notes, err := body(nic, v, true)
	if err != nil {
		return vmmadapter.Attachment{}, err
	}
	hot := started(in)
	var previous json.RawMessage
	if hot {
		switch {
		case !hotplugVersion(v):
			return vmmadapter.Attachment{}, a.unsupported(what, in.VMMVersion, whyOld)
		case a.pciMode() == vmmadapter.PCIDisabled:
			return vmmadapter.Attachment{}, a.unsupported(what, in.VMMVersion, whyNoPCI)
		}
	} else {
		previous, err = a.current(ctx, iface)
		if err != nil {
			return vmmadapter.Attachment{}, fmt.Errorf("%s: %w", what, err)
		}
	}
	path := "/network-interfaces/" + url.PathEscape(iface)
	call := "PUT " + path
	resp, err := a.c.Call(ctx, http.MethodPut, path, ni)
	if err != nil {
		return vmmadapter.Attachment{}, fmt.Errorf("%s: %w", what, err)
	}
	if resp.OK() {
		if hot {
			a.learn(vmmadapter.PCIEnabled)
			notes = append(notes, NoteRescan)
		}
		for _, n := range notes {
			a.log.Warn("firecracker: "+n, "nic", nic.ID, "iface_id", iface)
		}
		return vmmadapter.Attachment{ID: iface, Hot: hot, Note: strings.Join(notes, "; ")}, nil
	}
	apiErr := a.c.NewAPIError(call, resp)
	err = a.classifyAdd(what, iface, in.VMMVersion, nic, apiErr)
	if previous != nil {
		err = a.restore(ctx, iface, previous, err)
	}
	return vmmadapter.Attachment{}, err
}

func (a *Adapter) classifyAdd(what, iface, ver string, nic vmmadapter.NIC, apiErr *apiclient.APIError) error {
	switch {
	case apiErr.Contains("PCI is not enabled"):
		a.learn(vmmadapter.PCIDisabled)
		return fmt.Errorf("%w (%s)", a.unsupported(what, ver, whyNoPCI), apiErr.Message())
	case apiErr.Contains("not supported after starting"):
		return fmt.Errorf("%w (%s)", a.unsupported(what, ver, whyOld), apiErr.Message())
	case apiErr.Contains("Device ID in use"):
		return fmt.Errorf("%s: iface_id %s: %w: %w", what, iface, vmmadapter.ErrDeviceIDInUse, apiErr)
	case apiErr.Contains("resource busy", "os error 16", "EBUSY"):
		return fmt.Errorf("%s: TAP %s: %w (another VMM holds it): %w", what, nic.Tap, vmmadapter.ErrTapBusy, apiErr)
	}
	return fmt.Errorf("%s: %w", what, apiErr)
}

// current returns the pre-boot interface iface as GET /vm/config shows it
// (its JSON object without null fields, ready to PUT again), or nil.
func (a *Adapter) current(ctx context.Context, iface string) (json.RawMessage, error) {
	resp, err := a.c.Call(ctx, http.MethodGet, "/vm/config", nil)
	if err != nil {
		return nil, err
	}
	if !resp.OK() {
		return nil, a.c.NewAPIError("GET /vm/config", resp)
	}
	var cfg struct {
		NetworkInterfaces []map[string]json.RawMessage `json:"network-interfaces"`
	}
	if err := json.Unmarshal(resp.Body, &cfg); err != nil {
		return nil, a.badBody("GET /vm/config", resp, "FullVmConfiguration", err)
	}
	for _, n := range cfg.NetworkInterfaces {
		var id string
		if json.Unmarshal(n["iface_id"], &id) != nil || id != iface {
			continue
		}
		// NetworkInterfaceConfig serialises unset options as null; the PUT
		// (deny_unknown_fields, but nulls allowed) is kept minimal.
		for k, v := range n {
			if string(v) == "null" {
				delete(n, k)
			}
		}
		return json.Marshal(n)
	}
	return nil, nil
}

// restore puts the previous interface back after a failed replacing PUT.
func (a *Adapter) restore(ctx context.Context, iface string, previous json.RawMessage, cause error) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.c.Timeout)
	defer cancel()
	path := "/network-interfaces/" + url.PathEscape(iface)
	resp, err := a.c.Call(rctx, http.MethodPut, path, previous)
	switch {
	case err != nil:
	case !resp.OK():
		err = a.c.NewAPIError("PUT "+path, resp)
	default:
		return fmt.Errorf("%w (the previous interface %s was put back)", cause, iface)
	}
	a.log.Error("firecracker: the previous interface could not be put back after a failed replacement", "iface_id", iface, "error", err)
	return errors.Join(cause, fmt.Errorf("put back the previous interface %s (Firecracker dropped it before the failed replacement): %w", iface, err))
}

// RemoveNIC deletes the interface from a running v1.16+ Firecracker with PCI.
// DELETE is synchronous and Firecracker tells the guest nothing
// (docs/device-hotplug.md), so it is sent only when ctx carries
// vmmadapter.WithGuestAcked (the guest has removed the PCI device);
// otherwise the error wraps vmmadapter.ErrGuestMustAct and says what the
// guest must do. An id the VMM does not have is not an error. Before boot,
// and on Firecrackers that cannot hot-unplug, the error wraps
// vmmadapter.ErrHotplugUnsupported.
func (a *Adapter) RemoveNIC(ctx context.Context, id string) error {
	iface := IfaceID(id)
	what := fmt.Sprintf("remove NIC %q (iface_id %s)", id, iface)
	in, v, err := a.instance(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	cfg, err := a.vmConfig(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	present := false
	for _, n := range cfg.NetworkInterfaces {
		if n.IfaceID == iface {
			present = true
		}
	}
	if !present {
		return nil
	}
	switch {
	case !started(in):
		return fmt.Errorf("%s: this Firecracker (v%s) cannot remove a network interface before boot; it stays configured until the process exits: %w",
			what, strings.TrimPrefix(in.VMMVersion, "v"), vmmadapter.ErrHotplugUnsupported)
	case !hotplugVersion(v):
		return a.unsupported(what, in.VMMVersion, whyOld)
	case a.pciMode() == vmmadapter.PCIDisabled:
		return a.unsupported(what, in.VMMVersion, whyNoPCI)
	case !vmmadapter.GuestAcked(ctx):
		return fmt.Errorf("%s: %w: %s", what, vmmadapter.ErrGuestMustAct, NoteUnplug)
	}
	path := "/network-interfaces/" + url.PathEscape(iface)
	call := "DELETE " + path
	resp, err := a.c.Call(ctx, http.MethodDelete, path, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if resp.OK() {
		return nil
	}
	apiErr := a.c.NewAPIError(call, resp)
	switch {
	case apiErr.Contains("Device not found"):
		return nil
	case apiErr.Contains("PCI is not enabled"):
		a.learn(vmmadapter.PCIDisabled)
		return fmt.Errorf("%w (%s)", a.unsupported(what, in.VMMVersion, whyNoPCI), apiErr.Message())
	}
	return fmt.Errorf("%s: %w", what, apiErr)
}
