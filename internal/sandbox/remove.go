package sandbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// DelSpec names a NIC to remove: the CNI DEL.
type DelSpec struct {
	SandboxID   string
	ContainerID string // when set, a NIC recorded for another container is left alone
	IfName      string
}

// DelNIC removes a NIC: from the VMM first (bounded), then its host side
// (vmnic's filters and qdisc, the TAP, the bridge rules), then its record
// entry. It is idempotent: a missing record, NIC or netns is success. The
// sandbox's record stays at zero NICs unless a CNI ADD created it.
func (m *Manager) DelNIC(ctx context.Context, d DelSpec) error {
	if err := netsetup.ValidateSandboxID(d.SandboxID); err != nil {
		return coded(CodeInvalidEnv, err, "sandbox id")
	}
	tx, err := m.Store.Lock(ctx, d.SandboxID)
	if err != nil {
		return coded(CodeTryAgain, err, "sandbox %s", d.SandboxID)
	}
	defer tx.Unlock()
	rec, err := tx.Load()
	if errors.Is(err, netsetup.ErrNotFound) {
		m.unindexContainers(d.SandboxID, nil, d.ContainerID)
		return nil
	}
	if err != nil {
		return coded(CodeIOFailure, err, "load the record of sandbox %s", d.SandboxID)
	}
	nic, ok := rec.NIC(d.IfName)
	if !ok {
		m.unindexContainers(d.SandboxID, rec, d.ContainerID)
		return nil
	}
	if d.ContainerID != "" && nic.ContainerID != "" && nic.ContainerID != d.ContainerID {
		m.log().Info("DEL for a NIC of another container: nothing to do", "sandbox", d.SandboxID, "ifname", d.IfName, "container", d.ContainerID, "recorded", nic.ContainerID)
		return nil
	}
	return m.removeNIC(ctx, tx, rec, d.IfName, true)
}

// removeNIC takes the NIC ifname out of the VMM and off the host and drops
// it from the record (saved). dropCNIRecord deletes a record a CNI ADD made
// once its last NIC is gone.
func (m *Manager) removeNIC(ctx context.Context, tx *netsetup.Tx, rec *netsetup.NetSetup, ifname string, dropCNIRecord bool) error {
	p, ok := rec.NIC(ifname)
	if !ok {
		return nil
	}
	nic := *p
	if rec.VMM != nil && (nic.State == netsetup.NICAttached || nic.State == netsetup.NICDetaching) && nic.VMMDeviceID != "" {
		fresh := nic.State == netsetup.NICAttached
		if fresh {
			// Say "detaching" first: a retry after a crash or a timeout
			// waits for the device instead of asking the VMM again.
			p.State = netsetup.NICDetaching
			if err := tx.Save(rec); err != nil {
				return coded(CodeIOFailure, err, "record NIC %s as detaching", ifname)
			}
			if err := m.step("detaching-saved"); err != nil {
				return asCoded(err, "remove NIC %s", ifname)
			}
		}
		// Also for a NIC already detaching: the removal may never have been
		// sent (a crash right after recording "detaching"). The adapters
		// make a repeated remove safe: Cloud Hypervisor's sends
		// remove-device only while config.net still lists the id, QEMU's
		// waits for a device_del in progress, Firecracker's DELETE of a
		// missing id is success.
		err := m.vmmRemove(ctx, rec.VMM, nic.VMMDeviceID)
		switch {
		case err == nil:
		case errors.Is(err, vmmadapter.ErrUnavailable):
			m.log().Info("VMM gone: cleaning up the host side only", "sandbox", rec.SandboxID, "ifname", ifname, "error", err)
		case errors.Is(err, vmmadapter.ErrHotplugUnsupported):
			m.log().Warn("the VMM cannot hot-remove NICs: the guest keeps a dead NIC", "sandbox", rec.SandboxID, "ifname", ifname, "error", err)
		case errors.Is(err, vmmadapter.ErrEjectTimeout):
			return coded(CodeTryAgain, err, "remove NIC %s from the %s VMM of sandbox %s", ifname, rec.VMM.Kind, rec.SandboxID)
		default:
			if fresh {
				if p, ok := rec.NIC(ifname); ok {
					p.State = netsetup.NICAttached
					_ = tx.Save(rec)
				}
			}
			return coded(CodeInternal, err, "remove NIC %s from the %s VMM of sandbox %s", ifname, rec.VMM.Kind, rec.SandboxID)
		}
		if err := m.step("vmm-removed"); err != nil {
			return asCoded(err, "remove NIC %s", ifname)
		}
	}
	if rec.VMM != nil && nic.State == netsetup.NICPending {
		if err := m.removeStray(ctx, rec, nic); err != nil {
			return err
		}
	}
	if err := m.step("remove-host"); err != nil {
		return asCoded(err, "remove NIC %s", ifname)
	}
	if err := m.cleanupHost(rec, nic); err != nil {
		return coded(CodeInternal, err, "remove NIC %s of sandbox %s", ifname, rec.SandboxID)
	}
	if err := m.step("host-removed"); err != nil {
		return asCoded(err, "remove NIC %s", ifname)
	}
	rec.RemoveNIC(ifname)
	if dropCNIRecord && len(rec.NetworkConfigs) == 0 && rec.CreatedBy == netsetup.CreatedByCNI {
		if err := tx.Delete(); err != nil {
			return coded(CodeIOFailure, err, "remove the record of sandbox %s", rec.SandboxID)
		}
		m.unindexContainers(rec.SandboxID, nil, nic.ContainerID)
	} else {
		if err := tx.Save(rec); err != nil {
			return coded(CodeIOFailure, err, "record the removal of NIC %s", ifname)
		}
		m.unindexContainers(rec.SandboxID, rec, nic.ContainerID)
	}
	m.log().Info("NIC removed", "sandbox", rec.SandboxID, "ifname", ifname, "tap", nic.Tap)
	return nil
}

// cleanupHost removes the host side of nic: vmnic's filters (and its own
// ingress qdisc) on the veth and the TAP in the sandbox netns, or the TAP on
// the host bridge and the bridge's forward rules. A netns that is gone took
// everything in it along.
func (m *Manager) cleanupHost(rec *netsetup.NetSetup, nic netsetup.NIC) error {
	path := rec.ResolvedNetnsPath()
	if rec.ResolvedNetBackend() == netsetup.BackendBridge {
		var errs []error
		if nic.Tap != "" {
			if err := hostnet.DeleteTap(nic.Tap); err != nil {
				errs = append(errs, err)
			}
		}
		if br := rec.ResolvedNetBridgeDev(); br != "" {
			if err := m.forwardRules().Release(br, bridgeUser(rec.SandboxID, nic.IfName)); err != nil {
				errs = append(errs, err)
			}
		}
		if path != "" {
			if err := m.unpark(path, nic.IfName, rec.ResolvedNetBridgeDev()); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	if path == "" {
		return nil
	}
	err := netns.Do(path, func() error {
		var errs []error
		veth, err := netlink.LinkByName(nic.IfName)
		switch {
		case err == nil:
			j := hostnet.Joined{DataPath: hostnet.DataPath(nic.DataPath), VethQdiscOwned: nic.VethQdiscOwned}
			if err := hostnet.Unjoin(veth, nil, j); err != nil {
				errs = append(errs, err)
			}
		case !hostnet.IsNotFound(err):
			errs = append(errs, fmt.Errorf("look up %s: %w", nic.IfName, err))
		}
		if nic.Tap != "" {
			if err := hostnet.DeleteTap(nic.Tap); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	if err != nil && !netns.IsGone(err) {
		return err
	}
	return nil
}

// unpark brings back the veth a bridge-backend NIC parked.
func (m *Manager) unpark(path, ifname, bridge string) error {
	host, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer host.Close()
	br, _ := host.LinkByName(bridge)
	err = netns.Do(path, func() error { return unparkVeth(ifname, host, br) })
	if err != nil && !netns.IsGone(err) {
		return fmt.Errorf("bring %s back: %w", ifname, err)
	}
	return nil
}

// removeStray takes a NIC recorded pending out of the VMM when the VMM has
// it anyway: the leftover of an ADD (or attach) killed between the hot-add
// and the record update. A VMM that cannot be asked is logged and the host
// side is removed regardless; only a guest still holding the device makes
// the removal fail (to be retried).
func (m *Manager) removeStray(ctx context.Context, rec *netsetup.NetSetup, nic netsetup.NIC) error {
	if rec.VMM == nil || nic.ID == "" {
		return nil
	}
	a, err := m.openVMM(rec.VMM)
	if err == nil {
		defer a.Close()
		lctx, cancel := context.WithTimeout(ctx, m.callTimeout())
		var have []string
		have, err = a.NICs(lctx)
		cancel()
		if err == nil {
			id, ok := vmmHas(have, nic.ID)
			if !ok {
				return nil
			}
			m.log().Warn("the VMM has a NIC recorded pending (an interrupted ADD): removing it", "sandbox", rec.SandboxID, "ifname", nic.IfName, "device", id)
			rctx, cancel := context.WithTimeout(ctx, m.removeTimeout()+2*m.callTimeout())
			err = a.RemoveNIC(rctx, id)
			cancel()
		}
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, vmmadapter.ErrEjectTimeout):
		return coded(CodeTryAgain, err, "remove NIC %s from the %s VMM of sandbox %s", nic.IfName, rec.VMM.Kind, rec.SandboxID)
	}
	m.log().Warn("cannot check the VMM for a NIC left by an interrupted ADD; removing the host side only", "sandbox", rec.SandboxID, "ifname", nic.IfName, "error", err)
	return nil
}
