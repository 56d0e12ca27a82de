package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

// RestoreVMMOptions say where a VMM restores its VM from.
type RestoreVMMOptions struct {
	// SourceURL is Cloud Hypervisor's snapshot directory, file:///dir.
	SourceURL string
	Prefault  bool
	// Resume: the VM runs once restored (else it comes back paused).
	Resume bool
}

// restorePlan is one expected NIC of a restore: the NIC as recorded, its
// device id in the snapshot, and how many TAP fds the snapshot had it
// backed by (0: opened by name).
type restorePlan struct {
	ifname, device string
	fds            int
}

// RestoreVMM restores the VM of a restored sandbox in the Cloud Hypervisor
// at socket (started without a VM) from the snapshot at o.SourceURL, with
// this sandbox's TAPs, and records the VMM and its NICs attached under
// their snapshot device ids.
//
// Cloud Hypervisor reopens a NIC it had opened by name by the snapshot's
// TAP name, and wants new fds for a NIC it had on fds (vmm/src/lib.rs
// vm_restore; vmm/src/config.rs RestoreConfig::validate). So the
// snapshot's VM config (config.json in the snapshot directory) decides:
// for each NIC on fds, vmnic opens its TAP's queues as for any fd handoff
// (OpenTapFds: one per queue pair, only a TAP vmnic made in the recorded
// netns) and sends them with vm.restore as net_fds [{id, num_fds}] over
// SCM_RIGHTS (only to the socket's recorded or just-asked process, by
// SO_PEERCRED), then closes its copies; a NIC on a TAP name must have kept
// that name (else the restore is refused: CH would open the snapshot's
// name, which is not this NIC's TAP now).
//
// Idempotent and retry-safe: the record changes only once the VMM has the
// VM; a refused restore leaves the record as it was and CH without a VM
// (it deletes a half-restored one), and a retry after a restore whose
// answer was lost finds the VM with the snapshot's devices and only
// records them.
func (m *Manager) RestoreVMM(ctx context.Context, id string, kind vmmadapter.Kind, socket string, o RestoreVMMOptions) (*netsetup.NetSetup, error) {
	if kind != vmmadapter.CloudHypervisor {
		return nil, codedf(CodeInvalidConfig, "restore the VMM of sandbox %s: kind %s: vmnic performs the restore for cloud-hypervisor only (Firecracker: send restore-args' PUT /snapshot/load, then attach-vmm; QEMU: start it with restore-args)", id, kind)
	}
	if socket == "" {
		return nil, codedf(CodeInvalidConfig, "restore the VMM of sandbox %s: no API socket", id)
	}
	tx, rec, err := m.lifecycleLock(ctx, id, "restore the VMM of")
	if err != nil {
		return nil, err
	}
	defer tx.Unlock()
	nics, err := RestoreNICs(rec, nil)
	if err != nil {
		return nil, coded(CodeInvalidConfig, err, "restore the VMM of sandbox %s", id)
	}
	snap, err := connect.ReadSnapshotNets(kind, o.SourceURL)
	if err != nil {
		return nil, coded(CodeInvalidConfig, err, "restore the VMM of sandbox %s: which NICs Cloud Hypervisor restores from fds is in the snapshot's VM config", id)
	}
	plan, err := planCHRestore(rec, snap)
	if err != nil {
		return nil, coded(CodeInvalidConfig, err, "restore the VMM of sandbox %s", id)
	}

	v := vmmAt(kind, socket)
	a, err := m.openVMM(v)
	if err != nil {
		return nil, coded(CodeInvalidEnv, err, "restore the VMM of sandbox %s", id)
	}
	ictx, cancel := context.WithTimeout(ctx, m.callTimeout())
	info, err := a.Info(ictx)
	var have []string
	if err == nil {
		have, err = a.NICs(ictx)
	}
	cancel()
	a.Close()
	if err != nil {
		return nil, coded(CodeInvalidEnv, err, "restore the VMM of sandbox %s: ask the VMM at %s", id, socket)
	}
	v.Version, v.PID = info.Version, m.vmmPID(id, socket, info.PID)

	if !restoredAlready(have, plan) {
		if len(have) > 0 {
			return nil, codedf(CodeInvalidEnv, "restore the VMM of sandbox %s: the VMM at %s has a VM with other NICs (%s): restore into a VMM started without a VM", id, socket, strings.Join(have, ", "))
		}
		// The fds go only to the process that answered vmm.ping now.
		if err := m.restoreCH(ctx, rec, v, plan, o); err != nil {
			return nil, err
		}
		// A crash here leaves CH with the VM and the NICs recorded
		// pending, with no VMM: a retry finds the VM (restoredAlready)
		// and only records it; DEL or teardown removes the host side.
		if err := m.step("vm-restored"); err != nil {
			return nil, err
		}
	} else {
		m.log().Info("restore-vmm: the VMM has the snapshot's NICs already (an earlier restore whose answer was lost?): only recording them", "sandbox", id, "socket", socket)
	}
	// A crash here leaves the VM restored and the NICs recorded pending: a
	// retried RestoreVMM (restoredAlready) or attach-vmm records them.
	for _, p := range plan {
		n, _ := rec.NIC(p.ifname)
		exp, _ := rec.ExpectedNIC(p.ifname)
		n.VMMDeviceID, n.BDF, n.Note = p.device, exp.BDF, ""
		n.Handoff = netsetup.HandoffName
		if p.fds > 0 {
			n.Handoff = netsetup.HandoffFd
		}
		if n.State == netsetup.NICQuiesced {
			n.ResumeState = netsetup.NICAttached
		} else {
			n.State = netsetup.NICAttached
		}
		rec.PutNIC(*n)
	}
	v.Booted = o.Resume
	rec.VMM = v
	if err := tx.Save(rec); err != nil {
		return nil, coded(CodeIOFailure, err, "record the restored NICs of sandbox %s", id)
	}
	m.log().Info("VM restored with the sandbox's TAPs", "sandbox", id, "socket", socket, "nics", len(nics))
	return rec, nil
}

// planCHRestore matches the sandbox's expected NICs with the NICs of the
// snapshot's VM config (by device id).
func planCHRestore(rec *netsetup.NetSetup, snap []connect.SnapshotNet) ([]restorePlan, error) {
	byID := map[string]connect.SnapshotNet{}
	for _, s := range snap {
		byID[s.ID] = s
	}
	var plan []restorePlan
	covered := map[string]bool{}
	for _, exp := range rec.Restore.Expected {
		n, _ := rec.NIC(exp.IfName)
		s, ok := byID[exp.VMMDeviceID]
		if !ok {
			return nil, fmt.Errorf("NIC %s: the snapshot's VM config has no NIC %q (is it the snapshot of sandbox %s?)", exp.IfName, exp.VMMDeviceID, rec.Restore.From)
		}
		covered[s.ID] = true
		if s.Fds == 0 && s.Tap != n.Tap {
			return nil, fmt.Errorf("NIC %s: Cloud Hypervisor had device %s on TAP %s by name, and reopens it by that name (it takes fds at a restore only for a NIC it had on fds, vmm/src/lib.rs vm_restore); this sandbox's TAP is %s because %s was taken in the netns: free %s and ADD the NIC again",
				exp.IfName, s.ID, s.Tap, n.Tap, s.Tap, s.Tap)
		}
		if s.Fds > 0 && s.Fds*2 != s.NumQueues {
			return nil, fmt.Errorf("NIC %s: the snapshot has device %s on %d fds for %d queues", exp.IfName, s.ID, s.Fds, s.NumQueues)
		}
		if s.Fds > 0 && s.Fds != n.QueuePairs() {
			return nil, fmt.Errorf("NIC %s: the snapshot has device %s on %d queue pairs, this sandbox's TAP %s has %d: %w", exp.IfName, s.ID, s.Fds, n.Tap, n.QueuePairs(), vmmadapter.ErrFdCount)
		}
		plan = append(plan, restorePlan{ifname: exp.IfName, device: s.ID, fds: s.Fds})
	}
	for _, s := range snap {
		if s.Fds > 0 && !covered[s.ID] {
			return nil, fmt.Errorf("the snapshot has device %s on TAP fds, but the sandbox expects no NIC with that device id: Cloud Hypervisor needs fds for it (the manifest is not of this snapshot?)", s.ID)
		}
	}
	return plan, nil
}

// restoredAlready: the VMM's VM has every device of plan (a restore done).
func restoredAlready(have []string, plan []restorePlan) bool {
	if len(have) == 0 {
		return false
	}
	for _, p := range plan {
		if !slices.Contains(have, p.device) {
			return false
		}
	}
	return true
}

// restoreCH opens the TAP fds of plan's fd-backed NICs and sends vm.restore
// with them to the VMM v (its PID as the only peer that may get them),
// closing vmnic's copies whatever happens.
func (m *Manager) restoreCH(ctx context.Context, rec *netsetup.NetSetup, v *netsetup.VMM, plan []restorePlan, o RestoreVMMOptions) error {
	rc := connect.VMRestore{SourceURL: o.SourceURL, Prefault: o.Prefault, Resume: o.Resume}
	var all []*os.File
	defer func() { hostnet.CloseFiles(all) }()
	for _, p := range plan {
		if p.fds == 0 {
			continue
		}
		n, _ := rec.NIC(p.ifname)
		files, err := OpenTapFds(rec, *n)
		if err != nil {
			return coded(CodeInternal, err, "restore the VMM of sandbox %s", rec.SandboxID)
		}
		all = append(all, files...)
		rc.Nets = append(rc.Nets, connect.RestoreFds{ID: p.device, Fds: files})
	}
	// A crash here loses nothing: the fds die with the process, the VMM
	// has no VM, the record is as it was.
	if err := m.step("restore-fds-opened"); err != nil {
		return err
	}
	a, err := m.openVMM(v)
	if err != nil {
		return coded(CodeInvalidEnv, err, "restore the VMM of sandbox %s", rec.SandboxID)
	}
	defer a.Close()
	if err := connect.RestoreVM(ctx, a, rc); err != nil {
		code := CodeInvalidEnv
		if errors.Is(err, vmmadapter.ErrPeerMismatch) {
			code = CodeInvalidConfig
		}
		return coded(code, err, "restore the VMM of sandbox %s", rec.SandboxID)
	}
	return nil
}

// MarkSnapshotFds sets, on each Cloud Hypervisor restore NIC, how many TAP
// fds the snapshot's VM config has its device on (for restore-args).
func MarkSnapshotFds(nics []connect.RestoreNIC, snap []connect.SnapshotNet) {
	for i := range nics {
		for _, s := range snap {
			if s.ID == nics[i].DeviceID {
				nics[i].SnapshotFds, nics[i].SnapshotKnown = s.Fds, true
			}
		}
	}
}
