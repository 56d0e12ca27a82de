package tapguest

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// IPv6, ICMPv6 (RFC 4443) and neighbour discovery (RFC 4861) as the
// stand-in speaks them: no extension headers are sent, and received packets
// with any are ignored.
const (
	EtherTypeIPv6 = 0x86dd

	ProtoICMPv6 = 58

	ICMPv6EchoRequest  = 128
	ICMPv6EchoReply    = 129
	ICMPv6NeighSolicit = 135
	ICMPv6NeighAdvert  = 136

	ndOptSourceLLAddr = 1
	ndOptTargetLLAddr = 2

	// NA flags (first byte of the reserved word).
	naRouter    = 0x80
	naSolicited = 0x40
	naOverride  = 0x20

	ipv6HeaderLen = 40
	ndHopLimit    = 255 // RFC 4861 §6.1/§7.1: receivers drop ND with any other hop limit
)

// AllNodes is ff02::1.
var AllNodes = netip.MustParseAddr("ff02::1")

// IPv6 is the part of an IPv6 header the stand-in uses.
type IPv6 struct {
	HopLimit   uint8
	NextHeader uint8
	Src, Dst   netip.Addr
}

// ICMPv6 is an ICMPv6 message: Type and Code, and the rest of the message
// after the checksum (echo: id, seq, data; ND: reserved word, target,
// options).
type ICMPv6 struct {
	Type, Code uint8
	Body       []byte
}

// SolicitedNode is the solicited-node multicast address of ip
// (ff02::1:ffXX:XXXX, RFC 4291 §2.7.1).
func SolicitedNode(ip netip.Addr) netip.Addr {
	a := ip.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 0x01, 12: 0xff, 13: a[13], 14: a[14], 15: a[15]})
}

// MulticastMAC is the Ethernet address of an IPv6 multicast group
// (33:33 and its last 32 bits, RFC 2464 §7).
func MulticastMAC(ip netip.Addr) net.HardwareAddr {
	a := ip.As16()
	return net.HardwareAddr{0x33, 0x33, a[12], a[13], a[14], a[15]}
}

// icmpv6Checksum is the checksum over the IPv6 pseudo-header and msg.
func icmpv6Checksum(src, dst netip.Addr, msg []byte) uint16 {
	ph := make([]byte, 40+len(msg))
	s, d := src.As16(), dst.As16()
	copy(ph[0:16], s[:])
	copy(ph[16:32], d[:])
	binary.BigEndian.PutUint32(ph[32:36], uint32(len(msg)))
	ph[39] = ProtoICMPv6
	copy(ph[40:], msg)
	return Checksum(ph)
}

// EncodeICMPv6 builds an Ethernet frame with an IPv6 packet carrying an
// ICMPv6 message, checksum filled in.
func EncodeICMPv6(eth Ethernet, ip IPv6, m ICMPv6) ([]byte, error) {
	if !ip.Src.Is6() || !ip.Dst.Is6() || ip.Src.Is4In6() || ip.Dst.Is4In6() {
		return nil, fmt.Errorf("icmpv6: need IPv6 addresses")
	}
	if len(eth.Dst) != 6 || len(eth.Src) != 6 {
		return nil, fmt.Errorf("icmpv6: need 6-byte MACs")
	}
	msgLen := 4 + len(m.Body)
	if msgLen > 0xffff {
		return nil, fmt.Errorf("icmpv6: payload too large")
	}
	eth.EtherType = EtherTypeIPv6
	b := make([]byte, ethHeaderLen+ipv6HeaderLen+msgLen)
	putEthernet(b, eth)
	h := b[ethHeaderLen : ethHeaderLen+ipv6HeaderLen]
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:6], uint16(msgLen))
	h[6] = ProtoICMPv6
	hl := ip.HopLimit
	if hl == 0 {
		hl = 64
	}
	h[7] = hl
	s, d := ip.Src.As16(), ip.Dst.As16()
	copy(h[8:24], s[:])
	copy(h[24:40], d[:])
	msg := b[ethHeaderLen+ipv6HeaderLen:]
	msg[0], msg[1] = m.Type, m.Code
	copy(msg[4:], m.Body)
	binary.BigEndian.PutUint16(msg[2:4], icmpv6Checksum(ip.Src, ip.Dst, msg))
	return pad(b), nil
}

// ParseIPv6 decodes a fixed IPv6 header and returns the payload bounded by
// the payload length (Ethernet padding dropped).
func ParseIPv6(p []byte) (IPv6, []byte, error) {
	if len(p) < ipv6HeaderLen {
		return IPv6{}, nil, fmt.Errorf("ipv6: %w (%d bytes)", errShort, len(p))
	}
	if p[0]>>4 != 6 {
		return IPv6{}, nil, fmt.Errorf("ipv6: version %d", p[0]>>4)
	}
	n := int(binary.BigEndian.Uint16(p[4:6]))
	if ipv6HeaderLen+n > len(p) {
		return IPv6{}, nil, fmt.Errorf("ipv6: payload length %d, have %d", n, len(p)-ipv6HeaderLen)
	}
	h := IPv6{
		NextHeader: p[6],
		HopLimit:   p[7],
		Src:        netip.AddrFrom16([16]byte(p[8:24])),
		Dst:        netip.AddrFrom16([16]byte(p[24:40])),
	}
	return h, p[ipv6HeaderLen : ipv6HeaderLen+n], nil
}

// ParseICMPv6 decodes an ICMPv6 message of the packet ip; verify checks the
// checksum (skip it when it was left to offload).
func ParseICMPv6(ip IPv6, p []byte, verify bool) (ICMPv6, error) {
	if len(p) < 4 {
		return ICMPv6{}, fmt.Errorf("icmpv6: %w (%d bytes)", errShort, len(p))
	}
	if verify && icmpv6Checksum(ip.Src, ip.Dst, p) != 0 {
		return ICMPv6{}, fmt.Errorf("icmpv6: bad checksum")
	}
	return ICMPv6{Type: p[0], Code: p[1], Body: append([]byte(nil), p[4:]...)}, nil
}

// EchoBody is the body of an ICMPv6 echo message.
func EchoBody(id, seq uint16, data []byte) []byte {
	b := make([]byte, 4+len(data))
	binary.BigEndian.PutUint16(b[0:2], id)
	binary.BigEndian.PutUint16(b[2:4], seq)
	copy(b[4:], data)
	return b
}

// ParseEchoBody splits an ICMPv6 echo body.
func ParseEchoBody(b []byte) (id, seq uint16, data []byte, err error) {
	if len(b) < 4 {
		return 0, 0, nil, fmt.Errorf("icmpv6 echo: %w", errShort)
	}
	return binary.BigEndian.Uint16(b[0:2]), binary.BigEndian.Uint16(b[2:4]), b[4:], nil
}

// NDBody is the body of a neighbour solicitation or advertisement: the
// flags byte (NA only), the target and one link-layer address option
// (source for NS, target for NA; nil for none).
func NDBody(typ uint8, flags uint8, target netip.Addr, lladdr net.HardwareAddr) []byte {
	b := make([]byte, 20, 28)
	b[0] = flags
	t := target.As16()
	copy(b[4:20], t[:])
	if len(lladdr) == 6 {
		opt := byte(ndOptSourceLLAddr)
		if typ == ICMPv6NeighAdvert {
			opt = ndOptTargetLLAddr
		}
		b = append(b, opt, 1)
		b = append(b, lladdr...)
	}
	return b
}

// ND is a parsed neighbour solicitation or advertisement.
type ND struct {
	Flags  uint8
	Target netip.Addr
	LLAddr net.HardwareAddr // the source (NS) or target (NA) link-layer address option, if any
}

// ParseND parses the body of an NS or NA (RFC 4861 §4.3, §4.4).
func ParseND(typ uint8, b []byte) (ND, error) {
	if len(b) < 20 {
		return ND{}, fmt.Errorf("nd: %w (%d bytes)", errShort, len(b))
	}
	nd := ND{Flags: b[0], Target: netip.AddrFrom16([16]byte(b[4:20]))}
	want := byte(ndOptSourceLLAddr)
	if typ == ICMPv6NeighAdvert {
		want = ndOptTargetLLAddr
	}
	for opts := b[20:]; len(opts) >= 2; {
		l := int(opts[1]) * 8
		if l == 0 || l > len(opts) {
			return ND{}, fmt.Errorf("nd: bad option length %d", opts[1])
		}
		if opts[0] == want && l >= 8 {
			nd.LLAddr = net.HardwareAddr(append([]byte(nil), opts[2:8]...))
		}
		opts = opts[l:]
	}
	return nd, nil
}
