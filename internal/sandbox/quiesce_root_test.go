package sandbox

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/tapguest"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// quiesceEnv is a sandbox netns whose veth has a name of its own (so the
// TAP's name in the kernel log is this test's, whatever else runs on the
// machine), its peer in a second netns holding the gateway 10.202.0.1, and
// a NIC recorded for it with no VMM reading the TAP.
type quiesceEnv struct {
	m                *Manager
	state            string
	netns, peer      string
	id, ifname, tap  string
	guestMAC         string
	guestIP, gateway netip.Addr
}

func newQuiesceEnv(t *testing.T) *quiesceEnv {
	t.Helper()
	testenv.RequireRoot(t)
	st, err := netsetup.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	q := &quiesceEnv{
		m:        New(Config{Store: st, NetnsDir: t.TempDir(), VMMOptions: vmmadapter.Options{CallTimeout: 2 * time.Second}}),
		state:    st.Dir(),
		netns:    netfixture.Netns(t, netfixture.Name("vmnicq-s")),
		peer:     netfixture.Netns(t, netfixture.Name("vmnicq-p")),
		id:       netfixture.Name("vmnicq-sb"),
		ifname:   netfixture.Name("q"),
		guestMAC: "02:00:0a:ca:00:05",
		guestIP:  netip.MustParseAddr("10.202.0.5"),
		gateway:  netip.MustParseAddr("10.202.0.1"),
	}
	q.tap = hostnet.TapNameInNetns(q.ifname)
	netfixture.Veth(t, q.netns, q.ifname, q.peer, "peer0", 1500, q.guestMAC)
	netfixture.In(t, q.netns, func() error { return addAddr(q.ifname, "10.202.0.5/24") })
	netfixture.In(t, q.peer, func() error {
		if err := addAddr("peer0", "10.202.0.1/24"); err != nil {
			return err
		}
		// A static neighbour: the flood needs no ARP answer from a guest
		// that cannot give one.
		l, err := netlink.LinkByName("peer0")
		if err != nil {
			return err
		}
		hw, _ := net.ParseMAC(q.guestMAC)
		return netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT,
			IP: q.guestIP.AsSlice(), HardwareAddr: hw, Family: unix.AF_INET})
	})
	spec := NICSpec{SandboxID: q.id, ContainerID: q.id, Network: "vmnicq-net", IfName: q.ifname, NetnsPath: q.netns,
		TapOwner: -1, TapGroup: -1, IPs: []string{"10.202.0.5/24"}, Gateway: "10.202.0.1",
		// u32 + mirred: the data path whose redirect into a dead TAP floods
		// the kernel log (a cls_bpf redirect drops silently).
		DataPath: hostnet.ModeU32}
	if _, err := q.m.AddNIC(ctx(t), spec); err != nil {
		t.Fatalf("AddNIC: %v", err)
	}
	return q
}

func addAddr(ifname, cidr string) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	return netlink.AddrAdd(l, a)
}

// kmsg reads the kernel log from the point it was opened at.
type kmsg struct{ fd int }

func openKmsg(t *testing.T) *kmsg {
	t.Helper()
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("the kernel log cannot be read here: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.Seek(fd, 0, unix.SEEK_END); err != nil {
		t.Fatalf("seek /dev/kmsg: %v", err)
	}
	return &kmsg{fd: fd}
}

// count reads every record logged since the last call and counts those
// that contain sub.
func (k *kmsg) count(t *testing.T, sub string) int {
	t.Helper()
	buf := make([]byte, 8192)
	n := 0
	for {
		r, err := unix.Read(k.fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return n
		case errors.Is(err, unix.EPIPE):
			continue // records were overwritten before we read them
		case err != nil:
			t.Fatalf("read /dev/kmsg: %v", err)
		}
		if bytes.Contains(buf[:r], []byte(sub)) {
			n++
		}
	}
}

// pinger sends ICMP echo requests from the peer netns and counts replies.
type pinger struct {
	fd  int
	dst netip.Addr
	id  uint16
	seq uint16
}

func newPinger(t *testing.T, peer string, dst netip.Addr) *pinger {
	t.Helper()
	p := &pinger{dst: dst, id: uint16(time.Now().UnixNano())}
	netfixture.In(t, peer, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		p.fd = fd
		return err
	})
	t.Cleanup(func() { unix.Close(p.fd) })
	return p
}

// flood sends echo requests for d, one every 2 ms, and returns the number
// of echo replies received meanwhile.
func (p *pinger) flood(t *testing.T, d time.Duration) int {
	t.Helper()
	to := &unix.SockaddrInet4{Addr: p.dst.As4()}
	replies := 0
	buf := make([]byte, 1500)
	for end := time.Now().Add(d); time.Now().Before(end); {
		p.seq++
		msg := make([]byte, 8+56)
		msg[0] = 8 // echo request
		binary.BigEndian.PutUint16(msg[4:], p.id)
		binary.BigEndian.PutUint16(msg[6:], p.seq)
		binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		if err := unix.Sendto(p.fd, msg, 0, to); err != nil && !errors.Is(err, unix.EAGAIN) {
			t.Fatalf("send echo request: %v", err)
		}
		tv := unix.NsecToTimeval((2 * time.Millisecond).Nanoseconds())
		_ = unix.SetsockoptTimeval(p.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		for {
			n, _, err := unix.Recvfrom(p.fd, buf, 0)
			if err != nil {
				break
			}
			// IPv4 header, then ICMP: an echo reply (type 0) with our id.
			if n >= 28 {
				ihl := int(buf[0]&0x0f) * 4
				if n >= ihl+8 && buf[ihl] == 0 && binary.BigEndian.Uint16(buf[ihl+4:]) == p.id {
					replies++
				}
			}
		}
	}
	return replies
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func (q *quiesceEnv) nic(t *testing.T) netsetup.NIC {
	t.Helper()
	rec, err := q.m.Store.Get(q.id)
	if err != nil {
		t.Fatal(err)
	}
	n, ok := rec.NIC(q.ifname)
	if !ok {
		t.Fatalf("NIC %s not recorded", q.ifname)
	}
	return *n
}

// TestQuiesceStopsMirredIntoDeadTap is issue 12's quiesce test: with a NIC
// recorded and no VMM reading its TAP, a ping flood at the guest IP makes
// the kernel log mirred's "device ... is down" notice; once quiesced, the
// same flood logs none (the frames are dropped at the veth), nothing
// answers for the guest, CHECK is healthy, and a resume makes the guest
// (the tapguest stand-in on the TAP) reachable again.
func TestQuiesceStopsMirredIntoDeadTap(t *testing.T) {
	q := newQuiesceEnv(t)
	log := openKmsg(t)
	p := newPinger(t, q.peer, q.guestIP)
	notice := "tc mirred to Houston: device " + q.tap + " is down"

	// Before: mirred into a TAP without carrier. The kernel's notice is
	// net_ratelimited (10 per 5 s for all of the kernel's net notices), so
	// flood until one of ours shows, bounded.
	before := 0
	for deadline := time.Now().Add(12 * time.Second); before == 0 && time.Now().Before(deadline); {
		if r := p.flood(t, 500*time.Millisecond); r != 0 {
			t.Fatalf("%d echo replies from a guest whose TAP nobody reads", r)
		}
		before += log.count(t, notice)
	}
	if before == 0 {
		t.Fatalf("no %q in the kernel log before quiesce", notice)
	}
	t.Logf("before quiesce: %d mirred notices", before)

	rec, err := q.m.Quiesce(ctx(t), q.id, QuiesceOptions{Reason: "test"})
	if err != nil {
		t.Fatalf("Quiesce: %v", err)
	}
	if n, _ := rec.NIC(q.ifname); n.State != netsetup.NICQuiesced || n.ResumeState != netsetup.NICPending || n.QuiesceReason != "test" {
		t.Fatalf("after Quiesce the NIC is %s (resume %s, reason %q), want quiesced (resume pending, reason test)", n.State, n.ResumeState, n.QuiesceReason)
	}
	if _, err := q.m.Quiesce(ctx(t), q.id, QuiesceOptions{Reason: "test"}); err != nil {
		t.Fatalf("second Quiesce: %v", err)
	}
	if err := q.m.CheckNIC(ctx(t), q.id, q.ifname); err != nil {
		t.Errorf("CHECK of a quiesced NIC: %v, want healthy", err)
	}
	log.count(t, notice) // what was logged up to the quiesce
	// After: a flood longer than the rate limit's 5 s window logs nothing
	// of ours, and nothing answers for the guest (the frames do not reach
	// the sandbox netns' own stack either).
	if r := p.flood(t, 6*time.Second); r != 0 {
		t.Errorf("%d echo replies while quiesced", r)
	}
	if after := log.count(t, notice); after != 0 {
		t.Errorf("%d %q after quiesce, want none", after, notice)
	}

	// The guest comes back (its VMM runs again): still unreachable while
	// quiesced, reachable once resumed.
	hw, _ := net.ParseMAC(q.guestMAC)
	g, err := tapguest.Open(tapguest.Config{NetnsPath: q.netns, Tap: q.tap, MAC: hw,
		IP: netip.PrefixFrom(q.guestIP, 24), Gateway: q.gateway})
	if err != nil {
		t.Fatalf("guest stand-in: %v", err)
	}
	defer g.Close()
	if r := p.flood(t, 300*time.Millisecond); r != 0 {
		t.Errorf("%d echo replies from the guest while quiesced", r)
	}
	rec, err = q.m.Resume(ctx(t), q.id)
	if err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if n, _ := rec.NIC(q.ifname); n.State != netsetup.NICPending || n.ResumeState != "" || n.QuiesceReason != "" {
		t.Fatalf("after Resume the NIC is %+v, want pending without quiesce fields", n)
	}
	if _, err := q.m.Resume(ctx(t), q.id); err != nil {
		t.Fatalf("second Resume: %v", err)
	}
	if r := p.flood(t, 500*time.Millisecond); r == 0 {
		t.Errorf("no echo replies from the guest after resume")
	}
	pctx, cancel := context.WithTimeout(ctx(t), 10*time.Second)
	defer cancel()
	if err := g.PingGateway(pctx); err != nil {
		t.Errorf("guest pings its gateway after resume: %v", err)
	}
	if err := q.m.CheckNIC(ctx(t), q.id, q.ifname); err != nil {
		t.Errorf("CHECK after resume: %v", err)
	}
}

// TestQuiescedNICRemovedClean: DEL and teardown of a quiesced NIC remove its
// drop filter with the rest, and leave the host as it was.
func TestQuiescedNICRemovedClean(t *testing.T) {
	for _, how := range []string{"del", "teardown"} {
		t.Run(how, func(t *testing.T) {
			testenv.RequireRoot(t)
			st, err := netsetup.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			ns := netfixture.Netns(t, netfixture.Name("vmnicq-s"))
			peer := netfixture.Netns(t, netfixture.Name("vmnicq-p"))
			netfixture.Veth(t, ns, "eth0", peer, "peer0", 1500, "02:00:0a:ca:00:06")
			scope := hostaudit.Scope{Netns: []string{ns}, StateDirs: []string{st.Dir()}}
			m := New(Config{Store: st, NetnsDir: t.TempDir()})
			id := "vmnicq-clean-" + how
			if _, err := m.Prepare(ctx(t), id, PrepareOptions{NetnsPath: ns}); err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			before := netfixture.Take(t, scope)
			if _, err := m.AddNIC(ctx(t), NICSpec{SandboxID: id, ContainerID: id, IfName: "eth0", NetnsPath: ns, TapOwner: -1, TapGroup: -1}); err != nil {
				t.Fatalf("AddNIC: %v", err)
			}
			if _, err := m.Quiesce(ctx(t), id, QuiesceOptions{VMMGone: true}); err != nil {
				t.Fatalf("Quiesce: %v", err)
			}
			netfixture.In(t, ns, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				if ok, err := hostnet.HasDrop(l); err != nil || !ok {
					t.Errorf("drop filter on eth0 after Quiesce: %v %v", ok, err)
				}
				return nil
			})
			switch how {
			case "del":
				err = m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"})
			case "teardown":
				err = m.Teardown(ctx(t), id, TeardownOptions{KeepNetns: true})
			}
			if err != nil {
				t.Fatalf("%s: %v", how, err)
			}
			if d := before.Diff(netfixture.Take(t, scope)); d != "" {
				t.Errorf("host after %s of a quiesced NIC:\n%s", how, d)
			}
		})
	}
}

// TestQuiesceRefusedWhenInvalid: quiesce and resume of an invalid sandbox,
// or of one without a record, fail with a clear error.
func TestQuiesceRefusedWhenInvalid(t *testing.T) {
	testenv.RequireRoot(t)
	q := newQuiesceEnv(t)
	if _, err := q.m.Quiesce(ctx(t), "vmnicq-none", QuiesceOptions{}); err == nil || !strings.Contains(err.Error(), "no record") {
		t.Errorf("Quiesce of a missing sandbox = %v, want a no-record error", err)
	}
	if _, err := q.m.Store.Update(ctx(t), q.id, func(r *netsetup.NetSetup) error {
		r.Phase, r.Error = netsetup.PhaseInvalid, "test"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func() error{
		"quiesce": func() error { _, err := q.m.Quiesce(ctx(t), q.id, QuiesceOptions{}); return err },
		"resume":  func() error { _, err := q.m.Resume(ctx(t), q.id); return err },
	} {
		if err := f(); err == nil || !strings.Contains(err.Error(), "invalid") {
			t.Errorf("%s of an invalid sandbox = %v, want a refusal naming the phase", name, err)
		}
	}
	if got := q.nic(t).State; got != netsetup.NICPending {
		t.Errorf("NIC state after refused quiesce = %s", got)
	}
}
