package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/vmnic/vmnic/internal/testkit/tapguest"
)

// The throughput guest: gVisor's netstack (pkg/tcpip) on the TAP's queue
// fds, as a userspace VMM's virtio-net device with guest_csum and
// guest_tso4/6 negotiated sees them.
//
// gVisor's own fdbased link endpoint enables GSO only for socket fds (its
// New() sets the GSO kind under `if isSocket`, pkg/tcpip/link/fdbased/
// endpoint.go at the pinned version), so a TAP fd would get neither a
// virtio-net header nor GSO. tapEndpoint is the small link endpoint that
// does what the fdbased endpoint does for a socket, on a TAP: it reads
// frames behind a 10-byte virtio-net header (struct virtio_net_hdr,
// include/uapi/linux/virtio_net.h), delivers GSO super-frames whole (with
// RX checksum offload, as a virtio-net driver does for VIRTIO_NET_HDR_F_
// NEEDS_CSUM frames), and writes netstack's GSO packets with a header
// saying how the kernel is to segment and checksum them. One reader
// goroutine per queue. Each flow (netstack's per-endpoint packet hash)
// gets the next queue, round robin, the first time it sends — as a guest
// with one flow per vCPU and XPS would; the TAP then steers the flow's
// host → guest frames to that queue too (tun_flow_update /
// tun_automq_select_queue, drivers/net/tun.c).

const (
	vnetHdrLen              = 10 // struct virtio_net_hdr
	vnetFlagNeedsCsum       = 1  // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetGSOTCPv4            = 1  // VIRTIO_NET_HDR_GSO_TCPV4
	vnetGSOTCPv6            = 4  // VIRTIO_NET_HDR_GSO_TCPV6
	netstackGSOMaxSize      = 1 << 16
	guestTCPPort            = 5201
	cmdReceive         byte = 'R' // the host sends until EOF; the guest answers with the byte count
	cmdSend            byte = 'S' // followed by a uint64: the guest sends that many bytes and closes
)

// FrameStats counts the frames the guest read from (RX) and wrote to (TX)
// its TAP queues.
type FrameStats struct {
	RXFrames, RXBytes uint64
	RXSuper           uint64 // frames longer than MTU + Ethernet header: GSO super-frames
	RXMax             uint64
	TXFrames, TXBytes uint64
	TXSuper           uint64
	RXPerQueue        []uint64
}

type tapEndpoint struct {
	queues []*tapguest.Tap
	mtu    uint32
	addr   tcpip.LinkAddress

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	wg         sync.WaitGroup
	closed     atomic.Bool

	rxFrames, rxBytes, rxSuper, rxMax atomic.Uint64
	txFrames, txBytes, txSuper        atomic.Uint64
	rxPerQueue                        []atomic.Uint64

	flowMu    sync.Mutex
	flowQueue map[uint32]int
}

var (
	_ stack.LinkEndpoint = (*tapEndpoint)(nil)
	_ stack.GSOEndpoint  = (*tapEndpoint)(nil)
)

func newTapEndpoint(queues []*tapguest.Tap, mtu int, mac net.HardwareAddr) (*tapEndpoint, error) {
	for _, q := range queues {
		if q.VnetHdrLen() != vnetHdrLen {
			return nil, fmt.Errorf("tap %s: queue has a %d-byte virtio-net header, want %d", q.Name(), q.VnetHdrLen(), vnetHdrLen)
		}
	}
	return &tapEndpoint{queues: queues, mtu: uint32(mtu), addr: tcpip.LinkAddress(mac), rxPerQueue: make([]atomic.Uint64, len(queues)), flowQueue: map[uint32]int{}}, nil
}

func (e *tapEndpoint) stats() FrameStats {
	s := FrameStats{
		RXFrames: e.rxFrames.Load(), RXBytes: e.rxBytes.Load(), RXSuper: e.rxSuper.Load(), RXMax: e.rxMax.Load(),
		TXFrames: e.txFrames.Load(), TXBytes: e.txBytes.Load(), TXSuper: e.txSuper.Load(),
	}
	for i := range e.rxPerQueue {
		s.RXPerQueue = append(s.RXPerQueue, e.rxPerQueue[i].Load())
	}
	return s
}

func (e *tapEndpoint) MTU() uint32                    { return e.mtu }
func (e *tapEndpoint) SetMTU(mtu uint32)              { e.mtu = mtu }
func (e *tapEndpoint) MaxHeaderLength() uint16        { return header.EthernetMinimumSize }
func (e *tapEndpoint) LinkAddress() tcpip.LinkAddress { return e.addr }
func (e *tapEndpoint) SetLinkAddress(a tcpip.LinkAddress) {
	e.addr = a
}
func (e *tapEndpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired | stack.CapabilityRXChecksumOffload
}
func (e *tapEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }
func (e *tapEndpoint) GSOMaxSize() uint32                      { return netstackGSOMaxSize }
func (e *tapEndpoint) SupportedGSO() stack.SupportedGSO        { return stack.HostGSOSupported }
func (e *tapEndpoint) SetOnCloseAction(func())                 {}
func (e *tapEndpoint) Wait()                                   { e.wg.Wait() }

func (e *tapEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

func (e *tapEndpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	first := e.dispatcher == nil && d != nil
	e.dispatcher = d
	e.mu.Unlock()
	if !first {
		return
	}
	for i, q := range e.queues {
		e.wg.Add(1)
		go e.readLoop(i, q)
	}
}

// Close closes the queues; the readers end.
func (e *tapEndpoint) Close() {
	if e.closed.Swap(true) {
		return
	}
	for _, q := range e.queues {
		q.Close()
	}
}

func (e *tapEndpoint) AddHeader(pkt *stack.PacketBuffer) {
	src := pkt.EgressRoute.LocalLinkAddress
	if src == "" {
		src = e.addr
	}
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{SrcAddr: src, DstAddr: pkt.EgressRoute.RemoteLinkAddress, Type: pkt.NetworkProtocolNumber})
}

func (e *tapEndpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	b, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if !ok {
		return false
	}
	pkt.NetworkProtocolNumber = header.Ethernet(b).Type()
	return true
}

func (e *tapEndpoint) readLoop(qi int, q *tapguest.Tap) {
	defer e.wg.Done()
	buf := make([]byte, vnetHdrLen+netstackGSOMaxSize+header.EthernetMinimumSize+64)
	for {
		_, frame, err := q.ReadFrame(buf)
		if err != nil {
			return // closed
		}
		n := uint64(len(frame))
		e.rxFrames.Add(1)
		e.rxBytes.Add(n)
		e.rxPerQueue[qi].Add(1)
		if n > uint64(e.mtu)+header.EthernetMinimumSize {
			e.rxSuper.Add(1)
		}
		for m := e.rxMax.Load(); n > m && !e.rxMax.CompareAndSwap(m, n); m = e.rxMax.Load() {
		}
		if len(frame) < header.EthernetMinimumSize {
			continue
		}
		dst := header.Ethernet(frame).DestinationAddress()
		if dst != e.addr && dst[0]&1 == 0 {
			continue // not for us
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		if !e.ParseHeader(pkt) {
			pkt.DecRef()
			continue
		}
		e.mu.RLock()
		d := e.dispatcher
		e.mu.RUnlock()
		if d != nil {
			d.DeliverNetworkPacket(pkt.NetworkProtocolNumber, pkt)
		}
		pkt.DecRef()
	}
}

// vnetHeader is the virtio-net header for pkt: how the kernel is to
// checksum and segment it (a GSO packet longer than its MSS).
func vnetHeader(pkt *stack.PacketBuffer) [vnetHdrLen]byte {
	var h [vnetHdrLen]byte
	g := pkt.GSOOptions
	if g.Type == stack.GSONone {
		return h
	}
	binary.LittleEndian.PutUint16(h[2:], uint16(pkt.HeaderSize())) // hdr_len
	if g.NeedsCsum {
		h[0] = vnetFlagNeedsCsum
		binary.LittleEndian.PutUint16(h[6:], header.EthernetMinimumSize+g.L3HdrLen) // csum_start
		binary.LittleEndian.PutUint16(h[8:], g.CsumOffset)                          // csum_offset
	}
	if uint16(pkt.Data().Size()) > g.MSS {
		switch g.Type {
		case stack.GSOTCPv4:
			h[1] = vnetGSOTCPv4
		case stack.GSOTCPv6:
			h[1] = vnetGSOTCPv6
		}
		binary.LittleEndian.PutUint16(h[4:], g.MSS) // gso_size
	}
	return h
}

func (e *tapEndpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	var out []byte
	for _, pkt := range pkts.AsSlice() {
		h := vnetHeader(pkt)
		out = append(out[:0], h[:]...)
		for _, s := range pkt.AsSlices() {
			out = append(out, s...)
		}
		q := e.queues[e.queueOf(pkt.Hash)]
		if err := q.WriteRaw(out); err != nil {
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return n, nil
		}
		size := uint64(len(out) - vnetHdrLen)
		e.txFrames.Add(1)
		e.txBytes.Add(size)
		if size > uint64(e.mtu)+header.EthernetMinimumSize {
			e.txSuper.Add(1)
		}
		n++
	}
	return n, nil
}

func (e *tapEndpoint) queueOf(flow uint32) int {
	if len(e.queues) == 1 {
		return 0
	}
	e.flowMu.Lock()
	defer e.flowMu.Unlock()
	q, ok := e.flowQueue[flow]
	if !ok {
		q = len(e.flowQueue) % len(e.queues)
		e.flowQueue[flow] = q
	}
	return q
}

// tcpGuest is a netstack guest serving the throughput protocol on
// guestTCPPort: cmdReceive (count what arrives until EOF, answer with the
// count) and cmdSend (send N bytes, close).
type tcpGuest struct {
	st  *stack.Stack
	ep  *tapEndpoint
	ln  *gonet.TCPListener
	wg  sync.WaitGroup
	err atomic.Pointer[error]
}

// openTCPGuest opens queues TAP queues with open (offloads on when gso)
// and starts the stack with ip/prefix and mac.
func openTCPGuest(open func() (*tapguest.Tap, error), queues int, mtu int, mac net.HardwareAddr, ip netip.Prefix, gso bool) (*tcpGuest, error) {
	var qs []*tapguest.Tap
	closeAll := func() {
		for _, q := range qs {
			q.Close()
		}
	}
	for i := 0; i < queues; i++ {
		q, err := open()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("tcp guest: %w", err)
		}
		qs = append(qs, q)
	}
	off := uint(0)
	if gso {
		off = tapguest.OffloadCsum | tapguest.OffloadTSO4 | tapguest.OffloadTSO6
	}
	if err := qs[0].SetOffload(off); err != nil {
		closeAll()
		return nil, fmt.Errorf("tcp guest: %w", err)
	}
	ep, err := newTapEndpoint(qs, mtu, mac)
	if err != nil {
		closeAll()
		return nil, err
	}
	st := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	g := &tcpGuest{st: st, ep: ep}
	fail := func(what string, e tcpip.Error) (*tcpGuest, error) {
		g.stop()
		return nil, fmt.Errorf("tcp guest: %s: %s", what, e)
	}
	sack := tcpip.TCPSACKEnabled(true)
	mod := tcpip.TCPModerateReceiveBufferOption(true)
	for _, o := range []tcpip.SettableTransportProtocolOption{
		&sack, &mod,
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20},
		&tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20},
	} {
		if e := st.SetTransportProtocolOption(tcp.ProtocolNumber, o); e != nil {
			return fail("tcp option", e)
		}
	}
	if e := st.CreateNIC(1, ep); e != nil {
		return fail("create NIC", e)
	}
	addr := tcpip.AddrFrom4(ip.Addr().As4())
	if e := st.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{Address: addr, PrefixLen: ip.Bits()}}, stack.AddressProperties{}); e != nil {
		return fail("address", e)
	}
	st.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	ln, err := gonet.ListenTCP(st, tcpip.FullAddress{NIC: 1, Addr: addr, Port: guestTCPPort}, ipv4.ProtocolNumber)
	if err != nil {
		g.stop()
		return nil, fmt.Errorf("tcp guest: listen: %w", err)
	}
	g.ln = ln
	g.wg.Add(1)
	go g.serve()
	return g, nil
}

func (g *tcpGuest) serve() {
	defer g.wg.Done()
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			if err := handleGuestConn(c); err != nil && !errors.Is(err, net.ErrClosed) {
				g.err.Store(&err)
			}
		}()
	}
}

var sendChunk = make([]byte, 256<<10)

func handleGuestConn(c net.Conn) error {
	defer c.Close()
	var cmd [1]byte
	if _, err := io.ReadFull(c, cmd[:]); err != nil {
		return err
	}
	switch cmd[0] {
	case cmdReceive:
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return err
		}
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(n))
		_, err = c.Write(b[:])
		return err
	case cmdSend:
		var b [8]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return err
		}
		for left := binary.BigEndian.Uint64(b[:]); left > 0; {
			chunk := sendChunk
			if uint64(len(chunk)) > left {
				chunk = chunk[:left]
			}
			m, err := c.Write(chunk)
			if err != nil {
				return err
			}
			left -= uint64(m)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", cmd[0])
}

// Err is the first error a connection handler hit (nil: none).
func (g *tcpGuest) Err() error {
	if p := g.err.Load(); p != nil {
		return *p
	}
	return nil
}

func (g *tcpGuest) Close() {
	g.ln.Close()
	g.stop()
	g.wg.Wait()
}

// stop ends the readers first (closing the queues), then the stack: a
// reader delivering a packet takes the stack's lock, which Stack.Wait
// holds while it waits for the link endpoint, so the endpoint must be
// idle before.
func (g *tcpGuest) stop() {
	g.ep.Close()
	g.ep.wg.Wait()
	g.st.Close()
	g.st.Wait()
}
