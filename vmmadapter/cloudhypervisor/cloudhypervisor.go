// Package cloudhypervisor drives Cloud Hypervisor's REST API (HTTP over its
// --api-socket) to cold-add NICs before boot, hot-add them after boot and
// hot-remove them, waiting until the guest has ejected a removed NIC.
//
// Facts honoured (see the project's reference on VMM APIs; upstream files
// are named where the behaviour is relied on):
//   - PUT /api/v1/vm.add-net answers 204 before boot and 200 + {id, bdf}
//     after boot; errors are a JSON list of strings, status 500 for nearly
//     everything up to v53 (404/409 only on newer releases;
//     vmm/src/api/http/mod.rs).
//   - vm.add-net never carries mtu: CH issues SIOCSIFMTU whenever mtu is
//     given (net_util/src/open_tap.rs open_tap_rx_q_0), which needs
//     CAP_NET_ADMIN even when the value is unchanged, so an unprivileged CH
//     would fail every add with EPERM. vmnic sets the TAP's MTU itself and
//     CH reads it from the TAP (SIOCGIFMTU) to advertise VIRTIO_NET_F_MTU.
//   - PUT /api/v1/vm.remove-device returns at once; the device stays in
//     vm.info's device_tree until the guest ejects it, while it leaves
//     config.net immediately (vmm/src/device_manager.rs remove_device,
//     eject_device).
//   - A second remove-device for one id kills the VMM thread on v49–v52
//     (PR #8559), so there this adapter sends it at most once per id: never
//     when config.net no longer lists the id (a remove is already pending,
//     whoever sent it), and never again for an id it removed itself; when
//     asked again it only waits. On ≤ v48 and from v54 (commit 35b9703e1,
//     "vmm: Make device removal retryable", because the ACPI GED interrupt
//     can be missed by a loaded guest) it re-sends remove-device while it
//     waits for the eject. v53 answers a second remove with an error, so it
//     is not re-sent there either.
//   - A NIC with Fds hands the TAP's queue fds over with the vm.add-net
//     request as SCM_RIGHTS ancillary data (apiclient.CallWithFiles): CH
//     assigns every fd of the request to the NIC (attach_fds_to_cfg in
//     vmm/src/api/http/http_endpoint.rs), requires fds.len()*2 ==
//     num_queues (VnetQueueFdMismatch, vmm/src/config.rs), dup()s the fds
//     and learns the TAP name from them (Net::from_tap_fds,
//     virtio-devices/src/net.rs). CH then needs no /dev/net/tun and no
//     CAP_NET_ADMIN. remove-device closes the preserved fds; the device's
//     own copies close when the guest ejects it (PR #7371).
//   - A paused VM runs no vCPU and so cannot eject: removal is refused with
//     vmmadapter.ErrVMPaused instead of waiting for an eject that cannot
//     come before vm.resume.
package cloudhypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/internal/apiclient"
)

const (
	apiPrefix = "/api/v1"
	pollFirst = 50 * time.Millisecond
	pollMax   = 100 * time.Millisecond
)

// Adapter is a vmmadapter.Adapter for one Cloud Hypervisor API socket. It is
// safe for concurrent use.
type Adapter struct {
	c             *apiclient.Client
	removeTimeout time.Duration

	mu      sync.Mutex
	removed map[string]bool // ids this adapter sent remove-device for, not yet seen gone
}

var _ vmmadapter.Adapter = (*Adapter)(nil)

// New returns an adapter for the API socket. It does not connect: a missing
// VMM shows up as ErrUnavailable on the first call.
func New(socket string, opts vmmadapter.Options) (*Adapter, error) {
	if socket == "" {
		return nil, errors.New("cloud-hypervisor: empty API socket path")
	}
	opts = opts.WithDefaults()
	c := apiclient.New(vmmadapter.CloudHypervisor, socket, opts)
	c.PeerPID = opts.PeerPID
	return &Adapter{
		c:             c,
		removeTimeout: opts.RemoveTimeout,
		removed:       map[string]bool{},
	}, nil
}

// Close releases the adapter's resources.
func (a *Adapter) Close() error { return a.c.Close() }

// Socket is the API socket path.
func (a *Adapter) Socket() string { return a.c.Socket }

// --- wire types (field names from the Cloud Hypervisor spec) ---

// netConfig has no mtu on purpose (see the package doc).
type netConfig struct {
	Tap       string `json:"tap,omitempty"`
	Mac       string `json:"mac,omitempty"`
	NumQueues int    `json:"num_queues"`
	QueueSize int    `json:"queue_size,omitempty"`
	ID        string `json:"id,omitempty"`
}

type pciDeviceInfo struct {
	ID  string `json:"id"`
	BDF string `json:"bdf"`
}

type removeDevice struct {
	ID string `json:"id"`
}

type pingResponse struct {
	BuildVersion string `json:"build_version"`
	Version      string `json:"version"`
	PID          int64  `json:"pid"`
}

type vmInfo struct {
	Config struct {
		Net []struct {
			ID  string `json:"id"`
			Tap string `json:"tap"`
		} `json:"net"`
	} `json:"config"`
	State      string                     `json:"state"`
	DeviceTree map[string]json.RawMessage `json:"device_tree"`
}

func (v *vmInfo) booted() bool {
	switch v.State {
	case "Running", "Paused", "BreakPoint":
		return true
	}
	return false
}

func (v *vmInfo) hasNet(id string) bool {
	for _, n := range v.Config.Net {
		if n.ID == id {
			return true
		}
	}
	return false
}

func (v *vmInfo) inTree(id string) bool {
	_, ok := v.DeviceTree[id]
	return ok
}

// --- calls ---

func (a *Adapter) call(ctx context.Context, method, endpoint string, body any) (*apiclient.Response, string, error) {
	path := apiPrefix + "/" + endpoint
	resp, err := a.c.Call(ctx, method, path, body)
	return resp, method + " " + path, err
}

// ping returns the VMM's version.
func (a *Adapter) ping(ctx context.Context) (string, error) {
	p, err := a.pingInfo(ctx)
	if err != nil {
		return "", err
	}
	if p.Version != "" {
		return p.Version, nil
	}
	return p.BuildVersion, nil
}

// pingInfo is vmm.ping's answer.
func (a *Adapter) pingInfo(ctx context.Context) (pingResponse, error) {
	resp, call, err := a.call(ctx, http.MethodGet, "vmm.ping", nil)
	if err != nil {
		return pingResponse{}, err
	}
	if !resp.OK() {
		return pingResponse{}, a.c.NewAPIError(call, resp)
	}
	var p pingResponse
	if err := json.Unmarshal(resp.Body, &p); err != nil || (p.Version == "" && p.BuildVersion == "") {
		return pingResponse{}, a.badBody(call, resp, "VmmPingResponse", err)
	}
	return p, nil
}

// info returns vm.info, or created=false when the VMM has no VM yet.
func (a *Adapter) info(ctx context.Context) (_ *vmInfo, created bool, _ error) {
	resp, call, err := a.call(ctx, http.MethodGet, "vm.info", nil)
	if err != nil {
		return nil, false, err
	}
	if !resp.OK() {
		apiErr := a.c.NewAPIError(call, resp)
		if notCreated(apiErr) {
			return nil, false, nil
		}
		return nil, false, apiErr
	}
	var v vmInfo
	if err := json.Unmarshal(resp.Body, &v); err != nil || v.State == "" {
		return nil, false, a.badBody(call, resp, "VmInfo", err)
	}
	return &v, true, nil
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
	return fmt.Errorf("cloud-hypervisor API %s on %s answered %d with a body that is not valid %s (%v): %q",
		call, a.c.Socket, resp.Status, what, err, detail)
}

// The messages of a remove-device for an id CH does not have, as upstream
// words them: DeviceManagerError::UnknownDeviceId (vmm/src/device_manager.rs;
// v46–v52 without the id, v53+ with ": <id>") after boot, and
// VmError::NoDeviceToRemove (vmm/src/vm.rs, "No device with id \"…\" to
// remove") before boot. Both are HTTP 500 up to v53, 404 after.
const (
	msgUnknownDeviceID  = "Failed to find device corresponding to the given identifier"
	msgNoDeviceToRemove = "to remove"
	msgNoDeviceWithID   = "No device with id"
	// VmError::VmNotCreated / VmMissingConfig (vmm/src/lib.rs, vmm/src/vm.rs).
	msgNotCreated    = "VM is not created"
	msgMissingConfig = "VM config is missing"
)

func noDevice(e *apiclient.APIError) bool {
	return e.Contains(msgUnknownDeviceID) || (e.Contains(msgNoDeviceWithID) && e.Contains(msgNoDeviceToRemove))
}

// notCreated: the VMM has no VM (404 on v53+ unless the 404 is about a
// device, the pre-v53 500 by its message).
func notCreated(e *apiclient.APIError) bool {
	if e.Status == http.StatusNotFound && !noDevice(e) {
		return true
	}
	return e.Contains(msgNotCreated, msgMissingConfig)
}

// notFound: the device id is unknown to the VMM (pre-boot NoDeviceToRemove,
// post-boot UnknownDeviceId; 404 on releases after v53).
func notFound(e *apiclient.APIError) bool {
	return e.Status == http.StatusNotFound || noDevice(e)
}

// Info reports the version and whether the VM is booted. A VMM without a VM
// (not yet vm.create'd) reports Booted false.
func (a *Adapter) Info(ctx context.Context) (vmmadapter.Info, error) {
	p, err := a.pingInfo(ctx)
	if err != nil {
		return vmmadapter.Info{}, err
	}
	ver := p.Version
	if ver == "" {
		ver = p.BuildVersion
	}
	v, created, err := a.info(ctx)
	if err != nil {
		return vmmadapter.Info{}, err
	}
	return vmmadapter.Info{
		Kind:      vmmadapter.CloudHypervisor,
		Version:   ver,
		PID:       int(p.PID),
		Booted:    created && v.booted(),
		HotAdd:    true,
		HotRemove: true,
	}, nil
}

// NICs lists the ids in the VM's live network config (a removed NIC leaves
// it at once, even while the guest has not ejected it yet).
func (a *Adapter) NICs(ctx context.Context) ([]string, error) {
	v, created, err := a.info(ctx)
	if err != nil || !created {
		return nil, err
	}
	ids := make([]string, 0, len(v.Config.Net))
	for _, n := range v.Config.Net {
		ids = append(ids, n.ID)
	}
	return ids, nil
}

// Pending reports whether id was removed but is still in the device tree
// (the guest has not ejected it yet).
func (a *Adapter) Pending(ctx context.Context, id string) (bool, error) {
	v, created, err := a.info(ctx)
	if err != nil || !created {
		return false, err
	}
	return v.inTree(id) && !v.hasNet(id), nil
}

// Body returns the vm.add-net body for nic (exported for tests and tools).
func Body(nic vmmadapter.NIC) (json.RawMessage, error) {
	if err := validateNIC(nic); err != nil {
		return nil, err
	}
	return json.Marshal(netConfigFor(nic))
}

func netConfigFor(nic vmmadapter.NIC) netConfig {
	return netConfig{
		Tap:       nic.Tap,
		Mac:       nic.MAC,
		NumQueues: 2 * pairs(nic),
		QueueSize: nic.QueueSize,
		ID:        nic.ID,
	}
}

func pairs(nic vmmadapter.NIC) int {
	if nic.QueuePairs <= 0 {
		return 1
	}
	return nic.QueuePairs
}

func validateNIC(nic vmmadapter.NIC) error {
	switch {
	case nic.ID == "":
		return errors.New("cloud-hypervisor: NIC without an id")
	case strings.HasPrefix(nic.ID, "__"):
		return fmt.Errorf("cloud-hypervisor: NIC id %q: ids starting with \"__\" are reserved by Cloud Hypervisor", nic.ID)
	case strings.ContainsAny(nic.ID, ",= \t\n"):
		return fmt.Errorf("cloud-hypervisor: NIC id %q: must not contain ',', '=' or spaces", nic.ID)
	case nic.Tap == "":
		return fmt.Errorf("cloud-hypervisor: NIC %q without a TAP name", nic.ID)
	case len(nic.Tap) > 15:
		return fmt.Errorf("cloud-hypervisor: NIC %q: TAP name %q is longer than 15 bytes", nic.ID, nic.Tap)
	case strings.ContainsAny(nic.Tap+nic.MAC, ",= \t\n"):
		return fmt.Errorf("cloud-hypervisor: NIC %q: TAP %q / MAC %q must not contain ',', '=' or spaces", nic.ID, nic.Tap, nic.MAC)
	case nic.MTU < 0 || nic.QueuePairs < 0 || nic.QueueSize < 0:
		return fmt.Errorf("cloud-hypervisor: NIC %q: negative MTU, queue pairs or queue size", nic.ID)
	}
	return nil
}

// AddNIC cold-adds (VM created, not booted: 204) or hot-adds (booted: 200 +
// {id, bdf}) the NIC.
func (a *Adapter) AddNIC(ctx context.Context, nic vmmadapter.NIC) (vmmadapter.Attachment, error) {
	if err := validateNIC(nic); err != nil {
		return vmmadapter.Attachment{}, err
	}
	if err := vmmadapter.ValidateFds(vmmadapter.CloudHypervisor, nic); err != nil {
		return vmmadapter.Attachment{}, err
	}
	what := fmt.Sprintf("add NIC %q (TAP %s)", nic.ID, nic.Tap)
	if len(nic.Fds) > 0 {
		what = fmt.Sprintf("add NIC %q (TAP %s, %d fds)", nic.ID, nic.Tap, len(nic.Fds))
	}
	path := apiPrefix + "/vm.add-net"
	call := http.MethodPut + " " + path
	// With fds the request carries them as SCM_RIGHTS; CH takes all the
	// fds of the request for this NIC and ignores tap (kept in the body
	// only so vm.info names the TAP; Net::from_tap_fds learns the name
	// from the fds).
	resp, err := a.c.CallWithFiles(ctx, http.MethodPut, path, netConfigFor(nic), nic.Fds)
	if err != nil {
		return vmmadapter.Attachment{}, fmt.Errorf("%s: %w", what, err)
	}
	switch {
	case resp.Status == http.StatusNoContent:
		a.forget(nic.ID)
		return vmmadapter.Attachment{ID: nic.ID}, nil
	case resp.OK():
		var p pciDeviceInfo
		if err := json.Unmarshal(resp.Body, &p); err != nil || p.ID == "" {
			return vmmadapter.Attachment{}, fmt.Errorf("%s: the NIC may be attached, but %w", what, a.badBody(call, resp, "PciDeviceInfo", err))
		}
		a.forget(p.ID)
		return vmmadapter.Attachment{ID: p.ID, BDF: p.BDF, Hot: true}, nil
	}
	apiErr := a.c.NewAPIError(call, resp)
	switch {
	case resp.Status == http.StatusConflict || apiErr.Contains("not unique", "IdentifierNotUnique"):
		return vmmadapter.Attachment{}, fmt.Errorf("%s: id %q: %w (if a NIC with this id was removed, the guest may not have ejected it yet): %w",
			what, nic.ID, vmmadapter.ErrDeviceIDInUse, apiErr)
	case apiErr.Contains("multiqueue support (no support device side)"):
		// net_util/src/open_tap.rs check_mq_support, MultiQueueNoDeviceSupport.
		return vmmadapter.Attachment{}, fmt.Errorf("%s: TAP %s is multi-queue but the NIC has %d queue pair(s): %w: %w",
			what, nic.Tap, pairs(nic), vmmadapter.ErrTapQueueMismatch, apiErr)
	case apiErr.Contains("multiqueue support (no support TAP side)"):
		// MultiQueueNoTapSupport.
		return vmmadapter.Attachment{}, fmt.Errorf("%s: TAP %s is single-queue but the NIC has %d queue pairs: %w: %w",
			what, nic.Tap, pairs(nic), vmmadapter.ErrTapQueueMismatch, apiErr)
	case apiErr.Contains("does not match the number of input FDs"):
		// vmm/src/config.rs ValidationError::VnetQueueFdMismatch.
		return vmmadapter.Attachment{}, fmt.Errorf("%s: %w: %w", what, vmmadapter.ErrFdCount, apiErr)
	case apiErr.Contains("resource busy", "os error 16", "EBUSY"):
		return vmmadapter.Attachment{}, fmt.Errorf("%s: TAP %s: %w (another VMM, or a removed NIC the guest has not ejected yet, holds it): %w",
			what, nic.Tap, vmmadapter.ErrTapBusy, apiErr)
	case notCreated(apiErr):
		return vmmadapter.Attachment{}, fmt.Errorf("%s: no VM has been created on this VMM yet (vm.create first): %w", what, apiErr)
	}
	return vmmadapter.Attachment{}, fmt.Errorf("%s: %w", what, apiErr)
}

func (a *Adapter) forget(id string) {
	a.mu.Lock()
	delete(a.removed, id)
	a.mu.Unlock()
}

// claimRemove marks id as removed by this adapter; false when it already was.
func (a *Adapter) claimRemove(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.removed[id] {
		return false
	}
	a.removed[id] = true
	return true
}

var errRemoveTimeout = errors.New("remove timeout")

// RemoveNIC removes the NIC and, on a booted VM, waits (bounded by
// Options.RemoveTimeout and ctx) until the guest has ejected it, i.e. until
// the id has left vm.info's device_tree. An id the VMM does not have is not
// an error. On v49–v53 remove-device is sent at most once per id; on ≤ v48
// and v54+ it is re-sent while waiting (see the package doc). A timeout
// wraps vmmadapter.ErrEjectTimeout; asking again later waits again. A paused
// VM is refused with vmmadapter.ErrVMPaused.
func (a *Adapter) RemoveNIC(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("cloud-hypervisor: remove NIC: empty id")
	}
	what := fmt.Sprintf("remove NIC %q", id)
	ctx, cancel := context.WithTimeoutCause(ctx, a.removeTimeout, errRemoveTimeout)
	defer cancel()

	v, created, err := a.info(ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if !created {
		a.forget(id)
		return nil
	}
	inConfig := v.hasNet(id)
	if !v.booted() {
		// Before boot a removal is a config-only edit: no guest, no eject.
		if !inConfig {
			a.forget(id)
			return nil
		}
		if err := a.sendRemove(ctx, id); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		a.forget(id)
		return nil
	}
	if !v.inTree(id) {
		if inConfig && a.claimRemove(id) {
			// Configured but not a live device (should not happen): drop it
			// from the config so it does not come back at the next boot.
			if err := a.sendRemove(ctx, id); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
		}
		a.forget(id)
		return nil
	}
	if v.State == "Paused" {
		// A paused guest handles no ACPI notification and ejects nothing
		// until vm.resume; waiting would only time out.
		return fmt.Errorf("%s: %w (Cloud Hypervisor on %s)", what, vmmadapter.ErrVMPaused, a.c.Socket)
	}
	retry := a.retryable(ctx)
	// In the device tree. Send remove-device when config.net still lists
	// the id (no removal pending) and this adapter has not sent one already;
	// on versions where a second remove is safe, send it again anyway (a
	// guest may have missed the first notification).
	first := inConfig && a.claimRemove(id)
	if first || retry {
		if !first {
			a.claimRemove(id)
		}
		if err := a.sendRemove(ctx, id); err != nil {
			var refused *apiclient.APIError
			if first && errors.As(err, &refused) {
				// The VMM answered and refused: nothing is pending, a later
				// attempt may send again. Without an answer the request may
				// have been applied (or be queued), so the mark stays.
				a.forget(id)
			}
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return a.waitEjected(ctx, id, what, retry)
}

// retryable reports whether this CH takes a second remove-device for a
// device whose eject is pending: ≤ v48 (it re-notifies the guest) and from
// v54 (commit 35b9703e1, 2026-08-18, first in the release after v53.0).
// v49–v52 panic (PR #8559) and v53 refuses (commit 5b53f4202); a version
// that cannot be read counts as unsafe.
func (a *Adapter) retryable(ctx context.Context) bool {
	ver, err := a.ping(ctx)
	if err != nil {
		return false
	}
	v, ok := apiclient.ParseVersion(ver)
	return ok && (v.Major <= 48 || v.Major >= 54)
}

// resendEvery is how long a wait lasts before remove-device is sent again
// where that is safe.
func (a *Adapter) resendEvery() time.Duration {
	return max(pollMax, min(time.Second, a.removeTimeout/4))
}

// sendRemove sends one remove-device; "no such device" is success.
func (a *Adapter) sendRemove(ctx context.Context, id string) error {
	resp, call, err := a.call(ctx, http.MethodPut, "vm.remove-device", removeDevice{ID: id})
	if err != nil {
		return err
	}
	if resp.OK() {
		return nil
	}
	apiErr := a.c.NewAPIError(call, resp)
	if notFound(apiErr) || notCreated(apiErr) {
		return nil
	}
	return apiErr
}

func (a *Adapter) waitEjected(ctx context.Context, id, what string, resend bool) error {
	start := time.Now()
	lastSend := start
	interval := pollFirst
	var lastErr error
	for {
		v, created, err := a.info(ctx)
		switch {
		case err == nil && (!created || !v.inTree(id)):
			a.forget(id)
			return nil
		case err == nil && v.State == "Paused":
			return fmt.Errorf("%s: paused while waiting for the guest to eject it: %w (the removal completes after vm.resume)", what, vmmadapter.ErrVMPaused)
		case err == nil && resend && time.Since(lastSend) >= a.resendEvery():
			// The guest may have missed the ACPI GED notification.
			lastSend = time.Now()
			if err := a.sendRemove(ctx, id); err != nil && ctx.Err() == nil {
				lastErr = err
			}
		case err != nil && errors.Is(err, vmmadapter.ErrUnavailable):
			return fmt.Errorf("%s: waiting for the guest to eject it: %w", what, err)
		case err != nil && ctx.Err() == nil:
			lastErr = err
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return a.waitError(ctx, what, start, lastErr)
		case <-t.C:
		}
		if interval *= 2; interval > pollMax {
			interval = pollMax
		}
	}
}

func (a *Adapter) waitError(ctx context.Context, what string, start time.Time, lastErr error) error {
	waited := time.Since(start).Round(time.Millisecond)
	suffix := ""
	if lastErr != nil {
		suffix = "; last poll error: " + lastErr.Error()
	}
	if context.Cause(ctx) == errRemoveTimeout {
		return fmt.Errorf("%s: removed from Cloud Hypervisor on %s but still in its device tree after %s (remove timeout %s): %w; the guest may lack ACPI hot-plug or be busy, the device stays pending and a later remove waits for it again%s",
			what, a.c.Socket, waited, a.removeTimeout, vmmadapter.ErrEjectTimeout, suffix)
	}
	return fmt.Errorf("%s: stopped waiting for the guest to eject it after %s: %w: %w%s",
		what, waited, vmmadapter.ErrEjectTimeout, context.Cause(ctx), suffix)
}

// NetArgs returns the Cloud Hypervisor command-line arguments that cold-plug
// nics at launch: "--net" followed by one "tap=…,mac=…,num_queues=…,
// queue_size=…,id=…" value per NIC (mac, queue_size and id only when set;
// num_queues is 2 × queue pairs). No mtu, for the reason vm.add-net has
// none (see the package doc): CH takes the MTU vmnic gave the TAP.
// No NICs → no arguments.
func NetArgs(nics []vmmadapter.NIC) []string {
	return NetFdArgs(nics, nil)
}

// NetFdArgs is NetArgs for a launcher that hands CH its TAPs as inherited
// fds: NIC i whose fds[i] is non-empty gets "fd=[n,…]" (CH's --net fd
// list; with it CH ignores tap=, vmm/src/config.rs NetConfig::parse)
// instead of "tap=…". fds[i] must have one fd per queue pair, each > 2
// (CH's VnetReservedFd); nil fds is NetArgs.
func NetFdArgs(nics []vmmadapter.NIC, fds [][]int) []string {
	if len(nics) == 0 {
		return nil
	}
	args := []string{"--net"}
	for i, nic := range nics {
		parts := []string{"tap=" + nic.Tap}
		if i < len(fds) && len(fds[i]) > 0 {
			nums := make([]string, len(fds[i]))
			for j, fd := range fds[i] {
				nums[j] = strconv.Itoa(fd)
			}
			parts = []string{"fd=[" + strings.Join(nums, ",") + "]"}
		}
		if nic.MAC != "" {
			parts = append(parts, "mac="+nic.MAC)
		}
		parts = append(parts, "num_queues="+strconv.Itoa(2*pairs(nic)))
		if nic.QueueSize > 0 {
			parts = append(parts, "queue_size="+strconv.Itoa(nic.QueueSize))
		}
		if nic.ID != "" {
			parts = append(parts, "id="+nic.ID)
		}
		args = append(args, strings.Join(parts, ","))
	}
	return args
}
