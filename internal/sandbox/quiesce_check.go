package sandbox

import (
	"context"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/netsetup"
)

// checkQuiesced checks the veth of a quiesced NIC: vmnic's drop filter is
// on its ingress hook and the redirect into the TAP is not.
func checkQuiesced(nic *netsetup.NIC, veth netlink.Link, add func(string, ...any)) {
	if ok, err := hostnet.HasDrop(veth); err != nil {
		add("%v", err)
	} else if !ok {
		add("NIC %s is recorded quiesced but the drop filter on %s is missing (run vmnicctl quiesce or resume again)", nic.IfName, nic.IfName)
	}
	tap, err := netlink.LinkByName(nic.Tap)
	if err != nil {
		return // reported by checkTap
	}
	if ok, err := hostnet.HasRedirect(veth, tap.Attrs().Index); err == nil && ok {
		add("NIC %s is recorded quiesced but %s still redirects into %s (run vmnicctl quiesce or resume again)", nic.IfName, nic.IfName, nic.Tap)
	}
}

// quiesceGoneVMM is CHECK's answer to a VMM that no longer answers (cause):
// the sandbox's NICs are quiesced, as for a VMM that is gone, so that
// traffic for the dead guest is dropped at the veth. It returns the
// problem to report, saying what was done.
func (m *Manager) quiesceGoneVMM(ctx context.Context, id string, cause error) error {
	if _, err := m.Quiesce(ctx, id, QuiesceOptions{Reason: "CHECK: " + cause.Error(), VMMGone: true}); err != nil {
		return fmt.Errorf("%w; quiescing its NICs failed: %w", cause, err)
	}
	m.log().Warn("the sandbox's VMM is gone: its NICs are quiesced", "sandbox", id, "error", cause)
	return fmt.Errorf("%w; the sandbox's NICs are quiesced now (vmnicctl resume %s once a VMM runs again)", cause, id)
}
