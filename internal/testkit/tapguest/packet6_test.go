package tapguest

import (
	"bytes"
	"net/netip"
	"testing"
)

func TestSolicitedNodeAndMulticastMAC(t *testing.T) {
	ip := netip.MustParseAddr("fd00:206::12:3456")
	if got := SolicitedNode(ip); got != netip.MustParseAddr("ff02::1:ff12:3456") {
		t.Errorf("SolicitedNode(%v) = %v", ip, got)
	}
	if got := MulticastMAC(netip.MustParseAddr("ff02::1:ff12:3456")).String(); got != "33:33:ff:12:34:56" {
		t.Errorf("MulticastMAC = %s", got)
	}
}

func TestNeighbourSolicitationRoundTrip(t *testing.T) {
	src := mustMAC(t, "02:00:00:00:00:02")
	me, target := netip.MustParseAddr("fd00::2"), netip.MustParseAddr("fd00::1")
	group := SolicitedNode(target)
	frame, err := EncodeICMPv6(Ethernet{Dst: MulticastMAC(group), Src: src}, IPv6{HopLimit: 255, Src: me, Dst: group},
		ICMPv6{Type: ICMPv6NeighSolicit, Body: NDBody(ICMPv6NeighSolicit, 0, target, src)})
	if err != nil {
		t.Fatal(err)
	}
	eth, payload, err := ParseEthernet(frame)
	if err != nil || eth.EtherType != EtherTypeIPv6 || eth.Dst.String() != "33:33:ff:00:00:01" {
		t.Fatalf("ethernet %+v %v", eth, err)
	}
	ip, body, err := ParseIPv6(payload)
	if err != nil || ip.Src != me || ip.Dst != group || ip.HopLimit != 255 || ip.NextHeader != ProtoICMPv6 || len(body) != 32 {
		t.Fatalf("ipv6 %+v (%d bytes) %v", ip, len(body), err)
	}
	// The checksum covers the pseudo-header: a changed source breaks it.
	m, err := ParseICMPv6(ip, body, true)
	if err != nil || m.Type != ICMPv6NeighSolicit {
		t.Fatalf("icmpv6 %+v %v", m, err)
	}
	bad := ip
	bad.Src = netip.MustParseAddr("fd00::3")
	if _, err := ParseICMPv6(bad, body, true); err == nil {
		t.Error("checksum does not cover the pseudo-header")
	}
	nd, err := ParseND(m.Type, m.Body)
	if err != nil || nd.Target != target || !bytes.Equal(nd.LLAddr, src) {
		t.Fatalf("nd %+v %v", nd, err)
	}
	// Truncated option lengths are refused.
	if _, err := ParseND(ICMPv6NeighSolicit, append(m.Body[:20:20], 1, 0)); err == nil {
		t.Error("a zero option length was accepted")
	}
}

func TestEchoBodyRoundTrip(t *testing.T) {
	id, seq, data, err := ParseEchoBody(EchoBody(7, 9, []byte("x")))
	if err != nil || id != 7 || seq != 9 || string(data) != "x" {
		t.Fatalf("%d %d %q %v", id, seq, data, err)
	}
}
