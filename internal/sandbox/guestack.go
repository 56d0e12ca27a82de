package sandbox

import (
	"context"
	"fmt"

	"github.com/vmnic/vmnic/netsetup"
)

// AckGuestRelease records that the guest of sandbox id has let go of the
// NIC on ifname (for Firecracker: it removed the PCI device), so the next
// removal (a CNI DEL retry, a teardown) may tear the device down in the
// VMM. It is idempotent; a NIC that is not recorded is an error.
func (m *Manager) AckGuestRelease(ctx context.Context, id, ifname string) (*netsetup.NetSetup, error) {
	if err := netsetup.ValidateSandboxID(id); err != nil {
		return nil, coded(CodeInvalidEnv, err, "sandbox id")
	}
	tx, rec, err := m.Store.LockLoad(ctx, id)
	if err != nil {
		return nil, err
	}
	defer tx.Unlock()
	p, ok := rec.NIC(ifname)
	if !ok {
		return nil, fmt.Errorf("sandbox %s has no NIC %s", id, ifname)
	}
	if p.GuestAcked {
		return rec, nil
	}
	p.GuestAcked = true
	p.Note = "the guest has released the device (guest-acked); the next removal tears it down in the VMM"
	if err := tx.Save(rec); err != nil {
		return nil, err
	}
	m.log().Info("guest release recorded", "sandbox", id, "ifname", ifname)
	return rec, nil
}
