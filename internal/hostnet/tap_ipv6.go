package hostnet

import (
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// addrGenModeNone is the IFLA_AF_SPEC attribute (what
// netlink.LinkSetIP6AddrGenMode sends) that stops the kernel from giving a
// TAP IPv6 addresses of its own: with address generation mode "none" it
// makes no link-local address, so it runs no duplicate address detection
// and sends no router solicitations, neither into the guest nor, in the
// sandbox netns, next to the veth whose IPv6 the main plugin configured.
// The TAP is a pipe to the guest, which has its own addresses. CreateTap
// sends it in the request that brings the TAP up (setUp), and leaves it out
// on a kernel without IPv6, which needs nothing done.
func addrGenModeNone() *nl.RtAttr {
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	inet6 := spec.AddRtAttr(unix.AF_INET6, nil)
	inet6.AddRtAttr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{nl.IN6_ADDR_GEN_MODE_NONE})
	return spec
}
