package hostnet

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// quietIPv6 stops the kernel from giving a TAP IPv6 addresses of its own:
// with address generation mode "none" it makes no link-local address, so it
// runs no duplicate address detection and sends no router solicitations,
// neither into the guest nor, in the sandbox netns, next to the veth whose
// IPv6 the main plugin configured. The TAP is a pipe to the guest, which
// has its own addresses. A kernel without IPv6 needs nothing done.
func quietIPv6(link netlink.Link) error {
	err := netlink.LinkSetIP6AddrGenMode(link, nl.IN6_ADDR_GEN_MODE_NONE)
	if err == nil || errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return fmt.Errorf("set IPv6 address generation off: %w", err)
}
