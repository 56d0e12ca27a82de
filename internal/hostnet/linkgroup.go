package hostnet

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Deleting a net device waits for an RCU grace period (synchronize_net in
// unregister_netdevice_many, tens of ms on a busy host), once per
// RTM_DELLINK. A request that names a link group instead of a device
// (ifindex 0, IFLA_GROUP) makes the kernel collect every device of the
// group and unregister them together, paying that wait once: see
// rtnl_dellink and rtnl_group_dellink in the kernel's net/core/rtnetlink.c.

// SetLinkGroup puts link in the link group group (IFLA_GROUP), in the
// calling thread's netns.
func SetLinkGroup(link netlink.Link, group uint32) error {
	if err := netlink.LinkSetGroup(link, int(group)); err != nil {
		return fmt.Errorf("set link group %d on %s: %w", group, link.Attrs().Name, err)
	}
	link.Attrs().Group = group
	return nil
}

// LinksInGroup lists the links of the calling thread's netns that are in
// group.
func LinksInGroup(group uint32) ([]netlink.Link, error) {
	all, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var in []netlink.Link
	for _, l := range all {
		if l.Attrs().Group == group {
			in = append(in, l)
		}
	}
	return in, nil
}

// DeleteLinkGroup deletes every link of group in the calling thread's netns
// in one RTM_DELLINK (one kernel batch). Group 0, every link's default, is
// refused. The caller checks the group's members first: the kernel deletes
// whatever is in it.
func DeleteLinkGroup(group uint32) error {
	if group == 0 {
		return fmt.Errorf("delete link group 0: refused (the default group of every link)")
	}
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC)) // ifindex 0: the group names the devices
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(group)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("delete link group %d: %w", group, err)
	}
	return nil
}
