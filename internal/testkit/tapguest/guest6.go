package tapguest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

func checkIPv6Config(cfg Config) error {
	if cfg.IP6.IsValid() && (!cfg.IP6.Addr().Is6() || cfg.IP6.Addr().Is4In6()) {
		return fmt.Errorf("guest: IP6 %v is not an IPv6 prefix", cfg.IP6)
	}
	if cfg.Gateway6.IsValid() && (!cfg.Gateway6.Is6() || cfg.Gateway6.Is4In6()) {
		return fmt.Errorf("guest: gateway6 %v is not IPv6", cfg.Gateway6)
	}
	return nil
}

func isIPv6Multicast(mac net.HardwareAddr) bool {
	return len(mac) == 6 && mac[0] == 0x33 && mac[1] == 0x33
}

// handleIPv6 answers neighbour solicitations for our address (RFC 4861
// §7.2.4) and echo requests to it (RFC 4443 §4.2), and takes the
// advertisements and echo replies our own requests wait for.
func (g *Guest) handleIPv6(hdr VnetHdr, eth Ethernet, payload []byte) {
	if !g.cfg.IP6.IsValid() {
		g.ignored.Add(1)
		return
	}
	ip, body, err := ParseIPv6(payload)
	if err != nil {
		g.malformed.Add(1)
		return
	}
	me := g.cfg.IP6.Addr()
	if ip.NextHeader != ProtoICMPv6 || (ip.Dst != me && ip.Dst != SolicitedNode(me) && ip.Dst != AllNodes) {
		g.ignored.Add(1)
		return
	}
	m, err := ParseICMPv6(ip, body, !hdr.NeedsCsum())
	if err != nil {
		g.malformed.Add(1)
		return
	}
	switch m.Type {
	case ICMPv6NeighSolicit:
		g.handleNS(eth, ip, m)
	case ICMPv6NeighAdvert:
		g.handleNA(ip, m)
	case ICMPv6EchoRequest:
		if ip.Dst != me {
			g.ignored.Add(1)
			return
		}
		id, seq, data, err := ParseEchoBody(m.Body)
		if err != nil {
			g.malformed.Add(1)
			return
		}
		frame, err := EncodeICMPv6(Ethernet{Dst: eth.Src, Src: g.cfg.MAC}, IPv6{Src: me, Dst: ip.Src},
			ICMPv6{Type: ICMPv6EchoReply, Body: EchoBody(id, seq, data)})
		if err != nil {
			g.malformed.Add(1)
			return
		}
		g.mu.Lock()
		g.lastEcho6 = ip.Src
		g.mu.Unlock()
		g.sendCounted(frame, &g.echo6Answered)
	case ICMPv6EchoReply:
		id, seq, _, err := ParseEchoBody(m.Body)
		if err != nil {
			g.malformed.Add(1)
			return
		}
		key := uint32(id)<<16 | uint32(seq)
		g.mu.Lock()
		ch, ok := g.echoWait[key]
		delete(g.echoWait, key)
		g.mu.Unlock()
		if !ok {
			g.ignored.Add(1)
			return
		}
		g.echo6Replies.Add(1)
		select {
		case ch <- key:
		default:
		}
	default:
		g.ignored.Add(1) // router advertisements, MLD, ...
	}
}

func (g *Guest) handleNS(eth Ethernet, ip IPv6, m ICMPv6) {
	nd, err := ParseND(ICMPv6NeighSolicit, m.Body)
	if err != nil || ip.HopLimit != ndHopLimit {
		g.malformed.Add(1)
		return
	}
	me := g.cfg.IP6.Addr()
	if nd.Target != me {
		g.ignored.Add(1)
		return
	}
	// A solicitation from the unspecified address is another node's
	// duplicate address detection: answer all nodes, unsolicited (§7.2.4).
	dst, dstMAC, flags := ip.Src, eth.Src, uint8(naSolicited|naOverride)
	if ip.Src.IsUnspecified() {
		dst, dstMAC, flags = AllNodes, MulticastMAC(AllNodes), naOverride
	} else if nd.LLAddr != nil {
		g.learn6(ip.Src, nd.LLAddr, false)
		dstMAC = nd.LLAddr
	}
	frame, err := EncodeICMPv6(Ethernet{Dst: dstMAC, Src: g.cfg.MAC}, IPv6{HopLimit: ndHopLimit, Src: me, Dst: dst},
		ICMPv6{Type: ICMPv6NeighAdvert, Body: NDBody(ICMPv6NeighAdvert, flags, me, g.cfg.MAC)})
	if err != nil {
		g.malformed.Add(1)
		return
	}
	g.sendCounted(frame, &g.nsAnswered)
}

func (g *Guest) handleNA(ip IPv6, m ICMPv6) {
	nd, err := ParseND(ICMPv6NeighAdvert, m.Body)
	if err != nil || ip.HopLimit != ndHopLimit {
		g.malformed.Add(1)
		return
	}
	if nd.LLAddr == nil {
		g.ignored.Add(1) // no target link-layer address: nothing to learn
		return
	}
	g.naReceived.Add(1)
	g.learn6(nd.Target, nd.LLAddr, true)
}

func (g *Guest) learn6(ip netip.Addr, mac net.HardwareAddr, reply bool) {
	g.mu.Lock()
	g.neigh[ip] = mac
	var waiters []chan net.HardwareAddr
	if reply {
		waiters = g.ndWait[ip]
		delete(g.ndWait, ip)
	}
	g.mu.Unlock()
	for _, w := range waiters {
		w <- mac
	}
}

// Resolve6 finds ip's MAC with neighbour discovery: a solicitation to its
// solicited-node group, repeated every RetryInterval, until an
// advertisement arrives or ctx is done.
func (g *Guest) Resolve6(ctx context.Context, ip netip.Addr) (net.HardwareAddr, error) {
	if !g.cfg.IP6.IsValid() {
		return nil, fmt.Errorf("resolve %v: the guest has no IPv6 address", ip)
	}
	ch := make(chan net.HardwareAddr, 1)
	g.mu.Lock()
	g.ndWait[ip] = append(g.ndWait[ip], ch)
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		ws := g.ndWait[ip]
		for i, w := range ws {
			if w == ch {
				g.ndWait[ip] = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(g.ndWait[ip]) == 0 {
			delete(g.ndWait, ip)
		}
		g.mu.Unlock()
	}()
	group := SolicitedNode(ip)
	req, err := EncodeICMPv6(Ethernet{Dst: MulticastMAC(group), Src: g.cfg.MAC}, IPv6{HopLimit: ndHopLimit, Src: g.cfg.IP6.Addr(), Dst: group},
		ICMPv6{Type: ICMPv6NeighSolicit, Body: NDBody(ICMPv6NeighSolicit, 0, ip, g.cfg.MAC)})
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
			return nil, fmt.Errorf("resolve %v: no neighbour advertisement for %d solicitations sent through tap %s: %w", ip, sent, g.cfg.Tap, ctx.Err())
		case <-g.done:
			return nil, fmt.Errorf("resolve %v: %w", ip, ErrClosed)
		case <-tick.C:
		}
	}
}

// ResolveGateway6 finds the IPv6 gateway's MAC with neighbour discovery.
func (g *Guest) ResolveGateway6(ctx context.Context) (net.HardwareAddr, error) {
	if !g.cfg.Gateway6.IsValid() {
		return nil, fmt.Errorf("resolve gateway6: no IPv6 gateway configured")
	}
	return g.Resolve6(ctx, g.cfg.Gateway6)
}

// PingGateway6 resolves the IPv6 gateway and pings it until a reply
// arrives or ctx is done.
func (g *Guest) PingGateway6(ctx context.Context) error {
	if !g.cfg.Gateway6.IsValid() {
		return fmt.Errorf("ping gateway6: no IPv6 gateway configured")
	}
	_, err := g.ping6(ctx, g.cfg.Gateway6)
	return err
}

func (g *Guest) ping6(ctx context.Context, dst netip.Addr) (time.Duration, error) {
	if !g.cfg.IP6.IsValid() {
		return 0, fmt.Errorf("ping %v: the guest has no IPv6 address", dst)
	}
	hop := dst
	if !g.cfg.IP6.Masked().Contains(dst) {
		if !g.cfg.Gateway6.IsValid() {
			return 0, fmt.Errorf("ping %v: off-link and no IPv6 gateway is configured", dst)
		}
		hop = g.cfg.Gateway6
	}
	g.mu.Lock()
	mac, known := g.neigh[hop]
	g.mu.Unlock()
	if !known {
		var err error
		if mac, err = g.Resolve6(ctx, hop); err != nil {
			return 0, fmt.Errorf("ping %v: %w", dst, err)
		}
	}
	payload := []byte("vmnic tapguest ping6")
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
		frame, err := EncodeICMPv6(Ethernet{Dst: mac, Src: g.cfg.MAC}, IPv6{Src: g.cfg.IP6.Addr(), Dst: dst},
			ICMPv6{Type: ICMPv6EchoRequest, Body: EchoBody(id, seq, payload)})
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
