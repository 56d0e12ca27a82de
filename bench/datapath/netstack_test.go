package datapath

import (
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestVnetHeader(t *testing.T) {
	mk := func(payload int, g stack.GSO) *stack.PacketBuffer {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: 54, Payload: buffer.MakeWithData(make([]byte, payload))})
		pkt.TransportHeader().Push(20)
		pkt.NetworkHeader().Push(20)
		pkt.LinkHeader().Push(header.EthernetMinimumSize)
		pkt.GSOOptions = g
		return pkt
	}
	le := binary.LittleEndian
	// No GSO: an all-zero header (checksums complete, nothing to segment).
	p := mk(100, stack.GSO{})
	if h := vnetHeader(p); h != [vnetHdrLen]byte{} {
		t.Errorf("plain packet: header %v, want zeros", h)
	}
	p.DecRef()
	// A GSO super-packet: partial checksum at L4, segments of MSS.
	p = mk(3000, stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1448, L3HdrLen: 20})
	h := vnetHeader(p)
	if h[0] != vnetFlagNeedsCsum || h[1] != vnetGSOTCPv4 || le.Uint16(h[2:]) != 54 || le.Uint16(h[4:]) != 1448 ||
		le.Uint16(h[6:]) != 34 || le.Uint16(h[8:]) != 16 {
		t.Errorf("GSO packet: header %v", h)
	}
	p.DecRef()
	// A GSO-capable packet no longer than its MSS: checksum offload only.
	p = mk(500, stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1448, L3HdrLen: 20})
	if h := vnetHeader(p); h[0] != vnetFlagNeedsCsum || h[1] != 0 || le.Uint16(h[4:]) != 0 {
		t.Errorf("short GSO packet: header %v, want NEEDS_CSUM without segmentation", h)
	}
	p.DecRef()
}
