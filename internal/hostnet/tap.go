package hostnet

import (
	"errors"
	"fmt"
	"net"
	"unsafe"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// MaxQueuePairs bounds a multiqueue TAP (the kernel's MAX_TAP_QUEUES).
const MaxQueuePairs = 256

// ErrNameTaken is returned when the TAP's name is used by another device.
var ErrNameTaken = errors.New("device name already taken")

// TapSpec describes a TAP to create.
type TapSpec struct {
	Name       string
	MTU        int // 0 = kernel default
	QueuePairs int // > 1 makes a multiqueue TAP
	Owner      int // uid; < 0 = not set
	Group      int // gid; < 0 = not set
	// Marker, when set (Install not empty), is written as the TAP's alias
	// in the same request that brings it up.
	Marker Marker
	// LinkGroup, when not 0, is the link group (IFLA_GROUP) the TAP joins,
	// in that same request.
	LinkGroup uint32
}

// CreateTap creates a persistent TAP (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, and
// IFF_ONE_QUEUE or IFF_MULTI_QUEUE) in the calling thread's netns, sets its
// owner and group when given, its MTU, marker and link group, turns its
// IPv6 address generation off (addrGenModeNone) and brings it up. The name must
// be free (ErrNameTaken otherwise); a failure leaves no device behind.
func CreateTap(s TapSpec) (netlink.Link, error) {
	if s.Name == "" || len(s.Name) > MaxIfNameLen {
		return nil, fmt.Errorf("tap name %q: must be 1 to %d bytes", s.Name, MaxIfNameLen)
	}
	if s.Marker.Install != "" {
		if err := s.Marker.Validate(); err != nil {
			return nil, fmt.Errorf("tap %s: %w", s.Name, err)
		}
	}
	if s.QueuePairs < 0 || s.QueuePairs > MaxQueuePairs {
		return nil, fmt.Errorf("tap %s: %d queue pairs: must be 1 to %d", s.Name, s.QueuePairs, MaxQueuePairs)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("create tap %s: open /dev/net/tun: %w", s.Name, err)
	}
	// Until TUNSETPERSIST the device lives only as long as fd: closing fd
	// on any error before that removes it.
	persisted := false
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR | unix.IFF_TUN_EXCL)
	if s.QueuePairs > 1 {
		flags |= unix.IFF_MULTI_QUEUE
	} else {
		flags |= unix.IFF_ONE_QUEUE
	}
	ifr, err := unix.NewIfreq(s.Name)
	if err != nil {
		return nil, fmt.Errorf("create tap %s: %w", s.Name, err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create tap %s: %w", s.Name, ErrNameTaken)
		}
		return nil, fmt.Errorf("create tap %s: TUNSETIFF: %w", s.Name, err)
	}
	if s.Owner >= 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, s.Owner); err != nil {
			return nil, fmt.Errorf("create tap %s: set owner %d: %w", s.Name, s.Owner, err)
		}
	}
	if s.Group >= 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, s.Group); err != nil {
			return nil, fmt.Errorf("create tap %s: set group %d: %w", s.Name, s.Group, err)
		}
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return nil, fmt.Errorf("create tap %s: set persist: %w", s.Name, err)
	}
	persisted = true
	// The TAP's MAC, from the tun fd (tun's SIOCGIFHWADDR), before it goes.
	hw, err := unix.NewIfreq(s.Name)
	if err == nil {
		err = unix.IoctlIfreq(fd, unix.SIOCGIFHWADDR, hw)
	}
	unix.Close(fd)
	fd = -1
	if err != nil {
		err = fmt.Errorf("create tap %s: read its MAC: %w", s.Name, err)
		if lerr := DeleteTap(s.Name); lerr != nil {
			err = errors.Join(err, lerr)
		}
		return nil, err
	}

	link, err := configureTap(s, hwAddr(hw))
	if err != nil && persisted {
		if lerr := DeleteTap(s.Name); lerr != nil {
			err = errors.Join(err, lerr)
		}
	}
	return link, err
}

// configureTap sets the new TAP up with its MTU, marker, link group and
// IPv6 address generation off, in one netlink request, and returns it as a
// link. Its index comes from an SIOCGIFINDEX ioctl, not a netlink lookup:
// the ADD needs only the index, the name, the MAC (mac, read from the tun
// fd) and the MTU it set.
func configureTap(s TapSpec, mac net.HardwareAddr) (netlink.Link, error) {
	index, err := ifIndex(s.Name)
	if err != nil {
		return nil, fmt.Errorf("create tap %s: look it up: %w", s.Name, err)
	}
	alias := ""
	if s.Marker.Install != "" {
		alias = s.Marker.String()
	}
	if err := setUp(linkSettings{index: index, mtu: s.MTU, alias: alias, group: s.LinkGroup, quietIPv6: true}); err != nil {
		return nil, fmt.Errorf("create tap %s: set up (mtu %d): %w", s.Name, s.MTU, err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.Index, attrs.HardwareAddr, attrs.MTU = s.Name, index, mac, s.MTU
	if s.MTU <= 0 {
		attrs.MTU = defaultTapMTU
	}
	attrs.Flags = net.FlagUp
	attrs.Alias = alias
	attrs.Group = s.LinkGroup
	q := s.QueuePairs
	flags := netlink.TUNTAP_ONE_QUEUE | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_NO_PI
	if q > 1 {
		flags = netlink.TUNTAP_MULTI_QUEUE | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_NO_PI
	}
	return &netlink.Tuntap{LinkAttrs: attrs, Mode: netlink.TUNTAP_MODE_TAP, Flags: flags, Queues: max(q, 1)}, nil
}

// ifIndex is the index of the interface name in the calling thread's netns
// (SIOCGIFINDEX on a socket made there).
func ifIndex(name string) (int, error) {
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(sock)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, err
	}
	return int(ifr.Uint32()), nil
}

// defaultTapMTU is the MTU the kernel gives a new TAP (ETH_DATA_LEN).
const defaultTapMTU = 1500

// hwAddr is the Ethernet address an SIOCGIFHWADDR answer holds (after the
// sockaddr's 2-byte family); x/sys does not expose an ifreq's sockaddr.
func hwAddr(ifr *unix.Ifreq) net.HardwareAddr {
	raw := (*[unix.IFNAMSIZ + 24]byte)(unsafe.Pointer(ifr))
	mac := make(net.HardwareAddr, 6)
	copy(mac, raw[unix.IFNAMSIZ+2:unix.IFNAMSIZ+8])
	return mac
}

// linkSettings are what setUp sets on the link index.
type linkSettings struct {
	index int
	mtu   int    // > 0: the MTU
	alias string // not empty: the alias (IFLA_IFALIAS)
	group uint32 // not 0: the link group (IFLA_GROUP)
	// quietIPv6: IPv6 address generation "none" (addrGenModeNone).
	quietIPv6 bool
}

// setUp sets a link up together with the settings in l, in one RTM_NEWLINK
// request (netlink.LinkSetIP6AddrGenMode, LinkSetMTU, LinkSetAlias,
// LinkSetGroup and LinkSetUp would take five). A kernel without IPv6
// refuses the IPv6 attribute (EAFNOSUPPORT) before changing anything
// (rtnl_setlink validates every IFLA_AF_SPEC entry first,
// net/core/rtnetlink.c validate_linkmsg); the request is then sent again
// without it.
//
// do_setlink applies IFLA_AF_SPEC after the flags, so the link is up
// before its address generation is off. For a TAP that is harmless: with
// no queue attached a TAP has no carrier (drivers/net/tun.c __tun_detach
// and tun_set_iff), and addrconf makes no address on NETDEV_UP of a link
// without carrier; it waits for the carrier's NETDEV_CHANGE
// (net/ipv6/addrconf.c addrconf_notify, addrconf_link_ready), by which
// time the mode is "none".
func setUp(l linkSettings) error {
	err := setLink(l)
	if l.quietIPv6 && (errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP)) {
		l.quietIPv6 = false
		err = setLink(l)
	}
	return err
}

func setLink(l linkSettings) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(l.index)
	msg.Flags = unix.IFF_UP
	msg.Change = unix.IFF_UP
	req.AddData(msg)
	if l.mtu > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(l.mtu))))
	}
	if l.alias != "" {
		req.AddData(aliasAttr(l.alias))
	}
	if l.group != 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(l.group)))
	}
	if l.quietIPv6 {
		req.AddData(addrGenModeNone())
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// IsTap reports whether link is a TAP device.
func IsTap(link netlink.Link) bool {
	t, ok := link.(*netlink.Tuntap)
	return ok && t.Mode == netlink.TUNTAP_MODE_TAP
}

// DeleteTap deletes the TAP name in the calling thread's netns. A missing
// device is not an error; a device of that name that is not a TAP is left
// alone and reported.
func DeleteTap(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	if !IsTap(link) {
		return fmt.Errorf("delete tap %s: the device is a %s, not a TAP: left alone", name, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil && !IsNotFound(err) {
		return fmt.Errorf("delete tap %s: %w", name, err)
	}
	return nil
}

// IsNotFound reports a netlink "no such device/object" error.
func IsNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}
