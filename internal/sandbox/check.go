package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// CheckNIC verifies a NIC against the live system: the TAP exists and is
// up, vmnic's filters are on the veth and the TAP (or the TAP is a port of
// the bridge), the TAP's MTU and the recorded MAC still match the veth, and
// a NIC recorded as attached is still in the VMM. Every problem found is
// reported (joined). A quiesced NIC is healthy when its drop filter stands
// in for the veth's redirect. A NIC whose VMM no longer answers is
// reported, and quiesced here with all of its sandbox, so that the next
// CHECK finds it healthy but quiesced.
//
// An unreadable record is quarantined and rebuilt from the host (see
// netsetup's Tx.Load), and the CHECK fails saying so: a NIC rebuilt from
// its TAP's marker lacks what only the record knew (its IP config, its VMM
// device), so it fails every CHECK until it is added again.
func (m *Manager) CheckNIC(ctx context.Context, id, ifname string) error {
	if err := netsetup.ValidateSandboxID(id); err != nil {
		return coded(CodeInvalidEnv, err, "sandbox id")
	}
	tx, err := m.Store.Lock(ctx, id)
	if err != nil {
		return coded(CodeTryAgain, err, "sandbox %s", id)
	}
	rec, err := tx.Load()
	r := tx.Recovery()
	tx.Unlock()
	if r != nil {
		what := "rebuilt from the host"
		if !r.Rebuilt {
			what = "nothing of the sandbox was found on the host"
		}
		return codedf(CodeInternal, "the record of sandbox %s was unreadable (%s): it was quarantined to %s and %s; NIC %s must be added again (DEL, then ADD)", id, r.Reason, r.Quarantined, what, ifname)
	}
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
	if nic.Recovered {
		return codedf(CodeInternal, "NIC %s of sandbox %s was rebuilt from the host after its record was quarantined (%s): its IP config and VMM device are not known; add it again (DEL, then ADD)", ifname, id, dash(rec.Quarantined))
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
	err = m.inRecordedNetns(rec, func() error {
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
		checkAddrs(nic, veth, add)
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
			if errors.Is(err, vmmadapter.ErrUnavailable) {
				// The VMM is gone: take the sandbox's NICs out of the data
				// path (quiesce_check.go). This CHECK reports the loss;
				// the next finds the NIC healthy but quiesced.
				err = m.quiesceGoneVMM(ctx, id, err)
			}
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		return coded(CodeInternal, errors.Join(problems...), "check NIC %s of sandbox %s", ifname, id)
	}
	return nil
}

const netUp = net.FlagUp

// lookupTap finds the TAP of nic in the calling thread's netns; a missing
// one (where says where it was looked for) or a device that is no TAP is a
// problem, and nil.
func lookupTap(nic *netsetup.NIC, where string, add func(string, ...any)) netlink.Link {
	tap, err := netlink.LinkByName(nic.Tap)
	if err != nil {
		add("TAP %s missing%s: %v", nic.Tap, where, err)
		return nil
	}
	if !hostnet.IsTap(tap) {
		add("%s is a %s, not a TAP", nic.Tap, tap.Type())
		return nil
	}
	return tap
}

func checkTap(nic *netsetup.NIC, veth netlink.Link, add func(string, ...any)) {
	tap := lookupTap(nic, "", add)
	if tap == nil {
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
	if nic.State == netsetup.NICQuiesced {
		// The drop stands in for the veth's redirect; the TAP's side sends
		// nothing while no VMM reads it.
		checkQuiesced(nic, veth, add)
	} else {
		for _, p := range hostnet.CheckJoin(veth, tap, hostnet.DataPath(nic.DataPath)) {
			add("%v", p)
		}
	}
}

func checkBridgeTap(rec *netsetup.NetSetup, nic *netsetup.NIC, vethMTU int, add func(string, ...any)) {
	tap := lookupTap(nic, " on the host", add)
	if tap == nil {
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

func dash(s string) string {
	if s == "" {
		return "lost"
	}
	return s
}
