// Package qemu is the vmmadapter for QEMU, over QMP (the QEMU Machine
// Protocol) on a unix socket (-qmp unix:PATH,server=on,wait=off).
//
// A NIC is a tap netdev ("netdev-<id>", vhost off, script=no) plus a
// virtio-net-pci device ("<id>"). The netdev opens the TAP by name, or,
// when the NIC carries its TAP's queue fds, takes them: each is passed with
// getfd over the QMP socket (SCM_RIGHTS), then netdev_add names them in
// fd=/fds=, so QEMU needs no /dev/net/tun, no CAP_NET_ADMIN and need not be
// in the TAP's netns. Before the guest runs (QEMU started with
// -S) adding one is a cold attach that the firmware enumerates at boot; once
// it runs, QEMU hot-plugs it (ACPI or PCIe hotplug). Removal is device_del,
// a bounded wait for DEVICE_DELETED (the guest ejects the device), then
// netdev_del. Before the guest runs, removal is refused (ErrRemoveBeforeBoot):
// QEMU would wait for a guest eject that never comes.
//
// QEMU serves one QMP client per socket at a time: an adapter holds the
// connection until Close, and a second client meanwhile gets no greeting
// (a bounded error here, never a hang).
//
// Placement: device_add without bus= puts a device on the machine's first
// PCI bus. On pc (i440fx) that is pci.0, which takes ACPI hot-plug; on q35
// it is pcie.0, a root complex that refuses hot-plug ("Bus 'pcie.0' does
// not support hotplugging", hw/pci/pcie.c / qdev_device_add). So a NIC goes
// onto a free PCIe root port (a pcie-root-port with nothing behind it,
// found through qom-list and query-pci) whenever the machine has one, cold
// or hot, so that it can be unplugged later; a hot-add on a PCIe machine
// without a free root port fails with ErrNoFreeRootPort. Launchers reserve
// root ports with RootPortArgs (vmnicctl vmm-args --kind qemu
// --root-ports N), as Kata Containers does with its pcie_root_port setting.
//
// Unplug: QEMU refuses a second device_del while the first is pending
// ("already in the process of unplug", system/qdev-monitor.c
// qmp_device_del) until pending_deleted_expires_ms, which the PCIe and ACPI
// hot-plug paths set 5 s after the request (hw/pci/pcie.c
// pcie_cap_slot_unplug_request_cb, hw/acpi/pcihp.c); after that QEMU
// expects management to ask again, so RemoveNIC re-sends device_del every
// unplugResend while it waits.
package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/internal/sockdial"
)

const (
	// removePoll is how often RemoveNIC also looks at the device tree while
	// it waits for DEVICE_DELETED (covers a reconnect or an earlier device_del).
	removePoll = time.Second
	// unplugResend is QEMU's pending-unplug expiry (5 s of virtual time)
	// plus a margin: device_del is sent again after it.
	unplugResend = 5500 * time.Millisecond
)

// ErrNoFreeRootPort: the machine's root bus is PCI Express (q35), which
// takes no hot-plugged device, and every PCIe root port is taken.
var ErrNoFreeRootPort = errors.New("no free PCIe root port to hot-plug the NIC into (the q35 root bus pcie.0 does not take hot-plugged devices); start QEMU with spare root ports (vmnicctl vmm-args --kind qemu --root-ports N)")

// ErrRemoveBeforeBoot: QEMU has not started the guest (-S, status
// prelaunch). It removes a PCI device only when the guest ejects it, and a
// device_del sent now is never completed, so RemoveNIC refuses; remove the
// NIC once the guest runs, or start QEMU without it.
var ErrRemoveBeforeBoot = errors.New("the guest has not started: QEMU can remove a NIC only once the guest runs")

// Adapter drives one QEMU through its QMP socket. It is safe for concurrent
// use; commands share one connection and are told apart by their ids.
type Adapter struct {
	socket string
	opts   vmmadapter.Options
	resend time.Duration // device_del is sent again after this; unplugResend

	mu     sync.Mutex
	qc     *conn
	closed bool
}

var _ vmmadapter.Adapter = (*Adapter)(nil)

// New connects to the QMP socket of a QEMU and negotiates capabilities,
// bounded by opts.CallTimeout. A missing socket or a refused connection
// wraps vmmadapter.ErrUnavailable. If the connection is lost later, the next
// call reconnects.
func New(socket string, opts vmmadapter.Options) (vmmadapter.Adapter, error) {
	return Open(socket, opts)
}

// Open is New returning the concrete type (for Execute).
func Open(socket string, opts vmmadapter.Options) (*Adapter, error) {
	if socket == "" {
		return nil, errors.New("qemu: no QMP socket path")
	}
	opts = opts.WithDefaults()
	a := &Adapter{socket: socket, opts: opts, resend: unplugResend}
	ctx, cancel := context.WithTimeout(context.Background(), opts.CallTimeout)
	defer cancel()
	if _, err := a.conn(ctx); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	return a, nil
}

// conn returns the live connection, dialling a new one if needed.
func (a *Adapter) conn(ctx context.Context) (*conn, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, errors.New("adapter is closed")
	}
	if a.qc != nil && a.qc.failed() == nil {
		return a.qc, nil
	}
	qc, err := dial(ctx, a.socket, a.opts)
	if err != nil {
		return nil, err
	}
	a.qc = qc
	return qc, nil
}

// Execute runs one QMP command with the adapter's per-call timeout and
// decodes its return value into out (when non-nil). Error replies are *Error.
func (a *Adapter) Execute(ctx context.Context, cmd string, args, out any) error {
	ctx, cancel := context.WithTimeout(ctx, a.opts.CallTimeout)
	defer cancel()
	qc, err := a.conn(ctx)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return qc.execute(ctx, cmd, args, out)
}

// Close drops the QMP connection.
func (a *Adapter) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.qc != nil {
		a.qc.close()
	}
	return nil
}

// Info reports the QEMU version and whether the guest has started. QEMU can
// always hot-plug PCI devices, so HotAdd and HotRemove are true. QMP has no
// command that names QEMU's process, so PID is the peer of the QMP
// connection (SO_PEERCRED): recorded at attach, it is the process TAP fds
// may later be sent to (Options.PeerPID).
func (a *Adapter) Info(ctx context.Context) (vmmadapter.Info, error) {
	var v struct {
		QEMU struct{ Major, Minor, Micro int } `json:"qemu"`
	}
	if err := a.Execute(ctx, "query-version", nil, &v); err != nil {
		return vmmadapter.Info{}, fmt.Errorf("qemu info: %w", err)
	}
	booted, err := a.booted(ctx)
	if err != nil {
		return vmmadapter.Info{}, fmt.Errorf("qemu info: %w", err)
	}
	pid := 0
	if qc, err := a.conn(ctx); err == nil {
		pid = qc.peerPID
	}
	return vmmadapter.Info{
		Kind:      vmmadapter.QEMU,
		Version:   fmt.Sprintf("%d.%d.%d", v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro),
		PID:       pid,
		Booted:    booted,
		HotAdd:    true,
		HotRemove: true,
	}, nil
}

// booted: the guest has started running (not waiting in -S or for an
// incoming migration).
func (a *Adapter) booted(ctx context.Context) (bool, error) {
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := a.Execute(ctx, "query-status", nil, &st); err != nil {
		return false, err
	}
	switch st.Status {
	case "prelaunch", "inmigrate":
		return false, nil
	case "":
		return st.Running, nil
	}
	return true, nil
}

// AddNIC adds a tap netdev and a virtio-net-pci device on it. The device id
// is SanitizeID(nic.ID) (nic.Tap when ID is empty). If device_add fails the
// netdev is deleted again.
func (a *Adapter) AddNIC(ctx context.Context, nic vmmadapter.NIC) (vmmadapter.Attachment, error) {
	if nic.Tap == "" {
		return vmmadapter.Attachment{}, errors.New("qemu add nic: no tap name")
	}
	if nic.MAC != "" {
		if hw, err := net.ParseMAC(nic.MAC); err != nil || len(hw) != 6 {
			return vmmadapter.Attachment{}, fmt.Errorf("qemu add nic: bad MAC %q", nic.MAC)
		}
	}
	if err := vmmadapter.ValidateNIC(vmmadapter.QEMU, nic); err != nil {
		return vmmadapter.Attachment{}, err
	}
	if len(nic.Fds) > maxFds {
		return vmmadapter.Attachment{}, fmt.Errorf("qemu add nic: %d TAP fds: at most %d", len(nic.Fds), maxFds)
	}
	id := nicID(nic)
	fail := func(err error) (vmmadapter.Attachment, error) {
		return vmmadapter.Attachment{}, fmt.Errorf("qemu add nic %s (tap %s): %w", id, nic.Tap, err)
	}
	booted, err := a.booted(ctx)
	if err != nil {
		return fail(err)
	}
	devs, err := a.peripherals(ctx)
	if err != nil {
		return fail(err)
	}
	if typ, ok := devs[id]; ok {
		return fail(fmt.Errorf("%w (by a %s; a removed NIC stays until the guest ejects it)", vmmadapter.ErrDeviceIDInUse, typ))
	}
	bus, err := a.placeNIC(ctx, booted, devs)
	if err != nil {
		return fail(err)
	}

	err = a.netdevAdd(ctx, id, nic)
	var qe *Error
	if errors.As(err, &qe) && strings.Contains(qe.Desc, "Duplicate") {
		// A netdev of ours without its device: left by an interrupted add.
		if derr := a.Execute(ctx, "netdev_del", map[string]any{"id": NetdevID(id)}, nil); derr == nil {
			err = a.netdevAdd(ctx, id, nic)
		}
	}
	if err != nil {
		if errors.As(err, &qe) && strings.Contains(qe.Desc, "Device or resource busy") {
			// net/tap-linux.c tap_open: TUNSETIFF on a single-queue TAP
			// another process holds.
			err = fmt.Errorf("%w: %w", vmmadapter.ErrTapBusy, err)
		}
		return fail(err)
	}
	dargs := deviceArgs(id, nic)
	if bus != "" {
		dargs["bus"] = bus
	}
	if err := a.Execute(ctx, "device_add", dargs, nil); err != nil {
		switch {
		case booted && errors.As(err, &qe) && strings.Contains(qe.Desc, "hotplug"):
			err = fmt.Errorf("%w: %w", vmmadapter.ErrHotplugUnsupported, err)
		case errors.As(err, &qe) && strings.Contains(qe.Desc, "Duplicate"):
			err = fmt.Errorf("%w: %w", vmmadapter.ErrDeviceIDInUse, err)
		}
		// Roll back even when ctx has ended.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opts.CallTimeout)
		defer cancel()
		if derr := a.Execute(rctx, "netdev_del", map[string]any{"id": NetdevID(id)}, nil); derr != nil {
			err = errors.Join(err, fmt.Errorf("roll back: %w", derr))
		}
		return fail(err)
	}
	att := vmmadapter.Attachment{ID: id, Hot: booted}
	att.BDF, _ = a.bdf(ctx, id) // informational; the NIC is attached either way
	return att, nil
}

// maxFds bounds the queue fds of one NIC (the kernel's MAX_TAP_QUEUES).
const maxFds = 256

// netdevAdd adds the tap netdev of nic: opened by name (ifname=), or on
// the TAP queue fds of nic.Fds, each first handed to QEMU with getfd over
// this QMP connection (SCM_RIGHTS) under FdName, then named in fd=/fds=
// (qapi/net.json NetdevTapOptions; net/tap.c takes the named fds from the
// monitor, monitor_fd_param, which removes them from its list). If
// netdev_add fails, the names still held are closed again (closefd), so
// QEMU keeps no stray copy.
func (a *Adapter) netdevAdd(ctx context.Context, id string, nic vmmadapter.NIC) error {
	if len(nic.Fds) == 0 {
		return a.Execute(ctx, "netdev_add", netdevArgs(id, nic), nil)
	}
	names := make([]string, 0, len(nic.Fds))
	closeNames := func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opts.CallTimeout)
		defer cancel()
		for _, n := range names {
			// "File descriptor named '…' not found" once netdev_add took it.
			_ = a.Execute(rctx, "closefd", map[string]any{"fdname": n}, nil)
		}
	}
	for q, f := range nic.Fds {
		name := FdName(id, q)
		if err := a.executeFile(ctx, "getfd", map[string]any{"fdname": name}, nil, f); err != nil {
			closeNames()
			return fmt.Errorf("hand TAP queue fd %d to QEMU: %w", q, err)
		}
		names = append(names, name)
	}
	if err := a.Execute(ctx, "netdev_add", netdevFdArgs(id, names), nil); err != nil {
		closeNames()
		return err
	}
	return nil
}

// executeFile is Execute with f passed along (SCM_RIGHTS). With
// Options.PeerPID set, f goes only over a connection whose peer is that
// process (SO_PEERCRED): another gets no fd and the call fails with
// vmmadapter.ErrPeerMismatch, as the Cloud Hypervisor path does.
func (a *Adapter) executeFile(ctx context.Context, cmd string, args, out any, f *os.File) error {
	ctx, cancel := context.WithTimeout(ctx, a.opts.CallTimeout)
	defer cancel()
	qc, err := a.conn(ctx)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	if f != nil {
		if err := sockdial.CheckPeer(qc.c, a.opts.PeerPID, a.socket); err != nil {
			return fmt.Errorf("qmp %s: check the peer: %w", cmd, err)
		}
	}
	return qc.executeFile(ctx, cmd, args, out, f)
}

// RemoveNIC deletes the device, waits (at most Options.RemoveTimeout) until
// QEMU reports DEVICE_DELETED or the device has left the tree, then deletes
// its netdev. An id QEMU does not have is not an error.
func (a *Adapter) RemoveNIC(ctx context.Context, id string) error {
	id = SanitizeID(id)
	fail := func(err error) error { return fmt.Errorf("qemu remove nic %s: %w", id, err) }
	devs, err := a.peripherals(ctx)
	if err != nil {
		return fail(err)
	}
	typ, ok := devs[id]
	if !ok {
		// Gone already; drop a netdev of ours that may have outlived it.
		a.deleteNetdev(ctx, NetdevID(id))
		return nil
	}
	if !isNIC(typ) {
		return fail(fmt.Errorf("device is a %s, not a network device", typ))
	}
	// Before the guest runs, device_del leaves an unplug request that the
	// guest never completes (the device then stays for good): refuse.
	booted, err := a.booted(ctx)
	if err != nil {
		return fail(err)
	}
	if !booted {
		return fail(ErrRemoveBeforeBoot)
	}
	netdev := NetdevID(id)
	var nd string
	if err := a.Execute(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + id, "property": "netdev"}, &nd); err == nil && nd != "" {
		netdev = nd
	}

	if err := a.unplug(ctx, id); err != nil {
		return fail(err)
	}
	if err := a.deleteNetdev(ctx, netdev); err != nil {
		return fail(err)
	}
	return nil
}

// unplug sends device_del and waits until the device is really gone.
func (a *Adapter) unplug(ctx context.Context, id string) error {
	cctx, cancel := context.WithTimeout(ctx, a.opts.CallTimeout)
	qc, err := a.conn(cctx)
	if err != nil {
		cancel()
		return fmt.Errorf("qmp device_del: %w", err)
	}
	sub := qc.subscribe(func(ev Event) bool {
		if ev.Name != "DEVICE_DELETED" {
			return false
		}
		var d struct {
			Device string `json:"device"`
		}
		return json.Unmarshal(ev.Data, &d) == nil && d.Device == id
	})
	defer qc.unsubscribe(sub)
	err = qc.execute(cctx, "device_del", map[string]any{"id": id}, nil)
	cancel()
	var qe *Error
	switch {
	case err == nil:
	case errors.As(err, &qe) && qe.Class == "DeviceNotFound":
		return nil // went away meanwhile
	case errors.As(err, &qe) && strings.Contains(qe.Desc, "in the process of unplug"):
		// An earlier device_del is still pending: keep waiting for it.
	default:
		return err
	}

	wctx, wcancel := context.WithTimeout(ctx, a.opts.RemoveTimeout)
	defer wcancel()
	gone := func(ctx context.Context) (bool, error) {
		devs, err := a.peripherals(ctx)
		if err != nil {
			return false, err
		}
		_, ok := devs[id]
		return !ok, nil
	}
	tick := time.NewTicker(min(removePoll, a.opts.RemoveTimeout/5))
	defer tick.Stop()
	lastSend := time.Now()
	for {
		select {
		case <-sub.ch:
			return nil
		case <-tick.C:
			if ok, err := gone(wctx); ok {
				return nil
			} else if errors.Is(err, vmmadapter.ErrUnavailable) {
				return fmt.Errorf("wait for DEVICE_DELETED: %w", err)
			}
			if time.Since(lastSend) >= a.resend {
				// The pending unplug has expired: ask again, as QEMU expects
				// (the guest may have missed the first notification).
				lastSend = time.Now()
				err := a.Execute(wctx, "device_del", map[string]any{"id": id}, nil)
				if errors.As(err, &qe) && qe.Class == "DeviceNotFound" {
					return nil
				}
			}
		case <-wctx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("wait for DEVICE_DELETED: %w", ctx.Err())
			}
			// One last look, in case the event was missed.
			lctx, lcancel := context.WithTimeout(ctx, a.opts.CallTimeout)
			ok, _ := gone(lctx)
			lcancel()
			if ok {
				return nil
			}
			return fmt.Errorf("guest did not release the device within %s (no DEVICE_DELETED; the unplug stays pending and a later remove waits for it again): %w",
				a.opts.RemoveTimeout, vmmadapter.ErrEjectTimeout)
		}
	}
}

// deleteNetdev removes a netdev; one that does not exist is not an error.
func (a *Adapter) deleteNetdev(ctx context.Context, id string) error {
	err := a.Execute(ctx, "netdev_del", map[string]any{"id": id}, nil)
	var qe *Error
	if errors.As(err, &qe) && (qe.Class == "DeviceNotFound" || strings.Contains(qe.Desc, "not found")) {
		return nil
	}
	return err
}

// NICs lists the ids of the network devices QEMU has (user-created devices
// with an id; pending removals included until QEMU deletes them).
func (a *Adapter) NICs(ctx context.Context) ([]string, error) {
	devs, err := a.peripherals(ctx)
	if err != nil {
		return nil, fmt.Errorf("qemu list nics: %w", err)
	}
	var ids []string
	for id, typ := range devs {
		if isNIC(typ) {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// peripherals maps the ids of user-created devices to their QOM type.
func (a *Adapter) peripherals(ctx context.Context) (map[string]string, error) {
	var props []struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	if err := a.Execute(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"}, &props); err != nil {
		return nil, err
	}
	devs := map[string]string{}
	for _, p := range props {
		if t, ok := strings.CutPrefix(p.Type, "child<"); ok {
			devs[p.Name] = strings.TrimSuffix(t, ">")
		}
	}
	return devs, nil
}

// nicTypes are QEMU NIC models other than virtio-net-*.
var nicTypes = map[string]bool{
	"e1000": true, "e1000e": true, "e1000-82544gc": true, "e1000-82545em": true,
	"igb": true, "rtl8139": true, "vmxnet3": true, "ne2k_pci": true, "pcnet": true,
}

func isNIC(typ string) bool {
	return strings.HasPrefix(typ, "virtio-net") || nicTypes[typ]
}

type pciDevice struct {
	Bus       int    `json:"bus"`
	Slot      int    `json:"slot"`
	Function  int    `json:"function"`
	QdevID    string `json:"qdev_id"`
	PCIBridge *struct {
		Bus struct {
			Number int `json:"number"`
		} `json:"bus"`
		Devices []pciDevice `json:"devices"`
	} `json:"pci_bridge"`
}

// bdf finds the PCI address of device id (domain 0) through query-pci.
func (a *Adapter) bdf(ctx context.Context, id string) (string, error) {
	var buses []struct {
		Bus     int         `json:"bus"`
		Devices []pciDevice `json:"devices"`
	}
	if err := a.Execute(ctx, "query-pci", nil, &buses); err != nil {
		return "", err
	}
	var find func([]pciDevice) (string, bool)
	find = func(devs []pciDevice) (string, bool) {
		for _, d := range devs {
			if d.QdevID == id {
				return fmt.Sprintf("0000:%02x:%02x.%x", d.Bus, d.Slot, d.Function), true
			}
			if d.PCIBridge != nil {
				if s, ok := find(d.PCIBridge.Devices); ok {
					return s, true
				}
			}
		}
		return "", false
	}
	for _, b := range buses {
		if s, ok := find(b.Devices); ok {
			return s, nil
		}
	}
	return "", fmt.Errorf("device %s not in query-pci", id)
}

// rootPortTypes are QEMU's PCIe root port models.
var rootPortTypes = map[string]bool{"pcie-root-port": true, "ioh3420": true}

// placeNIC returns the bus for a new NIC: a free PCIe root port when the
// machine has one (so the NIC can be unplugged later), "" for QEMU's
// default placement otherwise. A hot-add on a PCIe root complex (q35)
// without a free root port is ErrNoFreeRootPort.
func (a *Adapter) placeNIC(ctx context.Context, booted bool, devs map[string]string) (string, error) {
	var ports []string
	for id, typ := range devs {
		if rootPortTypes[typ] {
			ports = append(ports, id)
		}
	}
	sort.Strings(ports)
	if len(ports) > 0 {
		used, err := a.portsInUse(ctx)
		if err != nil {
			return "", err
		}
		for _, p := range ports {
			if !used[p] {
				return p, nil
			}
		}
	}
	if !booted {
		return "", nil // cold: the root bus takes it (it cannot be hot-removed on q35)
	}
	pcie, err := a.pcieRoot(ctx)
	if err != nil {
		return "", err
	}
	if pcie {
		return "", fmt.Errorf("%w (%d root ports, all in use)", ErrNoFreeRootPort, len(ports))
	}
	return "", nil
}

// portsInUse reports which bridges (by qdev id) have a device behind them.
func (a *Adapter) portsInUse(ctx context.Context) (map[string]bool, error) {
	var buses []struct {
		Devices []pciDevice `json:"devices"`
	}
	if err := a.Execute(ctx, "query-pci", nil, &buses); err != nil {
		return nil, err
	}
	used := map[string]bool{}
	var walk func([]pciDevice)
	walk = func(devs []pciDevice) {
		for _, d := range devs {
			if d.PCIBridge != nil {
				if d.QdevID != "" && len(d.PCIBridge.Devices) > 0 {
					used[d.QdevID] = true
				}
				walk(d.PCIBridge.Devices)
			}
		}
	}
	for _, b := range buses {
		walk(b.Devices)
	}
	return used, nil
}

// pcieRoot reports whether the machine's root bus is PCI Express: its
// host bridge is q35's (or ARM virt's GPEX), seen in qom-list /machine.
func (a *Adapter) pcieRoot(ctx context.Context) (bool, error) {
	var props []struct {
		Type string `json:"type"`
	}
	if err := a.Execute(ctx, "qom-list", map[string]any{"path": "/machine"}, &props); err != nil {
		var qe *Error
		if errors.As(err, &qe) {
			return false, nil // cannot tell: let device_add decide
		}
		return false, err
	}
	for _, p := range props {
		if p.Type == "child<q35-pcihost>" || p.Type == "child<gpex-pcihost>" {
			return true, nil
		}
	}
	return false, nil
}
