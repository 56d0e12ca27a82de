package hostnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/tapguest"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// joinFixture is a sandbox netns holding eth0 (a veth) and a TAP, and eth0's
// peer with the gateway address 10.207.<octet>.1/24: in the test's own
// netns (the host) or, with samePeerNetns, next to eth0 in the sandbox.
type joinFixture struct {
	ns       string
	peerNS   string // "" = the test's netns
	peer     string
	tap      string
	gateway  netip.Addr
	guestIP  netip.Prefix
	guestMAC net.HardwareAddr
}

func newJoinFixture(t *testing.T, octet int, samePeerNetns bool) *joinFixture {
	t.Helper()
	testenv.RequireRoot(t)
	f := &joinFixture{
		ns:      netfixture.Netns(t, netfixture.Name("vmnict-j")),
		peer:    netfixture.Name("vmnthj"),
		tap:     "tapj0",
		gateway: netip.AddrFrom4([4]byte{10, 207, byte(octet), 1}),
		guestIP: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 207, byte(octet), 2}), 24),
	}
	mac := fmt.Sprintf("02:00:0a:cf:%02x:02", octet)
	if samePeerNetns {
		f.peerNS = f.ns
		netfixture.Veth(t, f.ns, "eth0", f.ns, f.peer, 1500, mac)
	} else {
		host := netfixture.Netns(t, netfixture.Name("vmnict-jh")) // only to make the pair
		netfixture.Veth(t, f.ns, "eth0", host, f.peer, 1500, mac)
		// Move the peer into the test's netns (the host side).
		self, err := vnetns.Get()
		if err != nil {
			t.Fatal(err)
		}
		defer self.Close()
		netfixture.In(t, host, func() error {
			l, err := netlink.LinkByName(f.peer)
			if err != nil {
				return err
			}
			return netlink.LinkSetNsFd(l, int(self))
		})
		t.Cleanup(func() {
			if l, err := netlink.LinkByName(f.peer); err == nil {
				_ = netlink.LinkDel(l)
			}
		})
	}
	f.guestMAC, _ = net.ParseMAC(mac)
	f.inPeer(t, func() error {
		l, err := netlink.LinkByName(f.peer)
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: f.gateway.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	netfixture.In(t, f.ns, func() error {
		_, err := CreateTap(TapSpec{Name: f.tap, MTU: 1500, Owner: -1, Group: -1})
		return err
	})
	return f
}

func (f *joinFixture) inPeer(t *testing.T, fn func() error) {
	t.Helper()
	if f.peerNS == "" {
		if err := fn(); err != nil {
			t.Fatal(err)
		}
		return
	}
	netfixture.In(t, f.peerNS, fn)
}

// links looks up eth0 and the TAP (call inside the sandbox netns).
func (f *joinFixture) links(t *testing.T) (veth, tap netlink.Link) {
	t.Helper()
	veth, err := netlink.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	tap, err = netlink.LinkByName(f.tap)
	if err != nil {
		t.Fatal(err)
	}
	return veth, tap
}

// traffic checks both directions through the join: the guest resolves and
// pings the gateway (TAP → veth → peer, and back), and the peer's side
// pings the guest (the host's kernel sends, the guest answers).
func (f *joinFixture) traffic(t *testing.T) {
	t.Helper()
	g, err := tapguest.Open(tapguest.Config{NetnsPath: f.ns, Tap: f.tap, MAC: f.guestMAC, IP: f.guestIP, Gateway: f.gateway, RetryInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := g.Ping(ctx, f.gateway); err != nil {
		t.Fatalf("guest → gateway: %v (stats %+v)", err, g.Stats())
	}
	f.inPeer(t, func() error { return pingFrom(f.guestIP.Addr(), 3) })
	if st := g.Stats(); st.EchoAnswered < 3 || st.LastEchoSource != f.gateway.String() {
		t.Fatalf("host → guest: stats %+v, want ≥ 3 echo requests from %s answered", st, f.gateway)
	}
}

// pingFrom sends n ICMP echo requests to dst from the calling thread's netns
// on a raw socket and waits for the replies.
func pingFrom(dst netip.Addr, n int) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(2 * time.Second))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return err
	}
	sa := &unix.SockaddrInet4{Addr: dst.As4()}
	id := uint16(unix.Getpid())
	for seq := 1; seq <= n; seq++ {
		req := []byte{8, 0, 0, 0, byte(id >> 8), byte(id), 0, byte(seq)}
		sum := ^checksum(req)
		req[2], req[3] = byte(sum>>8), byte(sum)
		if err := unix.Sendto(fd, req, 0, sa); err != nil {
			return fmt.Errorf("echo %d to %s: %w", seq, dst, err)
		}
		buf := make([]byte, 1500)
		for {
			m, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				return fmt.Errorf("no reply to echo %d from %s: %w", seq, dst, err)
			}
			ihl := int(buf[0]&0xf) * 4
			if m >= ihl+8 && buf[ihl] == 0 && buf[ihl+4] == byte(id>>8) && buf[ihl+5] == byte(id) && buf[ihl+7] == byte(seq) {
				break
			}
		}
	}
	return nil
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

func filterLines(t *testing.T, link netlink.Link) []string {
	t.Helper()
	fs, err := netlink.FilterList(link, ingressParent)
	if err != nil && !errors.Is(err, unix.EINVAL) {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fs {
		out = append(out, fmt.Sprintf("%s prio %d", f.Type(), f.Attrs().Priority))
	}
	return out
}

func TestJoinBothDataPaths(t *testing.T) {
	testenv.RequireRoot(t)
	if err := ProbeBPF(); err != nil {
		testenv.Unavailable(t, "this kernel cannot load the BPF redirect: %v", err)
	}
	for i, tc := range []struct {
		mode       DataPathMode
		want       DataPath
		samePeerNS bool
		wantHelper BPFHelper
		preload    bool // the TAP -> veth program loaded ahead (PreloadJoin)
	}{
		{ModeBPF, DataPathBPF, false, HelperRedirectPeer, false},
		{ModeBPF, DataPathBPF, true, HelperRedirect, false},
		{ModeU32, DataPathU32, false, 0, false},
		{ModeAuto, DataPathBPF, false, HelperRedirectPeer, false},
		{ModeAuto, DataPathBPF, false, HelperRedirectPeer, true},
		{ModeU32, DataPathU32, false, 0, true},
	} {
		t.Run(fmt.Sprintf("%s/same-netns=%v/preload=%v", tc.mode, tc.samePeerNS, tc.preload), func(t *testing.T) {
			f := newJoinFixture(t, 20+i, tc.samePeerNS)
			netfixture.In(t, f.ns, func() error {
				veth, tap := f.links(t)
				var pre *Preload
				if tc.preload {
					pre = PreloadJoin(veth, tc.mode)
					if (pre != nil) != (tc.want == DataPathBPF) {
						t.Fatalf("PreloadJoin in mode %s = %+v", tc.mode, pre)
					}
					// Join leaves the program to its owner; the filter keeps
					// it loaded once that closes it.
					defer pre.Close()
				}
				j, err := Join(veth, tap, JoinOptions{Mode: tc.mode, Preload: pre})
				if err != nil {
					t.Fatalf("Join: %v", err)
				}
				if pre != nil {
					info, err := pre.prog.Info()
					if err != nil {
						t.Fatal(err)
					}
					id, _ := info.ID()
					fs, err := netlink.FilterList(tap, ingressParent)
					if err != nil || len(fs) != 1 {
						t.Fatalf("filters on the TAP: %v %v", fs, err)
					}
					if b, ok := fs[0].(*netlink.BpfFilter); !ok || b.Id != int(id) {
						t.Errorf("the TAP's filter %+v does not run the preloaded program %d", fs[0], id)
					}
				}
				if j.DataPath != tc.want || !j.VethQdiscOwned || (tc.want == DataPathBPF && j.TapHelper != tc.wantHelper) {
					t.Fatalf("Join = %+v, want data path %s, qdisc owned, TAP helper %s", j, tc.want, tc.wantHelper)
				}
				if p := CheckJoin(veth, tap, j.DataPath); p != nil {
					t.Errorf("CheckJoin after Join: %v", p)
				}
				for _, c := range [][2]netlink.Link{{veth, tap}, {tap, veth}} {
					if ok, err := HasRedirect(c[0], c[1].Attrs().Index); !ok || err != nil {
						t.Errorf("HasRedirect %s -> %s = %v %v", c[0].Attrs().Name, c[1].Attrs().Name, ok, err)
					}
					if ok, _ := HasRedirect(c[0], c[0].Attrs().Index); ok {
						t.Errorf("HasRedirect %s -> itself", c[0].Attrs().Name)
					}
					want := fmt.Sprintf("%s prio %d", FilterKind(tc.want), FilterPriority)
					if got := filterLines(t, c[0]); len(got) != 1 || got[0] != want {
						t.Errorf("filters on %s: %v, want [%s]", c[0].Attrs().Name, got, want)
					}
				}
				// The other data path's check does not pass for this one.
				other := DataPathU32
				if tc.want == DataPathU32 {
					other = DataPathBPF
				}
				if p := CheckJoin(veth, tap, other); len(p) != 2 {
					t.Errorf("CheckJoin as %s of a %s join: %v, want both directions reported", other, tc.want, p)
				}
				return nil
			})
			// The program fds were closed at attach: the filters run on.
			f.traffic(t)
			netfixture.In(t, f.ns, func() error {
				veth, tap := f.links(t)
				// CHECK reports a missing filter by name.
				if err := DelRedirect(tap); err != nil {
					t.Fatal(err)
				}
				p := CheckJoin(veth, tap, tc.want)
				if len(p) != 1 || !strings.Contains(p[0].Error(), "tapj0 -> eth0 missing") {
					t.Errorf("CheckJoin without the TAP's filter: %v", p)
				}
				for i := 0; i < 2; i++ {
					if err := Unjoin(veth, tap, Joined{DataPath: tc.want, VethQdiscOwned: true}); err != nil {
						t.Fatalf("Unjoin #%d: %v", i+1, err)
					}
				}
				if got := filterLines(t, veth); len(got) != 0 {
					t.Errorf("filters on eth0 after Unjoin: %v", got)
				}
				if kind, _ := IngressKind(veth); kind != "" {
					t.Errorf("eth0 keeps a %q qdisc vmnic added", kind)
				}
				return nil
			})
		})
	}
}

// A DEL after a crash does not know which data path was attached: the
// removal by priority takes either kind.
func TestDelRedirectEitherKind(t *testing.T) {
	f := newJoinFixture(t, 30, false)
	netfixture.In(t, f.ns, func() error {
		veth, tap := f.links(t)
		if _, err := EnsureIngress(veth); err != nil {
			t.Fatal(err)
		}
		if err := AddBPFRedirect(veth, tap, HelperRedirect); err != nil {
			t.Fatal(err)
		}
		if err := Unjoin(veth, nil, Joined{DataPath: DataPathU32, VethQdiscOwned: true}); err != nil {
			t.Fatal(err)
		}
		if got := filterLines(t, veth); len(got) != 0 {
			t.Errorf("filters left: %v", got)
		}
		return nil
	})
}

func TestJoinKeepsForeignQdiscAndFilters(t *testing.T) {
	for i, kind := range []string{"ingress", "clsact"} {
		for j, dp := range []DataPathMode{ModeBPF, ModeU32} {
			t.Run(kind+"/"+string(dp), func(t *testing.T) {
				f := newJoinFixture(t, 40+2*i+j, false)
				netfixture.In(t, f.ns, func() error {
					veth, tap := f.links(t)
					attrs := netlink.QdiscAttrs{LinkIndex: veth.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}
					var q netlink.Qdisc = &netlink.Ingress{QdiscAttrs: attrs}
					if kind == "clsact" {
						q = &netlink.Clsact{QdiscAttrs: attrs}
					}
					if err := netlink.QdiscAdd(q); err != nil {
						t.Fatal(err)
					}
					foreign := &netlink.U32{
						FilterAttrs: netlink.FilterAttrs{LinkIndex: veth.Attrs().Index, Parent: ingressParent, Priority: 7, Protocol: unix.ETH_P_IP},
						ClassId:     netlink.MakeHandle(1, 1),
					}
					if err := netlink.FilterAdd(foreign); err != nil {
						t.Fatal(err)
					}
					j, err := Join(veth, tap, JoinOptions{Mode: dp})
					if err != nil {
						t.Fatal(err)
					}
					if j.VethQdiscOwned {
						t.Error("Join claims the existing qdisc")
					}
					if got := filterLines(t, veth); len(got) != 2 {
						t.Errorf("filters on eth0: %v, want the foreign one and vmnic's", got)
					}
					if err := Unjoin(veth, tap, j); err != nil {
						t.Fatal(err)
					}
					if got := filterLines(t, veth); len(got) != 1 || got[0] != "u32 prio 7" {
						t.Errorf("filters on eth0 after Unjoin: %v, want the foreign one", got)
					}
					if k, _ := IngressKind(veth); k != kind {
						t.Errorf("qdisc after Unjoin: %q, want the %s kept", k, kind)
					}
					return nil
				})
			})
		}
	}
}

func TestJoinFallsBackWhenTheProbeFails(t *testing.T) {
	f := newJoinFixture(t, 50, false)
	probeErr := errors.New("forced probe failure")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	netfixture.In(t, f.ns, func() error {
		veth, tap := f.links(t)
		if _, err := Join(veth, tap, JoinOptions{Mode: ModeBPF, Probe: func() error { return probeErr }}); !errors.Is(err, ErrBPFUnavailable) {
			t.Fatalf("Join in mode bpf with a failing probe: %v, want ErrBPFUnavailable", err)
		}
		if got := filterLines(t, veth); len(got) != 0 {
			t.Fatalf("a refused Join left filters: %v", got)
		}
		j, err := Join(veth, tap, JoinOptions{Mode: ModeAuto, Log: log, Probe: func() error { return probeErr }})
		if err != nil {
			t.Fatal(err)
		}
		if j.DataPath != DataPathU32 {
			t.Fatalf("auto with a failing probe chose %s, want u32", j.DataPath)
		}
		if !strings.Contains(logs.String(), "using tc u32 + mirred") || !strings.Contains(logs.String(), "forced probe failure") {
			t.Errorf("no fallback log line naming the cause:\n%s", logs.String())
		}
		return nil
	})
	f.traffic(t)
}

// A Join that fails half way (the step hook) removes what it added.
func TestJoinRollsBack(t *testing.T) {
	for i, mode := range []DataPathMode{ModeBPF, ModeU32} {
		t.Run(string(mode), func(t *testing.T) {
			f := newJoinFixture(t, 60+i, false)
			netfixture.In(t, f.ns, func() error {
				veth, tap := f.links(t)
				injected := errors.New("injected")
				_, err := Join(veth, tap, JoinOptions{Mode: mode, Step: func(string) error { return injected }})
				if !errors.Is(err, injected) {
					t.Fatalf("Join = %v, want the injected error", err)
				}
				for _, l := range []netlink.Link{veth, tap} {
					if got := filterLines(t, l); len(got) != 0 {
						t.Errorf("filters left on %s: %v", l.Attrs().Name, got)
					}
					if k, _ := IngressKind(l); k != "" {
						t.Errorf("qdisc left on %s: %q", l.Attrs().Name, k)
					}
				}
				return nil
			})
		})
	}
}

// BenchmarkJoin is one Join + Unjoin per data path (the probe is cached
// after the first; loading the two programs is part of a bpf Join).
func BenchmarkJoin(b *testing.B) {
	for _, mode := range []DataPathMode{ModeU32, ModeBPF} {
		b.Run(string(mode), func(b *testing.B) {
			testenv.RequireRoot(b)
			ns := netfixture.Netns(b, netfixture.Name("vmnict-jb"))
			peer := netfixture.Netns(b, netfixture.Name("vmnict-jp"))
			netfixture.Veth(b, ns, "eth0", peer, "peer0", 0, "")
			netfixture.In(b, ns, func() error {
				if _, err := CreateTap(TapSpec{Name: "tapb0", Owner: -1, Group: -1}); err != nil {
					return err
				}
				veth, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				tap, err := netlink.LinkByName("tapb0")
				if err != nil {
					return err
				}
				for b.Loop() {
					j, err := Join(veth, tap, JoinOptions{Mode: mode})
					if err != nil {
						return err
					}
					if err := Unjoin(veth, tap, j); err != nil {
						return err
					}
				}
				return nil
			})
		})
	}
}

// BenchmarkLoadRedirect is one program load (what ProbeBPF does twice,
// once per process).
func BenchmarkLoadRedirect(b *testing.B) {
	testenv.RequireRoot(b)
	for b.Loop() {
		p, err := loadRedirect(1, HelperRedirectPeer)
		if err != nil {
			b.Fatal(err)
		}
		p.Close()
	}
}

// Both programs give the redirect verdict for any frame (the kernel's
// BPF_PROG_TEST_RUN; the redirect itself needs a real hook).
func TestRedirectProgramsVerdict(t *testing.T) {
	testenv.RequireRoot(t)
	if err := ProbeBPF(); err != nil {
		testenv.Unavailable(t, "BPF: %v", err)
	}
	frame := make([]byte, 64)
	for i := range 12 {
		frame[i] = 0xff
	}
	frame[12], frame[13] = 0x08, 0x06 // ARP
	for _, h := range []BPFHelper{HelperRedirect, HelperRedirectPeer} {
		p, err := loadRedirect(1, h)
		if err != nil {
			t.Fatal(err)
		}
		ret, err := p.Run(&ebpf.RunOptions{Data: frame})
		p.Close()
		if err != nil || ret != tcActRedirect {
			t.Errorf("%s program: verdict %d, %v; want TC_ACT_REDIRECT (%d)", h, ret, err, tcActRedirect)
		}
	}
}
