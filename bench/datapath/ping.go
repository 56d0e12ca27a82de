package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"time"

	"golang.org/x/sys/unix"
)

// PingResult is one echo run from the host to the guest stand-in.
type PingResult struct {
	Outstanding int     `json:"outstanding"`
	Sent        int     `json:"sent"`
	Received    int     `json:"received"`
	Lost        int     `json:"lost"`
	Seconds     float64 `json:"seconds"`
	Rate        float64 `json:"rate_pps"` // echo replies per second
	RTTMinUs    float64 `json:"rtt_min_us"`
	RTTMedianUs float64 `json:"rtt_median_us"`
	RTTP99Us    float64 `json:"rtt_p99_us"`
	// ProcCPUUsPerEcho is this process's CPU time (user+sys: the guest
	// stand-in, the pinger and the kernel work done in their syscalls and
	// the softirqs they ran) per echo answered, µs: what the rate costs,
	// less dependent on the other load of the machine than the rate.
	ProcCPUUsPerEcho float64 `json:"process_cpu_us_per_echo"`
}

// pinger sends ICMP echo requests on a raw socket of the host's netns and
// reads the replies, keeping a window of them outstanding.
type pinger struct {
	fd  int
	id  uint16
	dst netip.Addr
}

func newPinger(dst netip.Addr, id uint16) (*pinger, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return nil, fmt.Errorf("raw ICMP socket: %w", err)
	}
	// Only echo replies (ICMP_FILTER: a bit set drops that type).
	filter := ^uint32(1 << 0)
	if err := unix.SetsockoptInt(fd, unix.SOL_RAW, 1 /* ICMP_FILTER */, int(filter)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("ICMP_FILTER: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	return &pinger{fd: fd, id: id, dst: dst}, nil
}

func (p *pinger) Close() { unix.Close(p.fd) }

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// run keeps window echo requests outstanding for d (or until count replies
// when count > 0) and measures each reply's RTT. A request with no reply
// after lossTimeout counts as lost and is replaced.
func (p *pinger) run(window int, d time.Duration, count int) (PingResult, []time.Duration, error) {
	const lossTimeout = 500 * time.Millisecond
	res := PingResult{Outstanding: window}
	sa := &unix.SockaddrInet4{Addr: p.dst.As4()}
	req := make([]byte, 8+56) // like ping(8): 56 bytes of data
	for i := 8; i < len(req); i++ {
		req[i] = byte(i)
	}
	inflight := map[uint16]time.Time{}
	var seq uint16
	var rtts []time.Duration
	send := func() error {
		seq++
		req[0], req[1], req[2], req[3] = 8, 0, 0, 0
		req[4], req[5] = byte(p.id>>8), byte(p.id)
		req[6], req[7] = byte(seq>>8), byte(seq)
		c := icmpChecksum(req)
		req[2], req[3] = byte(c>>8), byte(c)
		inflight[seq] = time.Now()
		res.Sent++
		return unix.Sendto(p.fd, req, 0, sa)
	}
	start := time.Now()
	deadline := start.Add(d)
	for i := 0; i < window; i++ {
		if err := send(); err != nil {
			return res, nil, fmt.Errorf("send echo: %w", err)
		}
	}
	buf := make([]byte, 2048)
	pfd := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	for {
		now := time.Now()
		if (count > 0 && res.Received >= count) || (count == 0 && now.After(deadline)) {
			break
		}
		if count > 0 && now.Sub(start) > d+10*time.Second {
			return res, nil, fmt.Errorf("only %d of %d echo replies after %s", res.Received, count, now.Sub(start).Round(time.Millisecond))
		}
		n, err := unix.Poll(pfd, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return res, nil, fmt.Errorf("poll: %w", err)
		}
		if n > 0 {
			for {
				m, from, err := unix.Recvfrom(p.fd, buf, unix.MSG_DONTWAIT)
				if err != nil {
					break
				}
				at := time.Now()
				if sa4, ok := from.(*unix.SockaddrInet4); !ok || netip.AddrFrom4(sa4.Addr) != p.dst {
					continue
				}
				ihl := int(buf[0]&0xf) * 4
				if m < ihl+8 || buf[ihl] != 0 || uint16(buf[ihl+4])<<8|uint16(buf[ihl+5]) != p.id {
					continue
				}
				s := uint16(buf[ihl+6])<<8 | uint16(buf[ihl+7])
				t0, ok := inflight[s]
				if !ok {
					continue
				}
				delete(inflight, s)
				rtts = append(rtts, at.Sub(t0))
				res.Received++
				if (count == 0 && at.Before(deadline)) || (count > 0 && res.Sent < count) {
					if err := send(); err != nil {
						return res, nil, fmt.Errorf("send echo: %w", err)
					}
				}
			}
		}
		// Replace the lost.
		now = time.Now()
		for s, t0 := range inflight {
			if now.Sub(t0) > lossTimeout {
				delete(inflight, s)
				res.Lost++
				if count == 0 && now.Before(deadline) || count > 0 {
					if err := send(); err != nil {
						return res, nil, fmt.Errorf("send echo: %w", err)
					}
				}
			}
		}
	}
	res.Seconds = time.Since(start).Seconds()
	if res.Received == 0 {
		return res, nil, fmt.Errorf("no echo reply from %s (%d sent)", p.dst, res.Sent)
	}
	res.Rate = float64(res.Received) / res.Seconds
	sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	res.RTTMinUs = us(rtts[0])
	res.RTTMedianUs = us(rtts[len(rtts)/2])
	res.RTTP99Us = us(rtts[min(len(rtts)-1, len(rtts)*99/100)])
	return res, rtts, nil
}

// runSamples keeps window outstanding for d.
func (p *pinger) runSamples(window int, d time.Duration) (PingResult, []time.Duration, error) {
	return p.run(window, d, 0)
}

func pingID() uint16 { return uint16(os.Getpid()) }
