package hostnet

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// LookupBridge returns the bridge device name in the calling thread's netns.
func LookupBridge(name string) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("bridge %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return nil, fmt.Errorf("bridge %s: the device is a %s, not a bridge", name, link.Type())
	}
	return link, nil
}

// SetMaster makes link a port of bridge.
func SetMaster(link, bridge netlink.Link) error {
	if err := netlink.LinkSetMasterByIndex(link, bridge.Attrs().Index); err != nil {
		return fmt.Errorf("add %s to bridge %s: %w", link.Attrs().Name, bridge.Attrs().Name, err)
	}
	return nil
}

// MasterIndex is the index of link's master device (0 when none).
func MasterIndex(link netlink.Link) int { return link.Attrs().MasterIndex }
