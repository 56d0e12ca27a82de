package faultenv

import (
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// netnsHandle is a netlink handle inside the namespace at path.
func netnsHandle(path string) (*netlink.Handle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return netlink.NewHandleAt(h)
}
