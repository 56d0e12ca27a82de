package vmmsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/openapi"
)

// CHState is the Cloud Hypervisor VM state as vm.info reports it, plus
// CHNotCreated (the VMM runs but has no VM yet).
type CHState string

const (
	CHNotCreated CHState = "NotCreated"
	CHCreated    CHState = "Created"
	CHRunning    CHState = "Running"
	CHPaused     CHState = "Paused"
	CHShutdown   CHState = "Shutdown"
)

// chMinMTU is Cloud Hypervisor's MIN_MTU (virtio-devices/src/net.rs).
const chMinMTU = 1280

// CHMain is the Version to give for Cloud Hypervisor main after v53 (Cargo
// version 54): 404/409 status codes, remove-device retryable again.
const CHMain = 54

// CHConfig configures a Cloud Hypervisor simulator.
type CHConfig struct {
	// Version is the major release: 48 (and older behaviour), 49–52, 53, or
	// CHMain. Default 53.
	Version int
	// State at start; default CHRunning.
	State CHState
	// EjectDelay is how long a removed NIC stays in vm.info's device_tree
	// (the guest's eject); 0 = gone at the next look, negative = never.
	EjectDelay time.Duration
	// BootVCPUs bounds num_queues/2 as the real server does; default 2.
	BootVCPUs int
	// NoSpec disables spec validation (it is also off when the spec files
	// are absent).
	NoSpec bool
	// CapNetAdmin: the VMM runs with CAP_NET_ADMIN. Without it (the default,
	// the case tapOwner/tapGroup exist for) every SIOCSIF* ioctl CH issues
	// on the TAP fails with EPERM; CH issues SIOCSIFMTU whenever the
	// NetConfig carries mtu, even when the value is unchanged
	// (net_util/src/open_tap.rs open_tap_rx_q_0, net_util/src/tap.rs set_mtu).
	CapNetAdmin bool
	// IgnoreFirstNotify: the guest misses the first ACPI GED notification
	// of a removal (a guest under heavy load; upstream commit 35b9703e1
	// "vmm: Make device removal retryable"), so the device is ejected only
	// after remove-device has been sent again (where CH allows that).
	IgnoreFirstNotify bool
	// Snapshot is the network config of the snapshot vm.restore loads
	// (what the snapshot directory's config.json would hold;
	// ch_restore.go).
	Snapshot []CHNet
}

// CHNet is one entry of the simulated VM's config.net.
type CHNet struct {
	ID, Tap, MAC, IP, Mask string
	MTU, NumQueues         int
	QueueSize              int
	// Fds is how many TAP fds came with vm.add-net (0: opened by name).
	// With fds, Tap is the name CH learned from them (TUNGETIFF).
	Fds int
}

type chDevice struct {
	net     CHNet
	bdf     string
	ejectAt time.Time // zero while attached
	never   bool      // removed, and the guest never ejects
	removed bool
	missed  bool // removed, and the guest missed the notification
	// files are the TAP fds the device holds once removed, until the
	// guest ejects it (the device's duplicates; PR #7371).
	files []*os.File
}

// chTap is a TAP that exists in the simulated VMM's netns, with the
// IFF_MULTI_QUEUE flag that /sys/class/net/<tap>/tun_flags shows.
type chTap struct {
	multiQueue bool
}

// CH is a simulated Cloud Hypervisor API server.
type CH struct {
	*server
	cfg      CHConfig
	state    CHState
	net      []CHNet
	devices  map[string]*chDevice // device tree NICs (booted only)
	slots    map[int]bool
	netSeq   int
	macSeq   int
	held     map[string]bool
	taps     map[string]chTap
	removes  map[string]int
	renotify map[string]int
	// files are the TAP fds of config.net entries that came with fds
	// (the preserved originals; vmm/src/api/http/http_endpoint.rs
	// attach_fds_to_cfg keeps them with the NetConfig).
	files map[string][]*os.File
}

// NewCH starts a simulator on a socket in a temporary directory; it stops
// when the test ends.
func NewCH(t testing.TB, cfg CHConfig) *CH {
	t.Helper()
	s, err := StartCH(socketFor(t, "ch.sock"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// StartCH starts a simulator on socket. Close it when done.
func StartCH(socket string, cfg CHConfig) (*CH, error) {
	if cfg.Version == 0 {
		cfg.Version = 53
	}
	if cfg.State == "" {
		cfg.State = CHRunning
	}
	if cfg.BootVCPUs == 0 {
		cfg.BootVCPUs = 2
	}
	spec, specErr, err := specFor(openapi.CloudHypervisorSpec, cfg.NoSpec, func(s *openapi.Spec) error { return CHSpecSetup(s) })
	if err != nil {
		return nil, err
	}
	c := &CH{
		cfg: cfg, state: cfg.State,
		devices: map[string]*chDevice{}, slots: map[int]bool{},
		held: map[string]bool{}, taps: map[string]chTap{}, removes: map[string]int{}, renotify: map[string]int{},
		files: map[string][]*os.File{},
	}
	srv, err := newServer("cloud-hypervisor", socket, spec, specErr, nil)
	if err != nil {
		return nil, err
	}
	srv.handle = c.handle
	srv.takesFds = true
	c.server = srv
	return c, nil
}

// Close stops the simulator as a VMM process ends: its socket goes, and
// every TAP fd it was handed is closed.
func (c *CH) Close() error {
	err := c.server.Close()
	c.mu.Lock()
	c.closeFiles()
	c.mu.Unlock()
	return err
}

// closeFiles closes every TAP fd the VMM holds (mu held).
func (c *CH) closeFiles() {
	for id, f := range c.files {
		closeAll(f)
		delete(c.files, id)
	}
	for _, d := range c.devices {
		closeAll(d.files)
		d.files = nil
	}
}

// --- test accessors ---

// State returns the VM state.
func (c *CH) State() CHState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Net returns config.net (what vm.info lists as the VM's NICs).
func (c *CH) Net() []CHNet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]CHNet(nil), c.net...)
}

// Devices returns the NIC ids in the device tree, sorted (removed ones stay
// until ejected).
func (c *CH) Devices() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ejectDue()
	ids := make([]string, 0, len(c.devices))
	for id := range c.devices {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// RemoveRequests counts the remove-device requests received for id.
func (c *CH) RemoveRequests(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.removes[id]
}

// Renotified counts harmless second removes (≤ v48, main) for id.
func (c *CH) Renotified(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.renotify[id]
}

// HoldTap makes a TAP busy as if another process had it open.
func (c *CH) HoldTap(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.held[name] = true
}

// AddTap makes a TAP exist in the VMM's netns with the given multi-queue
// flag, so CH's check_mq_support (net_util/src/open_tap.rs) compares it with
// the NIC's queue pairs. TAPs not added this way do not exist in sysfs and
// are not checked, as upstream skips the check for a missing sysfs entry.
func (c *CH) AddTap(name string, multiQueue bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.taps[name] = chTap{multiQueue: multiQueue}
}

// Pause pauses a running VM (as vm.pause would).
func (c *CH) Pause() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == CHRunning {
		c.state = CHPaused
	}
}

// Resume resumes a paused VM (as vm.resume would).
func (c *CH) Resume() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == CHPaused {
		c.state = CHRunning
	}
}

// SetEjectDelay changes the eject delay for later removals.
func (c *CH) SetEjectDelay(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cfg.EjectDelay = d
}

// Eject makes the guest eject a removed device now.
func (c *CH) Eject(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := c.devices[id]; d != nil && d.removed {
		c.drop(id)
	}
}

// Create moves a not-created VMM to Created (as vm.create would).
func (c *CH) Create() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state == CHNotCreated {
		c.state = CHCreated
	}
}

// Boot boots a created VM: every configured NIC becomes a device.
func (c *CH) Boot() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if msgs := c.boot(); msgs != nil {
		return fmt.Errorf("%s", strings.Join(msgs, ": "))
	}
	return nil
}

// --- VMM logic (runs under mu) ---

func (c *CH) boot() []string {
	if c.state != CHCreated {
		return []string{"Error from API", "The VM could not boot", "VM is not created or already booted"}
	}
	for _, n := range c.net {
		if msgs := c.openTap(n, n.MTU > 0); msgs != nil {
			return append([]string{"Error from API", "The VM could not boot", "Error from device manager"}, msgs[3:]...)
		}
	}
	for _, n := range c.net {
		c.attach(n)
	}
	c.state = CHRunning
	return nil
}

func (c *CH) booted() bool {
	return c.state == CHRunning || c.state == CHPaused
}

// ejectDue lets the guest eject the removed devices whose time has come. A
// paused guest runs no vCPU, so it handles no ACPI notification and ejects
// nothing until it is resumed (the eject is the guest's _EJ0 call that
// reaches DeviceManager::eject_device, vmm/src/device_manager.rs).
func (c *CH) ejectDue() {
	if c.state != CHRunning {
		return
	}
	now := time.Now()
	for id, d := range c.devices {
		if d.removed && !d.never && !d.missed && !now.Before(d.ejectAt) {
			c.drop(id)
		}
	}
}

func (c *CH) drop(id string) {
	if d := c.devices[id]; d != nil {
		closeAll(d.files)
		var slot int
		fmt.Sscanf(d.bdf, "0000:00:%02x.0", &slot)
		delete(c.slots, slot)
		delete(c.devices, id)
	}
}

func (c *CH) attach(n CHNet) *chDevice {
	slot := 6
	for c.slots[slot] {
		slot++
	}
	c.slots[slot] = true
	d := &chDevice{net: n, bdf: fmt.Sprintf("0000:00:%02x.0", slot)}
	c.devices[n.ID] = d
	return d
}

// openTap fails like CH's open_tap (net_util/src/open_tap.rs) and the
// kernel's TUNSETIFF (drivers/net/tun.c tun_set_iff/tun_attach) would:
//   - check_mq_support: a TAP that exists with IFF_MULTI_QUEUE while the NIC
//     has one queue pair, or the other way round, is refused before any open;
//   - a single-queue TAP accepts one queue only: busy (EBUSY) while another
//     process or a not yet ejected device holds it; a multi-queue TAP
//     accepts further queues;
//   - SIOCSIFMTU when the NetConfig has mtu, which needs CAP_NET_ADMIN
//     (EPERM otherwise), whatever the value.
func (c *CH) openTap(n CHNet, mtuGiven bool) []string {
	pre := []string{"Error from API", "The network device could not be added to the VM", "Error from device manager",
		"Cannot create virtio-net device", "Failed to open taps"}
	if n.Fds > 0 {
		// The fds are queues the kernel already attached (checkFds): no
		// open by name, so no busy or multi-queue check here.
		if mtuGiven && !c.cfg.CapNetAdmin {
			return append(pre, "Setting MTU failed", "Ioctl failed (35106)", "Operation not permitted (os error 1)")
		}
		return nil
	}
	wantMQ := n.NumQueues/2 > 1
	tap, exists := c.taps[n.Tap]
	switch {
	case exists && tap.multiQueue && !wantMQ:
		return append(pre, "Error related to the multiqueue support (no support device side)")
	case exists && !tap.multiQueue && wantMQ:
		return append(pre, "Error related to the multiqueue support (no support TAP side)")
	}
	mq := wantMQ
	if exists {
		mq = tap.multiQueue
	}
	busy := c.held[n.Tap]
	for _, d := range c.devices {
		if d.net.Tap == n.Tap {
			busy = true
		}
	}
	if busy && !mq {
		return append(pre, "Open tap device failed", "Unable to configure tap interface", "Device or resource busy (os error 16)")
	}
	if mtuGiven && !c.cfg.CapNetAdmin {
		// SIOCSIFMTU = 0x8922; TapError::IoctlError shows the request number.
		return append(pre, "Setting MTU failed", "Ioctl failed (35106)", "Operation not permitted (os error 1)")
	}
	return nil
}

// status maps an error class to the version's HTTP status (reference §1.2).
func (c *CH) status(class string) int {
	v := c.cfg.Version
	switch class {
	case "bad-request":
		return http.StatusBadRequest
	case "not-created":
		if v >= 53 {
			return http.StatusNotFound
		}
	case "no-device":
		if v >= CHMain {
			return http.StatusNotFound
		}
	case "config-duplicate":
		if v >= CHMain {
			return http.StatusConflict
		}
	case "config-invalid":
		if v >= CHMain {
			return http.StatusBadRequest
		}
	}
	return http.StatusInternalServerError
}

func (c *CH) fail(w *reply, class string, msgs ...string) {
	w.json(c.status(class), jsonList(msgs...))
}

var chEndpoints = map[string]string{
	"vmm.ping": http.MethodGet, "vm.info": http.MethodGet, "vm.counters": http.MethodGet,
	"vm.add-net": http.MethodPut, "vm.remove-device": http.MethodPut, "vm.boot": http.MethodPut,
	"vm.create": http.MethodPut, "vm.shutdown": http.MethodPut, "vm.delete": http.MethodPut,
	"vmm.shutdown": http.MethodPut, "vm.pause": http.MethodPut, "vm.resume": http.MethodPut,
	"vm.restore": http.MethodPut,
}

func (c *CH) handle(w *reply, r *http.Request, body []byte) {
	c.ejectDue()
	ep, ok := strings.CutPrefix(r.URL.Path, "/api/v1/")
	want, known := chEndpoints[ep]
	if !ok || !known {
		w.empty(http.StatusNotFound)
		return
	}
	if r.Method != want {
		c.fail(w, "bad-request", fmt.Sprintf("Invalid HTTP method %s for %s", r.Method, ep))
		return
	}
	hasBody := len(strings.TrimSpace(string(body))) > 0
	switch ep {
	case "vmm.ping":
		resp, _ := json.Marshal(map[string]any{
			"build_version": fmt.Sprintf("v%d.0", c.cfg.Version),
			"version":       fmt.Sprintf("%d.0.0", c.cfg.Version),
			"pid":           os.Getpid(),
			"features":      []string{"kvm"},
		})
		w.json(http.StatusOK, resp)
	case "vm.info":
		if c.state == CHNotCreated {
			c.fail(w, "not-created", "Error from API", "The VM information could not be retrieved", "VM is not created")
			return
		}
		w.json(http.StatusOK, c.info())
	case "vm.counters":
		w.json(http.StatusOK, []byte(`{}`))
	case "vm.add-net":
		c.addNet(w, body)
	case "vm.create":
		// vm.create takes no fds: the handler drops them
		// (http_endpoint.rs, "vm.create does not accept fds").
		closeAll(w.files)
		w.files = nil
		c.create(w)
	case "vm.remove-device":
		c.removeDevice(w, body)
	case "vm.boot":
		if hasBody {
			c.fail(w, "bad-request", "This endpoint does not take a body")
			return
		}
		if c.state == CHNotCreated {
			c.fail(w, "not-created", "Error from API", "The VM could not boot", "VM is not created")
			return
		}
		if msgs := c.boot(); msgs != nil {
			c.fail(w, "other", msgs...)
			return
		}
		w.empty(http.StatusNoContent)
	case "vm.restore":
		c.restore(w, body)
	case "vm.pause", "vm.resume", "vm.shutdown", "vm.delete":
		if hasBody {
			c.fail(w, "bad-request", "This endpoint does not take a body")
			return
		}
		c.lifecycle(w, ep)
	default:
		w.empty(http.StatusNoContent)
	}
}

func (c *CH) create(w *reply) {
	if c.state != CHNotCreated {
		c.fail(w, "other", "Error from API", "The VM could not be created", "The VM is already created")
		return
	}
	c.state = CHCreated
	w.empty(http.StatusNoContent)
}

// lifecycle serves vm.pause, vm.resume, vm.shutdown and vm.delete as
// vmm/src/lib.rs does (vm_pause, vm_resume, vm_shutdown, vm_delete; the
// state rules are VmState::valid_transition in vmm/src/vm.rs):
//   - pause: Running → Paused; resume: Paused → Running; otherwise
//     "VM is not running" without a VM, InvalidStateTransition with one.
//   - shutdown: the booted VM is dropped (VmOwnership::None): its devices
//     and TAP queues are released, the config (with its NICs) stays and
//     vm.info reports "Created", so vm.boot can boot it again.
//   - delete: shuts a booted VM down first, then drops the config; deleting
//     when there is no VM is a no-op success.
func (c *CH) lifecycle(w *reply, ep string) {
	tops := map[string]string{
		"vm.pause": "The VM could not be paused", "vm.resume": "The VM could not resume",
		"vm.shutdown": "The VM could not shutdown", "vm.delete": "The VM could not be deleted",
	}
	top := tops[ep]
	switch ep {
	case "vm.pause", "vm.resume":
		from, to := CHRunning, CHPaused
		if ep == "vm.resume" {
			from, to = CHPaused, CHRunning
		}
		switch {
		case !c.booted():
			c.fail(w, "other", "Error from API", top, "VM is not running")
			return
		case c.state != from:
			// VmError::Pause/Resume wrapping Error::InvalidStateTransition.
			verb := map[string]string{"vm.pause": "Cannot pause VM", "vm.resume": "Cannot resume VM"}[ep]
			c.fail(w, "other", "Error from API", top, verb, fmt.Sprintf("invalid VM state transition: %s to %s", c.state, to))
			return
		}
		c.state = to
	case "vm.shutdown":
		if !c.booted() {
			c.fail(w, "other", "Error from API", top, "VM is not running")
			return
		}
		c.shutdown()
	case "vm.delete":
		if c.state == CHNotCreated {
			break
		}
		if c.booted() {
			c.shutdown()
		}
		c.net = nil
		for id, f := range c.files {
			closeAll(f)
			delete(c.files, id)
		}
		c.state = CHNotCreated
	}
	w.empty(http.StatusNoContent)
}

// shutdown drops the running VM: every device (and so every TAP queue) goes,
// pending removals included; the config stays.
func (c *CH) shutdown() {
	for id := range c.devices {
		c.drop(id)
	}
	c.state = CHCreated
}

// chNetBody is NetConfig as the server reads it: unknown fields ignored.
type chNetBody struct {
	Tap       *string `json:"tap"`
	IP        *string `json:"ip"`
	Mask      *string `json:"mask"`
	MAC       *string `json:"mac"`
	MTU       *int    `json:"mtu"`
	NumQueues *int    `json:"num_queues"`
	QueueSize *int    `json:"queue_size"`
	ID        *string `json:"id"`
}

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func (c *CH) addNet(w *reply, body []byte) {
	const top = "The network device could not be added to the VM"
	var b chNetBody
	if err := json.Unmarshal(body, &b); err != nil {
		c.fail(w, "bad-request", "Error from API", "Failed to deserialize the request body", err.Error())
		return
	}
	if c.state == CHNotCreated {
		c.fail(w, "not-created", "Error from API", top, "VM is not created")
		return
	}
	n := CHNet{
		ID: deref(b.ID, ""), Tap: deref(b.Tap, ""), MAC: deref(b.MAC, ""),
		IP: deref(b.IP, ""), Mask: deref(b.Mask, ""), MTU: deref(b.MTU, 0),
		NumQueues: deref(b.NumQueues, 2), QueueSize: deref(b.QueueSize, 256),
	}
	if c.cfg.Version <= 48 {
		if n.IP == "" {
			n.IP = "192.168.249.1"
		}
		if n.Mask == "" {
			n.Mask = "255.255.255.0"
		}
	}
	invalid := func(msg string) {
		c.fail(w, "config-invalid", "Error from API", top, "Error validating configuration", msg)
	}
	files := w.files
	n.Fds = len(files)
	switch {
	case len(files) > 0 && len(files)*2 != n.NumQueues:
		// vmm/src/config.rs NetConfig::validate: with fds,
		// fds.len() * 2 must equal num_queues (VnetQueueFdMismatch).
		invalid("Number of queues to virtio_net does not match the number of input FDs")
		return
	case n.NumQueues < 2:
		invalid("Number of queues to virtio_net is less than 2")
		return
	case n.NumQueues/2 > c.cfg.BootVCPUs:
		invalid("Number of queues to virtio_net exceeds the number of vCPUs")
		return
	case c.cfg.Version >= 49 && (n.IP == "") != (n.Mask == ""):
		invalid("IP address provided without a netmask, or the other way round")
		return
	case b.MTU != nil && n.MTU < chMinMTU:
		// vmm/src/config.rs NetConfig::validate, ValidationError::InvalidMtu;
		// MIN_MTU is virtio-devices/src/net.rs's 1280.
		invalid(fmt.Sprintf("Provided MTU %d is lower than 1280 (expected by VIRTIO specification)", n.MTU))
		return
	case strings.HasPrefix(n.ID, "__"):
		invalid(fmt.Sprintf("Identifier %s is reserved", n.ID))
		return
	}
	if n.ID != "" {
		for _, e := range c.net {
			if e.ID == n.ID {
				c.fail(w, "config-duplicate", "Error from API", top, "Error validating configuration", fmt.Sprintf("Identifier %s is not unique", n.ID))
				return
			}
		}
		if _, inTree := c.devices[n.ID]; inTree {
			c.fail(w, "other", "Error from API", top, "Error from device manager", fmt.Sprintf("Identifier %s is not unique", n.ID))
			return
		}
	} else {
		for {
			n.ID = fmt.Sprintf("_net%d", c.netSeq)
			c.netSeq++
			if _, used := c.devices[n.ID]; !used && !c.hasNet(n.ID) {
				break
			}
		}
	}
	if n.MAC == "" {
		c.macSeq++
		n.MAC = fmt.Sprintf("52:54:00:00:00:%02x", c.macSeq&0xff)
	}
	if len(files) > 0 {
		// Net::from_tap_fds (virtio-devices/src/net.rs) learns the name of
		// each fd by TUNGETIFF and re-issues TUNSETIFF with the flags of
		// the queue count; a fd that is not a TAP queue, or of another
		// TAP, fails device creation. The simulator checks the same on the
		// fds it received, with the real ioctl.
		if msgs := c.checkFds(&n, files); msgs != nil {
			c.fail(w, "other", msgs...)
			return
		}
	}
	if !c.booted() {
		c.net = append(c.net, n) // cold add: no TAP opened until boot
		c.keepFiles(w, n.ID)
		w.empty(http.StatusNoContent)
		return
	}
	if msgs := c.openTap(n, b.MTU != nil); msgs != nil {
		c.fail(w, "other", msgs...)
		return
	}
	d := c.attach(n)
	c.net = append(c.net, n)
	c.keepFiles(w, n.ID)
	resp, _ := json.Marshal(map[string]string{"id": n.ID, "bdf": d.bdf})
	w.json(http.StatusOK, resp)
}

// keepFiles makes the request's fds the preserved fds of NIC id.
func (c *CH) keepFiles(w *reply, id string) {
	if len(w.files) > 0 {
		c.files[id] = w.files
		w.files = nil
	}
}

// checkFds checks the TAP fds of n as Net::from_tap_fds would use them:
// every fd a TAP queue (TUNGETIFF), all of one TAP, multi-queue exactly
// when n has more than one queue pair (the TUNSETIFF CH re-issues with
// IFF_MULTI_QUEUE fails on a single-queue TAP, and a single-queue request
// on a multi-queue TAP). It sets n.Tap to the name learned.
func (c *CH) checkFds(n *CHNet, files []*os.File) []string {
	pre := []string{"Error from API", "The network device could not be added to the VM", "Error from device manager",
		"Cannot create virtio-net device", "Failed to open taps"}
	wantMQ := n.NumQueues/2 > 1
	name := ""
	for i, f := range files {
		got, flags, err := tapQueueInfo(f)
		if err != nil {
			return append(pre, "Unable to get the TAP interface name", fmt.Sprintf("fd %d: %v", i, err))
		}
		if flags&unix.IFF_TAP == 0 {
			return append(pre, fmt.Sprintf("fd %d (%s) is not a TAP (flags %#x)", i, got, flags))
		}
		if mq := flags&unix.IFF_MULTI_QUEUE != 0; mq != wantMQ {
			side := "TAP"
			if mq {
				side = "device"
			}
			return append(pre, fmt.Sprintf("Error related to the multiqueue support (no support %s side)", side))
		}
		if name != "" && got != name {
			return append(pre, fmt.Sprintf("fds of different TAPs (%s, %s)", name, got))
		}
		name = got
	}
	n.Tap = name
	return nil
}

func (c *CH) hasNet(id string) bool {
	for _, e := range c.net {
		if e.ID == id {
			return true
		}
	}
	return false
}

func (c *CH) dropNet(id string) {
	// remove-device closes the preserved fds at once (PR #7371); a device
	// the guest has not ejected yet keeps its own copies (d.files).
	if d := c.devices[id]; d != nil {
		d.files = append(d.files, c.files[id]...)
	} else {
		closeAll(c.files[id])
	}
	delete(c.files, id)
	out := c.net[:0]
	for _, e := range c.net {
		if e.ID != id {
			out = append(out, e)
		}
	}
	c.net = out
}

func (c *CH) removeDevice(w *reply, body []byte) {
	const top = "The device could not be removed from the VM"
	var b struct {
		ID *string `json:"id"`
	}
	if err := json.Unmarshal(body, &b); err != nil || b.ID == nil {
		msg := "missing field `id`"
		if err != nil {
			msg = err.Error()
		}
		c.fail(w, "bad-request", "Error from API", "Failed to deserialize the request body", msg)
		return
	}
	id := *b.ID
	c.removes[id]++
	if c.state == CHNotCreated {
		c.fail(w, "not-created", "Error from API", top, "VM is not created")
		return
	}
	if !c.booted() {
		// Config-only edit before boot.
		if !c.hasNet(id) {
			// vmm/src/lib.rs vm_remove_device → VmError::NoDeviceToRemove,
			// "No device with id {0:?} to remove" (vmm/src/vm.rs).
			c.fail(w, "no-device", "Error from API", top, fmt.Sprintf("No device with id %q to remove", id))
			return
		}
		c.dropNet(id)
		w.empty(http.StatusNoContent)
		return
	}
	d := c.devices[id]
	if d == nil {
		c.fail(w, "no-device", "Error from API", top, "Error from device manager", c.unknownDevice(id))
		return
	}
	if d.removed { // second remove while the eject is pending
		switch v := c.cfg.Version; {
		case v >= 49 && v <= 52:
			// PR #8559: virtio-net removal unwraps the config entry that
			// the first remove already dropped.
			w.die = fmt.Sprintf("second vm.remove-device for %q while its eject was pending: the VMM thread panicked (v%d, unwrap on a missing config entry)", id, v)
			c.closeFiles() // a dead process's fds close with it
		case v == 53:
			// Commit 5b53f4202 "vmm: Reject removal of already removed
			// devices" (first in v53.0): UnknownDeviceId, HTTP 500.
			c.fail(w, "other", "Error from API", top, "Error from device manager", c.unknownDevice(id))
		default:
			// ≤ v48, and main from commit 35b9703e1 (2026-08-18, not in any
			// release up to v53.0): DeviceManager::remove_device sets the
			// PCI "down" bit and notifies the guest again.
			c.renotify[id]++
			c.notifyRemove(d)
			w.empty(http.StatusNoContent)
		}
		return
	}
	d.removed = true
	c.notifyRemove(d)
	d.missed = c.cfg.IgnoreFirstNotify
	c.dropNet(id)
	w.empty(http.StatusNoContent)
}

// notifyRemove is the ACPI GED notification of a removal: the guest ejects
// the device after EjectDelay (never when it is negative).
func (c *CH) notifyRemove(d *chDevice) {
	d.missed = false
	if c.cfg.EjectDelay < 0 {
		d.never = true
		return
	}
	d.ejectAt = time.Now().Add(c.cfg.EjectDelay)
}

// unknownDevice is DeviceManagerError::UnknownDeviceId's message
// (vmm/src/device_manager.rs): the id is part of it from v53.0 on.
func (c *CH) unknownDevice(id string) string {
	if c.cfg.Version >= 53 {
		return "Failed to find device corresponding to the given identifier: " + id
	}
	return "Failed to find device corresponding to the given identifier"
}

// info renders vm.info the way the server does.
func (c *CH) info() []byte {
	nets := make([]map[string]any, 0, len(c.net))
	for _, n := range c.net {
		m := map[string]any{
			"tap": n.Tap, "mac": n.MAC, "iommu": false, "num_queues": n.NumQueues,
			"queue_size": n.QueueSize, "vhost_user": false, "vhost_mode": "Client",
			"id": n.ID, "pci_segment": 0,
		}
		if n.IP != "" {
			m["ip"], m["mask"] = n.IP, n.Mask
		}
		if n.MTU > 0 {
			m["mtu"] = n.MTU
		}
		if c.cfg.Version >= 50 {
			m["offload_tso"], m["offload_ufo"], m["offload_csum"] = true, true, true
		}
		nets = append(nets, m)
	}
	const mem = 512 << 20
	info := map[string]any{
		"config": map[string]any{
			"cpus":    map[string]any{"boot_vcpus": c.cfg.BootVCPUs, "max_vcpus": c.cfg.BootVCPUs},
			"memory":  map[string]any{"size": mem},
			"payload": map[string]any{"kernel": "/simulated/vmlinux", "cmdline": "console=hvc0"},
			"net":     nets,
		},
		"state":              string(c.state),
		"memory_actual_size": mem,
	}
	if c.booted() {
		tree := map[string]any{
			"__rng":             map[string]any{"id": "__rng", "resources": []any{}, "parent": "_virtio-pci-__rng", "children": []string{}},
			"_virtio-pci-__rng": map[string]any{"id": "_virtio-pci-__rng", "resources": []any{}, "children": []string{"__rng"}, "pci_bdf": "0000:00:01.0"},
		}
		for id, d := range c.devices {
			pid := "_virtio-pci-" + id
			tree[id] = map[string]any{"id": id, "resources": []any{}, "parent": pid, "children": []string{}}
			tree[pid] = map[string]any{"id": pid, "resources": []any{map[string]any{"PciBar": map[string]any{"index": 0}}}, "children": []string{id}, "pci_bdf": d.bdf}
		}
		info["device_tree"] = tree
	}
	b, _ := json.Marshal(info)
	return b
}
