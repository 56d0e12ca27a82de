// Package tapguest is a guest stand-in for data-path tests and the demo: it
// opens a TAP exactly as a VMM does (inside the sandbox netns, by name, with
// IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, IFF_MULTI_QUEUE when the TAP is multiqueue)
// and then behaves as a minimal guest with a given MAC, IPs and gateways:
// over IPv4 it answers ARP requests for its IP and ICMP echo requests to it;
// over IPv6 it answers neighbour solicitations for its address and ICMPv6
// echo requests to it; and it can itself resolve and ping its gateways
// (ARP, or neighbour discovery).
package tapguest

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes the guest.
type Config struct {
	NetnsPath  string           // netns holding the TAP ("" = the caller's)
	Tap        string           // TAP name
	MAC        net.HardwareAddr // the guest's MAC (with tc redirect: the veth's MAC)
	IP         netip.Prefix     // the guest's IPv4 address and prefix, e.g. 10.206.0.2/24 (optional with IP6)
	Gateway    netip.Addr       // IPv4 default gateway
	IP6        netip.Prefix     // the guest's IPv6 address and prefix, e.g. fd00:206::2/64 (optional)
	Gateway6   netip.Addr       // IPv6 default gateway
	VnetHdrLen int              // 10 (default), 12, or -1 for a TAP without IFF_VNET_HDR
	MultiQueue bool             // open with IFF_MULTI_QUEUE (the other mode is tried when refused)
	// RetryInterval is how often ARP requests and echo requests are repeated
	// while waiting for an answer (default 200 ms).
	RetryInterval time.Duration
	Logger        *slog.Logger // nil: no logging
	// Opener, when set, opens the queue instead of OpenTap (e.g.
	// OpenMacvtap); NetnsPath, VnetHdrLen and MultiQueue are then unused.
	Opener func() (*Tap, error)
}

// Stats counts the guest's traffic.
type Stats struct {
	FramesIn       uint64 // frames read from the TAP
	FramesOut      uint64 // frames written to the TAP
	ARPAnswered    uint64 // ARP requests for our IP we replied to
	EchoAnswered   uint64 // ICMP echo requests to our IP we replied to
	ARPReplies     uint64 // ARP replies received for our requests
	EchoReplies    uint64 // ICMP echo replies received for our requests
	Ignored        uint64 // frames not for us or not understood
	MalformedIn    uint64 // frames that failed to parse
	LastEchoSource string // source IP of the last echo request answered
	NSAnswered     uint64 // IPv6 neighbour solicitations for our address we answered
	NAReceived     uint64 // IPv6 neighbour advertisements received for our solicitations
	Echo6Answered  uint64 // ICMPv6 echo requests to our address we replied to
	Echo6Replies   uint64 // ICMPv6 echo replies received for our requests
	LastEcho6From  string // source of the last ICMPv6 echo request answered
}

// Guest is a running guest stand-in. Close stops it and releases the TAP fd.
type Guest struct {
	cfg Config
	tap *Tap
	log *slog.Logger

	framesIn, framesOut, arpAnswered, echoAnswered atomic.Uint64
	arpReplies, echoReplies, ignored, malformed    atomic.Uint64
	nsAnswered, naReceived, echo6Answered          atomic.Uint64
	echo6Replies                                   atomic.Uint64

	mu        sync.Mutex
	neigh     map[netip.Addr]net.HardwareAddr
	arpWait   map[netip.Addr][]chan net.HardwareAddr
	echoWait  map[uint32]chan uint32 // id<<16|seq → the waiting Ping
	lastEcho  netip.Addr
	lastEcho6 netip.Addr
	ndWait    map[netip.Addr][]chan net.HardwareAddr
	echoID    uint16
	echoSeq   uint16
	ipID      uint16
	closed    bool
	done      chan struct{}
	readErr   error
	closeOnce sync.Once
}

// Open opens the TAP and starts answering ARP and ICMP echo requests.
func Open(cfg Config) (*Guest, error) {
	if len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("guest: MAC %q is not a 6-byte Ethernet address", cfg.MAC)
	}
	if !cfg.IP.IsValid() && !cfg.IP6.IsValid() {
		return nil, fmt.Errorf("guest: neither an IPv4 nor an IPv6 address configured")
	}
	if cfg.IP.IsValid() && !cfg.IP.Addr().Is4() {
		return nil, fmt.Errorf("guest: IP %v is not an IPv4 prefix", cfg.IP)
	}
	if cfg.Gateway.IsValid() && !cfg.Gateway.Is4() {
		return nil, fmt.Errorf("guest: gateway %v is not IPv4", cfg.Gateway)
	}
	if err := checkIPv6Config(cfg); err != nil {
		return nil, err
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = 200 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	open := cfg.Opener
	if open == nil {
		open = func() (*Tap, error) {
			return OpenTap(TapOptions{NetnsPath: cfg.NetnsPath, Name: cfg.Tap, VnetHdrLen: cfg.VnetHdrLen, MultiQueue: cfg.MultiQueue})
		}
	}
	tap, err := open()
	if err != nil {
		return nil, fmt.Errorf("guest %s: %w", cfg.IP, err)
	}
	var idb [2]byte
	_, _ = rand.Read(idb[:])
	g := &Guest{
		cfg:      cfg,
		tap:      tap,
		log:      log.With("tap", cfg.Tap, "ip", cfg.IP.String()),
		neigh:    map[netip.Addr]net.HardwareAddr{},
		arpWait:  map[netip.Addr][]chan net.HardwareAddr{},
		echoWait: map[uint32]chan uint32{},
		ndWait:   map[netip.Addr][]chan net.HardwareAddr{},
		echoID:   binary.BigEndian.Uint16(idb[:]),
		done:     make(chan struct{}),
	}
	go g.readLoop()
	return g, nil
}

// Tap is the open TAP queue.
func (g *Guest) Tap() *Tap { return g.tap }

// Stats returns the counters.
func (g *Guest) Stats() Stats {
	g.mu.Lock()
	last, last6 := "", ""
	if g.lastEcho.IsValid() {
		last = g.lastEcho.String()
	}
	if g.lastEcho6.IsValid() {
		last6 = g.lastEcho6.String()
	}
	g.mu.Unlock()
	return Stats{
		FramesIn: g.framesIn.Load(), FramesOut: g.framesOut.Load(),
		ARPAnswered: g.arpAnswered.Load(), EchoAnswered: g.echoAnswered.Load(),
		ARPReplies: g.arpReplies.Load(), EchoReplies: g.echoReplies.Load(),
		Ignored: g.ignored.Load(), MalformedIn: g.malformed.Load(),
		LastEchoSource: last,
		NSAnswered:     g.nsAnswered.Load(), NAReceived: g.naReceived.Load(),
		Echo6Answered: g.echo6Answered.Load(), Echo6Replies: g.echo6Replies.Load(),
		LastEcho6From: last6,
	}
}

// Close stops the guest and releases the TAP fd. It is safe to call twice.
func (g *Guest) Close() error {
	var err error
	g.closeOnce.Do(func() {
		g.mu.Lock()
		g.closed = true
		g.mu.Unlock()
		err = g.tap.Close()
		<-g.done
	})
	return err
}

func (g *Guest) readLoop() {
	defer close(g.done)
	buf := make([]byte, 65536+VnetHdrMrgLen)
	for {
		hdr, frame, err := g.tap.ReadFrame(buf)
		if err != nil {
			g.mu.Lock()
			closed := g.closed
			if !closed {
				g.readErr = err
			}
			g.mu.Unlock()
			if !closed {
				g.log.Error("tap read failed", "err", err)
			}
			return
		}
		g.framesIn.Add(1)
		g.handle(hdr, frame)
	}
}

func (g *Guest) handle(hdr VnetHdr, frame []byte) {
	eth, payload, err := ParseEthernet(frame)
	if err != nil {
		g.malformed.Add(1)
		return
	}
	if !macEqual(eth.Dst, g.cfg.MAC) && !macEqual(eth.Dst, Broadcast) && !isIPv6Multicast(eth.Dst) {
		g.ignored.Add(1)
		return
	}
	switch eth.EtherType {
	case EtherTypeARP:
		if !g.cfg.IP.IsValid() {
			g.ignored.Add(1)
			return
		}
		a, err := ParseARP(payload)
		if err != nil {
			g.malformed.Add(1)
			return
		}
		g.handleARP(a)
	case EtherTypeIPv4:
		ip, body, err := ParseIPv4(payload)
		if err != nil {
			g.malformed.Add(1)
			return
		}
		if ip.Dst != g.cfg.IP.Addr() || ip.Protocol != ProtoICMP {
			g.ignored.Add(1)
			return
		}
		m, err := ParseICMPEcho(body, !hdr.NeedsCsum())
		if err != nil {
			g.ignored.Add(1)
			return
		}
		g.handleEcho(eth, ip, m)
	case EtherTypeIPv6:
		g.handleIPv6(hdr, eth, payload)
	default:
		g.ignored.Add(1)
	}
}

func (g *Guest) handleARP(a ARP) {
	if a.TargetIP != g.cfg.IP.Addr() {
		g.ignored.Add(1)
		return
	}
	switch a.Op {
	case ARPRequest:
		// Learn the asker, as a host stack does, then answer.
		g.learn(a.SenderIP, a.SenderMAC, false)
		frame, err := EncodeARP(ARP{Op: ARPReply, SenderMAC: g.cfg.MAC, SenderIP: g.cfg.IP.Addr(), TargetMAC: a.SenderMAC, TargetIP: a.SenderIP})
		if err != nil {
			g.malformed.Add(1)
			return
		}
		g.sendCounted(frame, &g.arpAnswered)
	case ARPReply:
		// Counted before the waiting Resolve is woken, so its caller sees it.
		g.arpReplies.Add(1)
		g.learn(a.SenderIP, a.SenderMAC, true)
	default:
		g.ignored.Add(1)
	}
}

func (g *Guest) learn(ip netip.Addr, mac net.HardwareAddr, reply bool) {
	if !ip.IsValid() || ip.IsUnspecified() {
		return
	}
	g.mu.Lock()
	g.neigh[ip] = mac
	var waiters []chan net.HardwareAddr
	if reply {
		waiters = g.arpWait[ip]
		delete(g.arpWait, ip)
	}
	g.mu.Unlock()
	for _, w := range waiters {
		w <- mac
	}
}

func (g *Guest) handleEcho(eth Ethernet, ip IPv4, m ICMPEcho) {
	switch m.Type {
	case ICMPEchoRequest:
		frame, err := EncodeICMPEcho(
			Ethernet{Dst: eth.Src, Src: g.cfg.MAC},
			IPv4{ID: g.nextIPID(), Src: g.cfg.IP.Addr(), Dst: ip.Src},
			ICMPEcho{Type: ICMPEchoReply, ID: m.ID, Seq: m.Seq, Data: m.Data})
		if err != nil {
			g.malformed.Add(1)
			return
		}
		g.mu.Lock()
		g.lastEcho = ip.Src
		g.mu.Unlock()
		g.sendCounted(frame, &g.echoAnswered)
	case ICMPEchoReply:
		key := uint32(m.ID)<<16 | uint32(m.Seq)
		g.mu.Lock()
		ch, ok := g.echoWait[key]
		delete(g.echoWait, key)
		g.mu.Unlock()
		if !ok {
			g.ignored.Add(1)
			return
		}
		g.echoReplies.Add(1)
		select {
		case ch <- key:
		default: // the Ping already has an answer
		}
	}
}

func (g *Guest) nextIPID() uint16 {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ipID++
	return g.ipID
}

// send writes a frame. Counters go up before the write, so whoever sees
// the frame's effect (a reply reaching the host) also sees the count; a
// failed write takes them back.
func (g *Guest) send(frame []byte) error { return g.sendCounted(frame, nil) }

func (g *Guest) sendCounted(frame []byte, counter *atomic.Uint64) error {
	g.framesOut.Add(1)
	if counter != nil {
		counter.Add(1)
	}
	if err := g.tap.WriteFrame(frame); err != nil {
		g.framesOut.Add(^uint64(0))
		if counter != nil {
			counter.Add(^uint64(0))
		}
		g.log.Warn("send failed", "err", err)
		return err
	}
	return nil
}

// ErrClosed is returned by requests made after Close or when the TAP read failed.
var ErrClosed = errors.New("guest stand-in closed")

func (g *Guest) alive() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	if g.readErr != nil {
		return fmt.Errorf("%w: tap read: %v", ErrClosed, g.readErr)
	}
	return nil
}

// Resolve finds ip's MAC with an ARP exchange (it always asks, even when
// the neighbour is known; the request is repeated every RetryInterval) until
// a reply arrives or ctx is done.
func (g *Guest) Resolve(ctx context.Context, ip netip.Addr) (net.HardwareAddr, error) {
	if !ip.Is4() {
		return nil, fmt.Errorf("resolve %v: not IPv4", ip)
	}
	ch := make(chan net.HardwareAddr, 1)
	g.mu.Lock()
	g.arpWait[ip] = append(g.arpWait[ip], ch)
	g.mu.Unlock()
	defer g.dropARPWaiter(ip, ch)

	req, err := EncodeARP(ARP{Op: ARPRequest, SenderMAC: g.cfg.MAC, SenderIP: g.cfg.IP.Addr(), TargetIP: ip})
	if err != nil {
		return nil, fmt.Errorf("resolve %v: %w", ip, err)
	}
	tick := time.NewTicker(g.cfg.RetryInterval)
	defer tick.Stop()
	sent := 0
	for {
		if err := g.alive(); err != nil {
			return nil, fmt.Errorf("resolve %v: %w", ip, err)
		}
		if err := g.send(req); err != nil {
			return nil, fmt.Errorf("resolve %v: %w", ip, err)
		}
		sent++
		select {
		case mac := <-ch:
			return mac, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("resolve %v: no ARP reply to %d requests sent through tap %s: %w", ip, sent, g.cfg.Tap, ctx.Err())
		case <-g.done:
			return nil, fmt.Errorf("resolve %v: %w", ip, ErrClosed)
		case <-tick.C:
		}
	}
}

func (g *Guest) dropARPWaiter(ip netip.Addr, ch chan net.HardwareAddr) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ws := g.arpWait[ip]
	for i, w := range ws {
		if w == ch {
			g.arpWait[ip] = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(g.arpWait[ip]) == 0 {
		delete(g.arpWait, ip)
	}
}

// ResolveGateway finds the gateway's MAC with ARP.
func (g *Guest) ResolveGateway(ctx context.Context) (net.HardwareAddr, error) {
	if !g.cfg.Gateway.IsValid() {
		return nil, fmt.Errorf("resolve gateway: no gateway configured")
	}
	return g.Resolve(ctx, g.cfg.Gateway)
}

// nextHop is the address whose MAC a packet to dst is sent to.
func (g *Guest) nextHop(dst netip.Addr) (netip.Addr, error) {
	if g.cfg.IP.Masked().Contains(dst) {
		return dst, nil
	}
	if !g.cfg.Gateway.IsValid() {
		return netip.Addr{}, fmt.Errorf("%v is off-link and no gateway is configured", dst)
	}
	return g.cfg.Gateway, nil
}

// Ping sends ICMP echo requests to dst (resolving the next hop with ARP
// first), one every RetryInterval, until a reply arrives or ctx is done. It
// returns the round-trip time of the echo that was answered.
func (g *Guest) Ping(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	if dst.Is6() && !dst.Is4In6() {
		return g.ping6(ctx, dst)
	}
	if !dst.Is4() || !g.cfg.IP.IsValid() {
		return 0, fmt.Errorf("ping %v: not IPv4, or the guest has no IPv4 address", dst)
	}
	hop, err := g.nextHop(dst)
	if err != nil {
		return 0, fmt.Errorf("ping %v: %w", dst, err)
	}
	g.mu.Lock()
	mac, known := g.neigh[hop]
	g.mu.Unlock()
	if !known {
		if mac, err = g.Resolve(ctx, hop); err != nil {
			return 0, fmt.Errorf("ping %v: %w", dst, err)
		}
	}
	payload := []byte("vmnic tapguest ping")
	tick := time.NewTicker(g.cfg.RetryInterval)
	defer tick.Stop()
	replied := make(chan uint32, 1)
	sent := map[uint32]time.Time{}
	defer func() {
		g.mu.Lock()
		for key := range sent {
			delete(g.echoWait, key)
		}
		g.mu.Unlock()
	}()
	for {
		if err := g.alive(); err != nil {
			return 0, fmt.Errorf("ping %v: %w", dst, err)
		}
		g.mu.Lock()
		g.echoSeq++
		id, seq := g.echoID, g.echoSeq
		key := uint32(id)<<16 | uint32(seq)
		g.echoWait[key] = replied
		g.mu.Unlock()
		frame, err := EncodeICMPEcho(
			Ethernet{Dst: mac, Src: g.cfg.MAC},
			IPv4{ID: g.nextIPID(), Src: g.cfg.IP.Addr(), Dst: dst},
			ICMPEcho{Type: ICMPEchoRequest, ID: id, Seq: seq, Data: payload})
		if err != nil {
			return 0, fmt.Errorf("ping %v: %w", dst, err)
		}
		sent[key] = time.Now()
		if err := g.send(frame); err != nil {
			return 0, fmt.Errorf("ping %v: %w", dst, err)
		}
		select {
		case key := <-replied:
			return time.Since(sent[key]), nil
		case <-ctx.Done():
			return 0, fmt.Errorf("ping %v: no echo reply to %d requests sent through tap %s (via %v at %s): %w", dst, len(sent), g.cfg.Tap, hop, mac, ctx.Err())
		case <-g.done:
			return 0, fmt.Errorf("ping %v: %w", dst, ErrClosed)
		case <-tick.C:
		}
	}
}

// PingGateway resolves the gateway with ARP and pings it until a reply
// arrives or ctx is done.
func (g *Guest) PingGateway(ctx context.Context) error {
	if !g.cfg.Gateway.IsValid() {
		return fmt.Errorf("ping gateway: no gateway configured")
	}
	_, err := g.Ping(ctx, g.cfg.Gateway)
	return err
}

func macEqual(a, b net.HardwareAddr) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
