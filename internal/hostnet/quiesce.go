package hostnet

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"
)

// QuiescePriority is the priority of the drop filter that stands in for the
// redirect while a NIC is quiesced. It runs before FilterPriority, so the
// drop is in place before the redirect goes (and stays until it is back):
// at no point does a frame reach the sandbox netns' own stack, which holds
// the guest's IP on the veth and would answer for a dead guest.
const QuiescePriority uint16 = FilterPriority - 1 // 30317

// DropFilterName names vmnic's drop program (TCA_BPF_NAME), which is how
// HasDrop tells it apart.
const DropFilterName = "vmnic_quiesce"

// The drop is a cls_bpf filter in direct-action mode whose two-instruction
// program returns TC_ACT_SHOT. Not gact's "action drop": act_gact is an
// optional module that many kernels (this project's CI kernel among them)
// do not have, while cls_bpf is there wherever BPF is.
var dropProgSpec = &ebpf.ProgramSpec{
	Name: DropFilterName,
	Type: ebpf.SchedCLS,
	Instructions: asm.Instructions{
		asm.Mov.Imm(asm.R0, int32(netlink.TC_ACT_SHOT)),
		asm.Return(),
	},
	License: "Apache-2.0",
}

// Quiesce takes the NIC whose veth is veth out of the data path: a drop
// filter goes on the veth's ingress hook at QuiescePriority, then vmnic's
// redirect to the TAP is removed. Frames for a guest whose VMM is paused,
// stopped or gone are dropped at the veth, cheaply and silently, instead of
// being mirred into a TAP without a reader (which the kernel refuses with a
// "tc mirred to Houston: device ... is down" notice per frame; cocoon #130
// saw soft lockups from that flood). Why a filter and not the veth's
// carrier: a veth has no carrier switch of its own, and taking the veth
// down flushes its routes in the sandbox netns, which a resume could not
// restore. The TAP -> veth redirect stays: a TAP nobody reads sends
// nothing. Idempotent.
func Quiesce(veth netlink.Link) error {
	has, err := HasDrop(veth)
	if err != nil {
		return err
	}
	if !has {
		if err := addDrop(veth); err != nil {
			return err
		}
	}
	return delVethRedirect(veth)
}

func addDrop(veth netlink.Link) error {
	prog, err := ebpf.NewProgram(dropProgSpec)
	if err != nil {
		return fmt.Errorf("load the drop program for %s: %w", veth.Attrs().Name, err)
	}
	defer prog.Close() // the filter holds its own reference
	f := &netlink.BpfFilter{
		FilterAttrs:  ingressAttrs(veth, QuiescePriority),
		Fd:           prog.FD(),
		Name:         DropFilterName,
		DirectAction: true,
	}
	if err := netlink.FilterAdd(f); err != nil {
		return fmt.Errorf("add drop filter on %s: %w", veth.Attrs().Name, err)
	}
	return nil
}

// Resume puts a quiesced NIC back: the redirect veth -> tap first (when it
// is missing), by the NIC's data path dp ("" = u32), then the drop filter
// goes. Idempotent.
func Resume(veth, tap netlink.Link, dp DataPath) error {
	var has bool
	var err error
	if dp == DataPathBPF {
		has, err = HasBPFRedirect(veth, tap.Attrs().Index, HelperRedirect)
	} else {
		has, err = HasRedirect(veth, tap.Attrs().Index)
	}
	if err != nil {
		return err
	}
	if !has {
		// A redirect to another device (a TAP re-made under the same
		// name) is replaced, by the NIC's data path.
		if err := delVethRedirect(veth); err != nil {
			return err
		}
		if dp == DataPathBPF {
			err = AddBPFRedirect(veth, tap, HelperRedirect)
		} else {
			err = AddRedirect(veth, tap)
		}
		if err != nil {
			return err
		}
	}
	return delFilter(veth, QuiescePriority)
}

// HasDrop reports whether link's ingress hook has vmnic's drop filter (a
// quiesced NIC).
func HasDrop(link netlink.Link) (bool, error) {
	return hasFilter(link, func(f netlink.Filter) (bool, error) {
		b, ok := f.(*netlink.BpfFilter)
		return ok && b.Priority == QuiescePriority && b.DirectAction && b.Name == DropFilterName, nil
	})
}
