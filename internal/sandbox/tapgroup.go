package sandbox

import (
	"errors"
	"fmt"
	"hash/fnv"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

// A sandbox's TAPs share one link group, so that when the whole sandbox
// goes (teardown, NRI Stop/RemovePodSandbox, a GC that removes all its
// NICs) they are deleted in one RTM_DELLINK and the kernel's per-device
// RCU wait is paid once, not once per NIC (hostnet.DeleteLinkGroup). The
// group is derived from the sandbox id, so nothing new is recorded; before
// the group is deleted its members are checked to be exactly TAPs of the
// NICs being removed, and anything else in it (another sandbox's TAP whose
// id hashed alike, a foreign device, a NIC whose VMM removal failed) makes
// the removal fall back to deleting each TAP on its own. A CNI DEL of one
// NIC never uses the group.

// hostnet.CreateTap puts a new TAP in its group (TapSpec.LinkGroup) in the
// request that brings it up.

// tapGroup is the link group of sandbox id's TAPs: never 0 (every link's
// default) and with the top bit set, away from small hand-picked groups.
func tapGroup(id string) uint32 {
	h := fnv.New32a()
	h.Write([]byte("vmnic-tap-group\x00" + id))
	return h.Sum32() | 1<<31
}

// errGroupShared: the link group holds a device that is not to go.
var errGroupShared = errors.New("the link group holds other devices")

// deleteTapsTogether deletes the TAPs of nics (NICs of rec already out of
// the VMM) in one kernel batch when their sandbox's link group holds
// exactly those TAPs. It reports whether it deleted them; false with a nil
// error means there was nothing to batch (TAPs made before link groups, a
// gone netns, a single bridge TAP), and each NIC's cleanup deletes its TAP
// as before. A TAP already gone is fine: cleanup finds nothing to delete.
func (m *Manager) deleteTapsTogether(rec *netsetup.NetSetup, nics []netsetup.NIC) (bool, error) {
	want := make(map[string]bool, len(nics))
	for _, n := range nics {
		if n.Tap != "" {
			want[n.Tap] = true
		}
	}
	bridge := rec.ResolvedNetBackend() == netsetup.BackendBridge
	// A bridge TAP is on the host, where listing the links costs more than
	// one device's deletion saves: batch from two TAPs on.
	if len(want) == 0 || bridge && len(want) < 2 {
		return false, nil
	}
	group := tapGroup(rec.SandboxID)
	deleted := false
	del := func() error {
		members, err := hostnet.LinksInGroup(group)
		if err != nil {
			return err
		}
		if len(members) == 0 {
			return nil
		}
		for _, l := range members {
			if !hostnet.IsTap(l) || !want[l.Attrs().Name] {
				return fmt.Errorf("%w: %s (%s)", errGroupShared, l.Attrs().Name, l.Type())
			}
		}
		if err := hostnet.DeleteLinkGroup(group); err != nil {
			return err
		}
		deleted = true
		return nil
	}
	var err error
	if bridge {
		err = del()
	} else if path := rec.ResolvedNetnsPath(); path != "" {
		if err = netns.Do(path, del); netns.IsGone(err) {
			err = nil
		}
	}
	if err != nil {
		return false, fmt.Errorf("delete the TAPs of sandbox %s together: %w", rec.SandboxID, err)
	}
	return deleted, nil
}
