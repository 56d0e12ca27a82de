package tapguest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// EtherTypes and protocol numbers the stand-in speaks.
const (
	EtherTypeIPv4 = 0x0800
	EtherTypeARP  = 0x0806

	ProtoICMP = 1

	ARPRequest = 1
	ARPReply   = 2

	ICMPEchoReply   = 0
	ICMPEchoRequest = 8

	ethHeaderLen  = 14
	arpLen        = 28
	ipv4HeaderLen = 20
	icmpEchoLen   = 8
	minFrameLen   = 60 // Ethernet minimum without FCS
)

// Broadcast is the Ethernet broadcast address.
var Broadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

var errShort = errors.New("frame too short")

// Ethernet is an Ethernet II header.
type Ethernet struct {
	Dst, Src  net.HardwareAddr
	EtherType uint16
}

// ARP is an IPv4-over-Ethernet ARP packet.
type ARP struct {
	Op        uint16
	SenderMAC net.HardwareAddr
	SenderIP  netip.Addr
	TargetMAC net.HardwareAddr
	TargetIP  netip.Addr
}

// IPv4 is the part of an IPv4 header the stand-in uses (no options are sent;
// received options are skipped).
type IPv4 struct {
	TOS      uint8
	ID       uint16
	TTL      uint8
	Protocol uint8
	Src, Dst netip.Addr
}

// ICMPEcho is an ICMP echo request or reply.
type ICMPEcho struct {
	Type    uint8
	Code    uint8
	ID, Seq uint16
	Data    []byte
}

// Checksum is the Internet checksum (RFC 1071) of b.
func Checksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func putEthernet(b []byte, e Ethernet) {
	copy(b[0:6], e.Dst)
	copy(b[6:12], e.Src)
	binary.BigEndian.PutUint16(b[12:14], e.EtherType)
}

// pad extends a frame to the Ethernet minimum.
func pad(b []byte) []byte {
	for len(b) < minFrameLen {
		b = append(b, 0)
	}
	return b
}

// ParseEthernet splits a frame into its header and payload.
func ParseEthernet(frame []byte) (Ethernet, []byte, error) {
	if len(frame) < ethHeaderLen {
		return Ethernet{}, nil, fmt.Errorf("ethernet: %w (%d bytes)", errShort, len(frame))
	}
	e := Ethernet{
		Dst:       net.HardwareAddr(append([]byte(nil), frame[0:6]...)),
		Src:       net.HardwareAddr(append([]byte(nil), frame[6:12]...)),
		EtherType: binary.BigEndian.Uint16(frame[12:14]),
	}
	return e, frame[ethHeaderLen:], nil
}

// EncodeARP builds an Ethernet frame carrying an ARP packet. A request goes
// to the broadcast address, a reply to the target's MAC.
func EncodeARP(a ARP) ([]byte, error) {
	if len(a.SenderMAC) != 6 || !a.SenderIP.Is4() || !a.TargetIP.Is4() {
		return nil, fmt.Errorf("arp: need a 6-byte sender MAC and IPv4 addresses")
	}
	target := a.TargetMAC
	if len(target) == 0 {
		target = make(net.HardwareAddr, 6)
	}
	if len(target) != 6 {
		return nil, fmt.Errorf("arp: target MAC %s is not 6 bytes", target)
	}
	dst := target
	if a.Op == ARPRequest {
		dst = Broadcast
	}
	b := make([]byte, ethHeaderLen+arpLen)
	putEthernet(b, Ethernet{Dst: dst, Src: a.SenderMAC, EtherType: EtherTypeARP})
	p := b[ethHeaderLen:]
	binary.BigEndian.PutUint16(p[0:2], 1) // Ethernet
	binary.BigEndian.PutUint16(p[2:4], EtherTypeIPv4)
	p[4], p[5] = 6, 4
	binary.BigEndian.PutUint16(p[6:8], a.Op)
	copy(p[8:14], a.SenderMAC)
	ip := a.SenderIP.As4()
	copy(p[14:18], ip[:])
	copy(p[18:24], target)
	ip = a.TargetIP.As4()
	copy(p[24:28], ip[:])
	return pad(b), nil
}

// ParseARP decodes the ARP payload of an Ethernet frame.
func ParseARP(p []byte) (ARP, error) {
	if len(p) < arpLen {
		return ARP{}, fmt.Errorf("arp: %w (%d bytes)", errShort, len(p))
	}
	if binary.BigEndian.Uint16(p[0:2]) != 1 || binary.BigEndian.Uint16(p[2:4]) != EtherTypeIPv4 || p[4] != 6 || p[5] != 4 {
		return ARP{}, fmt.Errorf("arp: not IPv4 over Ethernet")
	}
	return ARP{
		Op:        binary.BigEndian.Uint16(p[6:8]),
		SenderMAC: net.HardwareAddr(append([]byte(nil), p[8:14]...)),
		SenderIP:  netip.AddrFrom4([4]byte(p[14:18])),
		TargetMAC: net.HardwareAddr(append([]byte(nil), p[18:24]...)),
		TargetIP:  netip.AddrFrom4([4]byte(p[24:28])),
	}, nil
}

// EncodeICMPEcho builds an Ethernet frame with an IPv4 packet carrying an
// ICMP echo message; both checksums are filled in.
func EncodeICMPEcho(eth Ethernet, ip IPv4, icmp ICMPEcho) ([]byte, error) {
	if !ip.Src.Is4() || !ip.Dst.Is4() {
		return nil, fmt.Errorf("icmp: need IPv4 addresses")
	}
	if len(eth.Dst) != 6 || len(eth.Src) != 6 {
		return nil, fmt.Errorf("icmp: need 6-byte MACs")
	}
	total := ipv4HeaderLen + icmpEchoLen + len(icmp.Data)
	if total > 0xffff {
		return nil, fmt.Errorf("icmp: payload too large")
	}
	eth.EtherType = EtherTypeIPv4
	b := make([]byte, ethHeaderLen+total)
	putEthernet(b, eth)
	h := b[ethHeaderLen : ethHeaderLen+ipv4HeaderLen]
	h[0] = 0x45
	h[1] = ip.TOS
	binary.BigEndian.PutUint16(h[2:4], uint16(total))
	binary.BigEndian.PutUint16(h[4:6], ip.ID)
	binary.BigEndian.PutUint16(h[6:8], 0x4000) // DF
	ttl := ip.TTL
	if ttl == 0 {
		ttl = 64
	}
	h[8] = ttl
	h[9] = ProtoICMP
	src, dst := ip.Src.As4(), ip.Dst.As4()
	copy(h[12:16], src[:])
	copy(h[16:20], dst[:])
	binary.BigEndian.PutUint16(h[10:12], Checksum(h))

	m := b[ethHeaderLen+ipv4HeaderLen:]
	m[0], m[1] = icmp.Type, icmp.Code
	binary.BigEndian.PutUint16(m[4:6], icmp.ID)
	binary.BigEndian.PutUint16(m[6:8], icmp.Seq)
	copy(m[8:], icmp.Data)
	binary.BigEndian.PutUint16(m[2:4], Checksum(m))
	return pad(b), nil
}

// ParseIPv4 decodes an IPv4 header (verifying its checksum) and returns the
// payload bounded by the total length (Ethernet padding is dropped).
func ParseIPv4(p []byte) (IPv4, []byte, error) {
	if len(p) < ipv4HeaderLen {
		return IPv4{}, nil, fmt.Errorf("ipv4: %w (%d bytes)", errShort, len(p))
	}
	if p[0]>>4 != 4 {
		return IPv4{}, nil, fmt.Errorf("ipv4: version %d", p[0]>>4)
	}
	ihl := int(p[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(p[2:4]))
	if ihl < ipv4HeaderLen || total < ihl || total > len(p) {
		return IPv4{}, nil, fmt.Errorf("ipv4: bad lengths (ihl %d, total %d, have %d)", ihl, total, len(p))
	}
	if Checksum(p[:ihl]) != 0 {
		return IPv4{}, nil, fmt.Errorf("ipv4: bad header checksum")
	}
	if frag := binary.BigEndian.Uint16(p[6:8]); frag&0x3fff != 0 {
		return IPv4{}, nil, fmt.Errorf("ipv4: fragments are not supported")
	}
	h := IPv4{
		TOS:      p[1],
		ID:       binary.BigEndian.Uint16(p[4:6]),
		TTL:      p[8],
		Protocol: p[9],
		Src:      netip.AddrFrom4([4]byte(p[12:16])),
		Dst:      netip.AddrFrom4([4]byte(p[16:20])),
	}
	return h, p[ihl:total], nil
}

// ParseICMPEcho decodes an ICMP echo request or reply. verify checks the
// ICMP checksum (skip it when the checksum was left to offload).
func ParseICMPEcho(p []byte, verify bool) (ICMPEcho, error) {
	if len(p) < icmpEchoLen {
		return ICMPEcho{}, fmt.Errorf("icmp: %w (%d bytes)", errShort, len(p))
	}
	if verify && Checksum(p) != 0 {
		return ICMPEcho{}, fmt.Errorf("icmp: bad checksum")
	}
	m := ICMPEcho{Type: p[0], Code: p[1], ID: binary.BigEndian.Uint16(p[4:6]), Seq: binary.BigEndian.Uint16(p[6:8])}
	if m.Type != ICMPEchoRequest && m.Type != ICMPEchoReply {
		return ICMPEcho{}, fmt.Errorf("icmp: type %d is not an echo", m.Type)
	}
	m.Data = append([]byte(nil), p[icmpEchoLen:]...)
	return m, nil
}

// Virtio-net header (struct virtio_net_hdr / virtio_net_hdr_mrg_rxbuf) as a
// TAP opened with IFF_VNET_HDR prepends to every frame.
const (
	VnetHdrLen    = 10 // legacy header
	VnetHdrMrgLen = 12 // with num_buffers (virtio 1.0, mergeable rx buffers)

	vnetFlagNeedsCsum = 1
)

// VnetHdr is a decoded virtio-net header.
type VnetHdr struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16
	GSOSize    uint16
	CsumStart  uint16
	CsumOffset uint16
	NumBuffers uint16 // only with the 12-byte header
}

// NeedsCsum says the L4 checksum was left to the receiver (partial checksum).
func (h VnetHdr) NeedsCsum() bool { return h.Flags&vnetFlagNeedsCsum != 0 }

// ParseVnetHdr splits a TAP read into the header (size hdrLen: 0, 10 or 12)
// and the Ethernet frame. Fields are little-endian (virtio 1.0; the TAP's
// default on little-endian hosts).
func ParseVnetHdr(b []byte, hdrLen int) (VnetHdr, []byte, error) {
	if hdrLen == 0 {
		return VnetHdr{}, b, nil
	}
	if hdrLen != VnetHdrLen && hdrLen != VnetHdrMrgLen {
		return VnetHdr{}, nil, fmt.Errorf("vnet header: size %d is not 10 or 12", hdrLen)
	}
	if len(b) < hdrLen {
		return VnetHdr{}, nil, fmt.Errorf("vnet header: %w (%d bytes)", errShort, len(b))
	}
	h := VnetHdr{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     binary.LittleEndian.Uint16(b[2:4]),
		GSOSize:    binary.LittleEndian.Uint16(b[4:6]),
		CsumStart:  binary.LittleEndian.Uint16(b[6:8]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:10]),
	}
	if hdrLen == VnetHdrMrgLen {
		h.NumBuffers = binary.LittleEndian.Uint16(b[10:12])
	}
	return h, b[hdrLen:], nil
}

// PrependVnetHdr returns frame behind an all-zero virtio-net header of the
// given size (no offload: the frame is complete, checksums filled in).
func PrependVnetHdr(frame []byte, hdrLen int) []byte {
	out := make([]byte, hdrLen+len(frame))
	copy(out[hdrLen:], frame)
	return out
}
