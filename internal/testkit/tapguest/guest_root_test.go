package tapguest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	sbfixture "github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// fixture is a hand-made tc-redirect data path: a netns holding a TAP and
// the netns end (eth0) of a veth pair, joined by u32 match-all mirred
// redirects both ways; the host end of the veth carries the gateway IP.
type fixture struct {
	nsName, nsPath string
	hostVeth       string
	hostMAC        net.HardwareAddr
	guestMAC       net.HardwareAddr // the netns veth's MAC: what the guest uses
	tap            string
	gateway        netip.Addr
	guestIP        netip.Prefix
}

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// inNS runs fn on a locked thread inside ns.
func inNS(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err) // thread stays locked and is discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// newFixture builds the data path for subnet 10.206.<octet>.0/24 with a TAP of
// the given queue count (1 = single queue, >1 = IFF_MULTI_QUEUE).
func newFixture(t *testing.T, octet, queues int) *fixture {
	t.Helper()
	id := randHex(t, 3)
	f := &fixture{
		nsName:   "vmnd-gs-" + id,
		hostVeth: "vmnd-h" + id,
		tap:      "tap0",
		gateway:  netip.AddrFrom4([4]byte{10, 206, byte(octet), 1}),
		guestIP:  netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 206, byte(octet), 2}), 24),
	}
	f.nsPath = "/var/run/netns/" + f.nsName

	if err := sbfixture.CreateNamedNetns(f.nsName); err != nil {
		t.Fatalf("create netns %s: %v", f.nsName, err)
	}
	t.Cleanup(func() {
		if err := netns.DeleteNamed(f.nsName); err != nil {
			t.Errorf("delete netns %s: %v", f.nsName, err)
		}
	})
	ns, err := netns.GetFromName(f.nsName)
	if err != nil {
		t.Fatalf("open netns %s: %v", f.nsName, err)
	}
	t.Cleanup(func() { ns.Close() })

	nsh, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", f.nsName, err)
	}
	t.Cleanup(nsh.Close)

	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: f.hostVeth}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", f.hostVeth, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(f.hostVeth); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("delete veth %s: %v", f.hostVeth, err)
			}
		}
	})
	host, err := netlink.LinkByName(f.hostVeth)
	if err != nil {
		t.Fatal(err)
	}
	f.hostMAC = host.Attrs().HardwareAddr
	gw := &netlink.Addr{IPNet: &net.IPNet{IP: f.gateway.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := netlink.AddrAdd(host, gw); err != nil {
		t.Fatalf("address %s on %s: %v", gw, f.hostVeth, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		t.Fatal(err)
	}

	// The TAP is created from inside the netns (the tun ioctls act in the
	// caller's netns), single or multi queue, VNET_HDR, as the plugin does.
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: f.tap}, Mode: netlink.TUNTAP_MODE_TAP, Queues: queues,
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE}
	if queues > 1 {
		tap.Flags = netlink.TUNTAP_MULTI_QUEUE_DEFAULTS | netlink.TUNTAP_VNET_HDR
	}
	if err := inNS(ns, func() error { return netlink.LinkAdd(tap) }); err != nil {
		t.Fatalf("add tap in %s: %v", f.nsName, err)
	}
	for _, fd := range tap.Fds {
		fd.Close()
	}

	peer, err := nsh.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	f.guestMAC = peer.Attrs().HardwareAddr
	tapLink, err := nsh.LinkByName(f.tap)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []netlink.Link{peer, tapLink} {
		if err := nsh.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", l.Attrs().Name, err)
		}
		ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: netlink.MakeHandle(0xffff, 0)}}
		if err := nsh.QdiscAdd(ingress); err != nil {
			t.Fatalf("ingress qdisc on %s: %v", l.Attrs().Name, err)
		}
	}
	redirect := func(from, to netlink.Link) {
		t.Helper()
		filter := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0), Priority: 1, Protocol: unix.ETH_P_ALL},
			Actions: []netlink.Action{&netlink.MirredAction{
				ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
				MirredAction: netlink.TCA_EGRESS_REDIR,
				Ifindex:      to.Attrs().Index,
			}},
		}
		if err := nsh.FilterAdd(filter); err != nil {
			t.Fatalf("redirect %s → %s: %v", from.Attrs().Name, to.Attrs().Name, err)
		}
	}
	redirect(peer, tapLink)
	redirect(tapLink, peer)
	return f
}

func (f *fixture) open(t *testing.T, multiQueue bool, hdrLen int) *Guest {
	t.Helper()
	g, err := Open(Config{NetnsPath: f.nsPath, Tap: f.tap, MAC: f.guestMAC, IP: f.guestIP, Gateway: f.gateway, MultiQueue: multiQueue, VnetHdrLen: hdrLen})
	if err != nil {
		t.Fatalf("open guest: %v", err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

func hostPing(t *testing.T, ip netip.Addr) string {
	t.Helper()
	ping := testenv.Command(t, "ping")
	out, err := exec.Command(ping, "-n", "-c", "3", "-i", "0.2", "-W", "2", "-w", "10", ip.String()).CombinedOutput()
	if err != nil {
		t.Fatalf("ping %s from the host: %v\n%s", ip, err, out)
	}
	if n := received(string(out)); n < 3 {
		t.Fatalf("ping %s from the host: %d echo replies, want 3:\n%s", ip, n, out)
	}
	return string(out)
}

func TestGuestThroughTCRedirect(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tc := range []struct {
		name       string
		octet      int
		queues     int
		openMQ     bool // what the caller asks for; Open must match the TAP either way
		hdrLen     int
		wantMQ     bool
		wantHdrLen int
	}{
		{"single queue, 10-byte vnet header", 10, 1, false, 0, false, 10},
		{"single queue, 12-byte vnet header", 11, 1, false, VnetHdrMrgLen, false, 12},
		{"multiqueue TAP", 12, 2, true, 0, true, 10},
		{"multiqueue TAP found without being told", 13, 2, false, 0, true, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.octet, tc.queues)
			g := f.open(t, tc.openMQ, tc.hdrLen)
			if g.Tap().MultiQueue() != tc.wantMQ || g.Tap().VnetHdrLen() != tc.wantHdrLen {
				t.Fatalf("opened multiqueue=%v hdr=%d, want %v/%d", g.Tap().MultiQueue(), g.Tap().VnetHdrLen(), tc.wantMQ, tc.wantHdrLen)
			}

			// Host → guest: the host ARPs for the guest IP and pings it.
			hostPing(t, f.guestIP.Addr())
			st := g.Stats()
			if st.ARPAnswered < 1 || st.EchoAnswered < 3 || st.LastEchoSource != f.gateway.String() {
				t.Fatalf("after the host's ping: %+v, want ≥1 ARP and ≥3 echo requests answered from %s", st, f.gateway)
			}

			// Guest → gateway: ARP, then ICMP echo.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			mac, err := g.ResolveGateway(ctx)
			if err != nil {
				t.Fatalf("resolve gateway: %v (stats %+v)", err, g.Stats())
			}
			if mac.String() != f.hostMAC.String() {
				t.Fatalf("gateway MAC %s, want the host veth's %s", mac, f.hostMAC)
			}
			if err := g.PingGateway(ctx); err != nil {
				t.Fatalf("ping gateway: %v (stats %+v)", err, g.Stats())
			}
			st = g.Stats()
			if st.ARPReplies < 1 || st.EchoReplies < 1 || st.FramesIn == 0 || st.FramesOut < 6 {
				t.Fatalf("after pinging the gateway: %+v", st)
			}
		})
	}
}

func TestGuestGetsNoAnswerFromAbsentGateway(t *testing.T) {
	testenv.RequireRoot(t)
	f := newFixture(t, 14, 1)
	g, err := Open(Config{NetnsPath: f.nsPath, Tap: f.tap, MAC: f.guestMAC, IP: f.guestIP, Gateway: netip.MustParseAddr("10.206.14.99"), RetryInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	err = g.PingGateway(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ping of an absent gateway: %v, want a deadline error", err)
	}
	if st := g.Stats(); st.ARPReplies != 0 || st.FramesOut < 2 {
		t.Fatalf("stats %+v: want ARP requests repeated and no reply", st)
	}
}

func TestCloseReleasesTheTap(t *testing.T) {
	testenv.RequireRoot(t)
	f := newFixture(t, 15, 1)
	g := f.open(t, false, 0)
	// A single-queue TAP takes one fd: a second open is refused while the
	// first is held...
	if _, err := OpenTap(TapOptions{NetnsPath: f.nsPath, Name: f.tap}); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("second open while the guest holds the TAP: %v, want EBUSY", err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	// ...and succeeds once Close has released it.
	tap, err := OpenTap(TapOptions{NetnsPath: f.nsPath, Name: f.tap})
	if err != nil {
		t.Fatalf("open after Close: %v", err)
	}
	tap.Close()
	if err := g.PingGateway(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("ping after Close: %v, want ErrClosed", err)
	}
}

func TestOpenMissingTap(t *testing.T) {
	testenv.RequireRoot(t)
	f := newFixture(t, 16, 1)
	_, err := Open(Config{NetnsPath: f.nsPath, Tap: "vmnd-nosuch", MAC: f.guestMAC, IP: f.guestIP})
	if err == nil {
		t.Fatal("opened a TAP that does not exist")
	}
	if !strings.Contains(err.Error(), "vmnd-nosuch") {
		t.Fatalf("error does not name the TAP: %v", err)
	}
}

var receivedRE = regexp.MustCompile(`(\d+) (packets )?received`)

// received is the reply count in ping's summary line.
func received(out string) int {
	m := receivedRE.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
