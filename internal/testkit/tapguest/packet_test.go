package tapguest

import (
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestChecksum(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want uint16
	}{
		// RFC 1071 §3 example: 0001 f203 f4f5 f6f7 sums to 0xddf2, checksum 0x220d.
		{"rfc1071", "0001f203f4f5f6f7", 0x220d},
		{"odd length pads with zero", "0001f203f4f5f6", 0x2304},
		{"all zero", "00000000", 0xffff},
		// A real IPv4 header (from Wikipedia's checksum example) with its checksum b861.
		{"ipv4 header verifies to 0", "450000730000400040110000c0a80001c0a800c7", 0xb861},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Checksum(unhex(t, tc.in)); got != tc.want {
				t.Fatalf("Checksum(%s) = %#04x, want %#04x", tc.in, got, tc.want)
			}
		})
	}
	hdr := unhex(t, "45000073000040004011b861c0a80001c0a800c7")
	if got := Checksum(hdr); got != 0 {
		t.Fatalf("checksum over a header with a correct checksum = %#04x, want 0", got)
	}
}

func TestEncodeARPRequestWireFormat(t *testing.T) {
	src := mustMAC(t, "02:00:00:00:00:02")
	frame, err := EncodeARP(ARP{Op: ARPRequest, SenderMAC: src, SenderIP: netip.MustParseAddr("10.206.1.2"), TargetIP: netip.MustParseAddr("10.206.1.1")})
	if err != nil {
		t.Fatal(err)
	}
	want := unhex(t, "ffffffffffff 020000000002 0806"+
		"0001 0800 06 04 0001 020000000002 0ace0102 000000000000 0ace0101")
	if len(frame) != 60 {
		t.Fatalf("frame length %d, want 60 (padded to the Ethernet minimum)", len(frame))
	}
	if !bytes.Equal(frame[:len(want)], want) {
		t.Fatalf("frame\n got %x\nwant %x", frame[:len(want)], want)
	}
	if !bytes.Equal(frame[len(want):], make([]byte, 60-len(want))) {
		t.Fatalf("padding is not zero: %x", frame[len(want):])
	}
}

func TestARPRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      ARP
		wantDst string
	}{
		{"request", ARP{Op: ARPRequest, SenderMAC: mustMAC(t, "02:aa:bb:cc:dd:01"), SenderIP: netip.MustParseAddr("10.206.0.2"), TargetIP: netip.MustParseAddr("10.206.0.1")}, "ff:ff:ff:ff:ff:ff"},
		{"reply", ARP{Op: ARPReply, SenderMAC: mustMAC(t, "02:aa:bb:cc:dd:01"), SenderIP: netip.MustParseAddr("10.206.0.2"), TargetMAC: mustMAC(t, "02:11:22:33:44:55"), TargetIP: netip.MustParseAddr("10.206.0.1")}, "02:11:22:33:44:55"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame, err := EncodeARP(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			eth, payload, err := ParseEthernet(frame)
			if err != nil {
				t.Fatal(err)
			}
			if eth.Dst.String() != tc.wantDst || eth.Src.String() != tc.in.SenderMAC.String() || eth.EtherType != EtherTypeARP {
				t.Fatalf("ethernet header %+v", eth)
			}
			got, err := ParseARP(payload)
			if err != nil {
				t.Fatal(err)
			}
			if got.Op != tc.in.Op || got.SenderIP != tc.in.SenderIP || got.TargetIP != tc.in.TargetIP || got.SenderMAC.String() != tc.in.SenderMAC.String() {
				t.Fatalf("round trip: got %+v, want %+v", got, tc.in)
			}
			if tc.in.Op == ARPReply && got.TargetMAC.String() != tc.in.TargetMAC.String() {
				t.Fatalf("target MAC %s, want %s", got.TargetMAC, tc.in.TargetMAC)
			}
		})
	}
}

func TestEncodeARPRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   ARP
	}{
		{"short MAC", ARP{Op: ARPRequest, SenderMAC: net.HardwareAddr{1, 2, 3}, SenderIP: netip.MustParseAddr("10.0.0.1"), TargetIP: netip.MustParseAddr("10.0.0.2")}},
		{"ipv6 sender", ARP{Op: ARPRequest, SenderMAC: make(net.HardwareAddr, 6), SenderIP: netip.MustParseAddr("fd00::1"), TargetIP: netip.MustParseAddr("10.0.0.2")}},
		{"no target", ARP{Op: ARPRequest, SenderMAC: make(net.HardwareAddr, 6), SenderIP: netip.MustParseAddr("10.0.0.1")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := EncodeARP(tc.in); err == nil {
				t.Fatal("EncodeARP accepted it")
			}
		})
	}
}

func TestParseARPRejects(t *testing.T) {
	good, _ := EncodeARP(ARP{Op: ARPRequest, SenderMAC: make(net.HardwareAddr, 6), SenderIP: netip.MustParseAddr("10.0.0.1"), TargetIP: netip.MustParseAddr("10.0.0.2")})
	p := good[ethHeaderLen:]
	if _, err := ParseARP(p[:27]); err == nil {
		t.Fatal("short ARP accepted")
	}
	bad := append([]byte(nil), p...)
	bad[1] = 6 // hardware type 6 (IEEE 802)
	if _, err := ParseARP(bad); err == nil {
		t.Fatal("non-Ethernet ARP accepted")
	}
}

func TestEncodeICMPEchoWireFormat(t *testing.T) {
	frame, err := EncodeICMPEcho(
		Ethernet{Dst: mustMAC(t, "02:00:00:00:00:01"), Src: mustMAC(t, "02:00:00:00:00:02")},
		IPv4{ID: 0x1234, Src: netip.MustParseAddr("10.206.1.2"), Dst: netip.MustParseAddr("10.206.1.1")},
		ICMPEcho{Type: ICMPEchoRequest, ID: 0xabcd, Seq: 1, Data: []byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	// IP header: 45 00 len=001e id=1234 flags=4000(DF) ttl=40 proto=01 csum src dst
	ipHdr := frame[14:34]
	wantNoCsum := unhex(t, "4500001e 1234 4000 40 01 0000 0ace0102 0ace0101")
	gotNoCsum := append([]byte(nil), ipHdr...)
	gotNoCsum[10], gotNoCsum[11] = 0, 0
	if !bytes.Equal(gotNoCsum, wantNoCsum) {
		t.Fatalf("ip header\n got %x\nwant %x (checksum zeroed)", gotNoCsum, wantNoCsum)
	}
	if Checksum(ipHdr) != 0 {
		t.Fatalf("ip header checksum does not verify: %x", ipHdr)
	}
	icmp := frame[34 : 34+10]
	if icmp[0] != 8 || icmp[1] != 0 || !bytes.Equal(icmp[4:], unhex(t, "abcd00016869")) {
		t.Fatalf("icmp %x", icmp)
	}
	if Checksum(icmp) != 0 {
		t.Fatalf("icmp checksum does not verify: %x", icmp)
	}
	if !bytes.Equal(frame[:14], unhex(t, "020000000001 020000000002 0800")) {
		t.Fatalf("ethernet header %x", frame[:14])
	}
	if len(frame) != 60 {
		t.Fatalf("frame length %d, want 60", len(frame))
	}
}

func TestICMPEchoRoundTrip(t *testing.T) {
	data := bytes.Repeat([]byte{0x5a}, 56)
	for _, typ := range []uint8{ICMPEchoRequest, ICMPEchoReply} {
		frame, err := EncodeICMPEcho(
			Ethernet{Dst: mustMAC(t, "02:00:00:00:00:01"), Src: mustMAC(t, "02:00:00:00:00:02")},
			IPv4{Src: netip.MustParseAddr("10.206.1.2"), Dst: netip.MustParseAddr("10.206.1.1")},
			ICMPEcho{Type: typ, ID: 7, Seq: 99, Data: data})
		if err != nil {
			t.Fatal(err)
		}
		eth, payload, err := ParseEthernet(frame)
		if err != nil || eth.EtherType != EtherTypeIPv4 {
			t.Fatalf("ethernet: %+v %v", eth, err)
		}
		ip, body, err := ParseIPv4(payload)
		if err != nil {
			t.Fatal(err)
		}
		if ip.Src.String() != "10.206.1.2" || ip.Dst.String() != "10.206.1.1" || ip.Protocol != ProtoICMP || ip.TTL != 64 {
			t.Fatalf("ip %+v", ip)
		}
		m, err := ParseICMPEcho(body, true)
		if err != nil {
			t.Fatal(err)
		}
		if m.Type != typ || m.ID != 7 || m.Seq != 99 || !bytes.Equal(m.Data, data) {
			t.Fatalf("icmp %+v", m)
		}
	}
}

func TestParseIPv4TrimsPaddingAndRejectsBadInput(t *testing.T) {
	frame, _ := EncodeICMPEcho(
		Ethernet{Dst: make(net.HardwareAddr, 6), Src: make(net.HardwareAddr, 6)},
		IPv4{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2")},
		ICMPEcho{Type: ICMPEchoRequest})
	p := frame[ethHeaderLen:] // 46 bytes: 28 of packet + 18 of padding
	_, body, err := ParseIPv4(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(body) != icmpEchoLen {
		t.Fatalf("payload %d bytes, want %d (padding must be dropped)", len(body), icmpEchoLen)
	}
	for _, tc := range []struct {
		name   string
		mutate func([]byte)
	}{
		{"bad checksum", func(b []byte) { b[10] ^= 0xff }},
		{"version 6", func(b []byte) { b[0] = 0x65 }},
		{"total too long", func(b []byte) { b[2], b[3] = 0x05, 0xdc }},
		{"fragment", func(b []byte) { b[6], b[7] = 0x20, 0x00 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := append([]byte(nil), p...)
			tc.mutate(b)
			if _, _, err := ParseIPv4(b); err == nil {
				t.Fatal("accepted")
			}
		})
	}
	if _, err := ParseICMPEcho([]byte{8, 0, 0, 0, 0, 0, 0, 1}, true); err == nil {
		t.Fatal("bad ICMP checksum accepted")
	}
	if _, err := ParseICMPEcho([]byte{8, 0, 0, 0, 0, 0, 0, 1}, false); err != nil {
		t.Fatalf("unverified ICMP rejected: %v", err)
	}
	if _, err := ParseICMPEcho([]byte{3, 1, 0xfc, 0xfe, 0, 0, 0, 0}, true); err == nil {
		t.Fatal("destination-unreachable accepted as echo")
	}
}

func TestVnetHdr(t *testing.T) {
	frame := []byte{1, 2, 3}
	for _, n := range []int{VnetHdrLen, VnetHdrMrgLen} {
		b := PrependVnetHdr(frame, n)
		if len(b) != n+3 || !bytes.Equal(b[:n], make([]byte, n)) || !bytes.Equal(b[n:], frame) {
			t.Fatalf("PrependVnetHdr(%d) = %x", n, b)
		}
		h, f, err := ParseVnetHdr(b, n)
		if err != nil || h != (VnetHdr{}) || !bytes.Equal(f, frame) {
			t.Fatalf("ParseVnetHdr(%d): %+v %x %v", n, h, f, err)
		}
	}
	// A header from the kernel with NEEDS_CSUM, csum_start 34, offset 16,
	// GSO none, num_buffers 1 (little-endian).
	raw := unhex(t, "01 00 3600 0000 2200 1000 0100 aabb")
	h, f, err := ParseVnetHdr(raw, VnetHdrMrgLen)
	if err != nil {
		t.Fatal(err)
	}
	want := VnetHdr{Flags: 1, HdrLen: 0x36, CsumStart: 34, CsumOffset: 16, NumBuffers: 1}
	if h != want || !h.NeedsCsum() || !bytes.Equal(f, []byte{0xaa, 0xbb}) {
		t.Fatalf("got %+v %x", h, f)
	}
	h, f, err = ParseVnetHdr(raw, VnetHdrLen)
	if err != nil || h.NumBuffers != 0 || len(f) != 4 {
		t.Fatalf("10-byte header: %+v %x %v", h, f, err)
	}
	if _, _, err := ParseVnetHdr(raw[:5], VnetHdrLen); err == nil {
		t.Fatal("short read accepted")
	}
	if _, _, err := ParseVnetHdr(raw, 11); err == nil {
		t.Fatal("size 11 accepted")
	}
	if _, f, _ := ParseVnetHdr(raw, 0); len(f) != len(raw) {
		t.Fatal("no-header mode must return the input")
	}
}
