package connect

import (
	"context"
	"fmt"
	"os"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/cloudhypervisor"
)

// SnapshotNet is one NIC of a VMM's snapshot as its saved VM config has it:
// device id, TAP name, virtqueues and, for a NIC the VMM had on TAP fds,
// how many (0: opened by name).
type SnapshotNet struct {
	ID, Tap   string
	NumQueues int
	Fds       int
}

// ReadSnapshotNets reads the NICs of the snapshot at sourceURL for a VMM of
// kind (Cloud Hypervisor: file:///dir, its config.json;
// cloudhypervisor.ReadSnapshotNets). Other kinds keep no such config vmnic
// reads.
func ReadSnapshotNets(kind vmmadapter.Kind, sourceURL string) ([]SnapshotNet, error) {
	if kind != vmmadapter.CloudHypervisor {
		return nil, fmt.Errorf("snapshot NICs of a %s snapshot: only Cloud Hypervisor snapshots are read", kind)
	}
	nets, err := cloudhypervisor.ReadSnapshotNets(sourceURL)
	if err != nil {
		return nil, err
	}
	out := make([]SnapshotNet, len(nets))
	for i, n := range nets {
		out[i] = SnapshotNet{ID: n.ID, Tap: n.Tap, NumQueues: n.NumQueues, Fds: n.Fds}
	}
	return out, nil
}

// VMRestore is a restore a VMM performs over its API with TAP fds: the
// snapshot's location, and the new fds of each NIC the snapshot had on fds.
type VMRestore struct {
	SourceURL        string
	Prefault, Resume bool
	Nets             []RestoreFds
}

// RestoreFds are the TAP queue fds of one restored NIC (by its device id in
// the snapshot).
type RestoreFds struct {
	ID  string
	Fds []*os.File
}

// RestoreVM has the VMM behind a (which must have no VM yet) restore r:
// Cloud Hypervisor's vm.restore with net_fds and the fds over SCM_RIGHTS
// (cloudhypervisor.Adapter.Restore). The caller keeps its fds and closes
// them once this returns.
func RestoreVM(ctx context.Context, a vmmadapter.Adapter, r VMRestore) error {
	ch, ok := a.(*cloudhypervisor.Adapter)
	if !ok {
		return fmt.Errorf("restore the VM: the %T adapter performs no restore (only Cloud Hypervisor's does)", a)
	}
	rc := cloudhypervisor.RestoreConfig{SourceURL: r.SourceURL, Prefault: r.Prefault, Resume: r.Resume}
	for _, n := range r.Nets {
		rc.Nets = append(rc.Nets, cloudhypervisor.RestoreNet{ID: n.ID, Fds: n.Fds})
	}
	return ch.Restore(ctx, rc)
}

// ErrVMExists: the VMM refused a restore because it has a VM already.
var ErrVMExists = cloudhypervisor.ErrVMExists
