package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// CheckNIC verifies a NIC against the live system: the TAP exists and is
// up, vmnic's filters are on the veth and the TAP (or the TAP is a port of
// the bridge), the TAP's MTU and the recorded MAC still match the veth, and
// a NIC recorded as attached is still in the VMM. Every problem found is
// reported (joined).
func (m *Manager) CheckNIC(ctx context.Context, id, ifname string) error {
	rec, err := m.Store.Get(id)
	if err != nil {
		if errors.Is(err, netsetup.ErrNotFound) {
			return codedf(CodeInternal, "sandbox %s has no record: NIC %s is not set up", id, ifname)
		}
		return coded(CodeIOFailure, err, "load the record of sandbox %s", id)
	}
	nic, ok := rec.NIC(ifname)
	if !ok {
		return codedf(CodeInternal, "sandbox %s has no NIC %s", id, ifname)
	}
	if !nic.HostReady {
		return codedf(CodeInternal, "NIC %s of sandbox %s is not set up (state %s)", ifname, id, nic.State)
	}
	var problems []error
	add := func(format string, args ...any) { problems = append(problems, fmt.Errorf(format, args...)) }
	path := rec.ResolvedNetnsPath()
	bridge := rec.ResolvedNetBackend() == netsetup.BackendBridge

	var vethMTU int
	var vethMAC string
	var vethIndex int
	err = netns.Do(path, func() error {
		veth, err := netlink.LinkByName(ifname)
		if err != nil {
			add("interface %s: %v", ifname, err)
			return nil
		}
		vethMTU, vethMAC, vethIndex = veth.Attrs().MTU, veth.Attrs().HardwareAddr.String(), veth.Attrs().Index
		if bridge {
			return nil
		}
		checkTap(nic, veth, add)
		return nil
	})
	if err != nil {
		return coded(CodeInvalidNetns, err, "netns %s of sandbox %s", path, id)
	}
	if vethIndex != 0 {
		if vethMAC != nic.MAC {
			add("MAC mismatch: %s has %s, the guest was given %s", ifname, vethMAC, nic.MAC)
		}
		if nic.MTU != 0 && vethMTU != nic.MTU {
			add("MTU mismatch: %s has MTU %d, %d recorded", ifname, vethMTU, nic.MTU)
		}
	}
	if bridge {
		checkBridgeTap(rec, nic, vethMTU, add)
	}
	if rec.VMM != nil && nic.State == netsetup.NICAttached {
		if err := m.checkVMM(ctx, rec.VMM, nic); err != nil {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		return coded(CodeInternal, errors.Join(problems...), "check NIC %s of sandbox %s", ifname, id)
	}
	return nil
}

const netUp = net.FlagUp

func checkTap(nic *netsetup.NIC, veth netlink.Link, add func(string, ...any)) {
	tap, err := netlink.LinkByName(nic.Tap)
	if err != nil {
		add("TAP %s missing: %v", nic.Tap, err)
		return
	}
	if !hostnet.IsTap(tap) {
		add("%s is a %s, not a TAP", nic.Tap, tap.Type())
		return
	}
	if tap.Attrs().Flags&netUp == 0 {
		add("TAP %s is down", nic.Tap)
	}
	if tap.Attrs().MTU != veth.Attrs().MTU {
		add("MTU mismatch: TAP %s has MTU %d, %s has %d", nic.Tap, tap.Attrs().MTU, nic.IfName, veth.Attrs().MTU)
	}
	if mq := tap.(*netlink.Tuntap).Flags&netlink.TUNTAP_MULTI_QUEUE != 0; mq != (nic.QueuePairs() > 1) {
		add("TAP %s queue mode: multiqueue=%v, but %d queue pairs recorded", nic.Tap, mq, nic.QueuePairs())
	}
	for _, p := range hostnet.CheckJoin(veth, tap, hostnet.DataPath(nic.DataPath)) {
		add("%v", p)
	}
}

func checkBridgeTap(rec *netsetup.NetSetup, nic *netsetup.NIC, vethMTU int, add func(string, ...any)) {
	tap, err := netlink.LinkByName(nic.Tap)
	if err != nil {
		add("TAP %s missing on the host: %v", nic.Tap, err)
		return
	}
	if !hostnet.IsTap(tap) {
		add("%s is a %s, not a TAP", nic.Tap, tap.Type())
		return
	}
	br, err := hostnet.LookupBridge(rec.ResolvedNetBridgeDev())
	if err != nil {
		add("%v", err)
	} else if tap.Attrs().MasterIndex != br.Attrs().Index {
		add("TAP %s is not a port of bridge %s", nic.Tap, br.Attrs().Name)
	}
	if vethMTU != 0 && tap.Attrs().MTU != vethMTU {
		add("MTU mismatch: TAP %s has MTU %d, %s has %d", nic.Tap, tap.Attrs().MTU, nic.IfName, vethMTU)
	}
	if tap.Attrs().Flags&netUp == 0 {
		add("TAP %s is down", nic.Tap)
	}
}

func (m *Manager) checkVMM(ctx context.Context, v *netsetup.VMM, nic *netsetup.NIC) error {
	a, err := m.openVMM(v)
	if err != nil {
		return fmt.Errorf("VMM: %w", err)
	}
	defer a.Close()
	ctx, cancel := context.WithTimeout(ctx, m.callTimeout())
	defer cancel()
	ids, err := a.NICs(ctx)
	if err != nil {
		if errors.Is(err, vmmadapter.ErrUnavailable) {
			return fmt.Errorf("the %s VMM no longer answers, so it no longer has NIC %s: %w", v.Kind, nic.IfName, err)
		}
		return fmt.Errorf("list the NICs of the %s VMM: %w", v.Kind, err)
	}
	if !slices.Contains(ids, nic.VMMDeviceID) {
		return fmt.Errorf("the %s VMM no longer has NIC %s (device %s)", v.Kind, nic.IfName, nic.VMMDeviceID)
	}
	return nil
}
