package sandbox

import (
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/netsetup"
)

// checkAddrs verifies, for both IP families, that the veth still carries
// every address recorded for the guest, as the main plugin configured it
// (an IPv6 address that failed duplicate address detection counts as
// missing), and that the TAP has no IPv6 address of its own (vmnic turns
// its address generation off). Runs in the sandbox netns.
func checkAddrs(nic *netsetup.NIC, veth netlink.Link, add func(string, ...any)) {
	have := map[string]int{} // address -> IFA flags
	list, err := netlink.AddrList(veth, netlink.FAMILY_ALL)
	if err != nil {
		add("list the addresses of %s: %v", nic.IfName, err)
		return
	}
	for _, a := range list {
		have[a.IPNet.String()] = a.Flags
	}
	for _, f := range []netsetup.Family{netsetup.IPv4, netsetup.IPv6} {
		for _, ip := range nic.IPsOf(f) {
			addr, ipn, err := net.ParseCIDR(ip)
			if err != nil {
				add("IPv%d: recorded address %q is not valid: %v", f, ip, err)
				continue
			}
			ipn.IP = addr
			flags, ok := have[ipn.String()]
			switch {
			case !ok:
				add("IPv%d: %s no longer has %s, the address the guest was given", f, nic.IfName, ip)
			case flags&unix.IFA_F_DADFAILED != 0:
				add("IPv%d: %s has %s, but its duplicate address detection failed", f, nic.IfName, ip)
			}
		}
	}
	if tap, err := netlink.LinkByName(nic.Tap); err == nil {
		if tl, err := netlink.AddrList(tap, netlink.FAMILY_V6); err == nil && len(tl) > 0 {
			add("TAP %s has IPv6 address %s of its own (its address generation should be off)", nic.Tap, tl[0].IPNet)
		}
	}
}
