package qemu_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/qemu"
)

// These tests boot a real QEMU guest (TCG) in a netns of their own, named
// vmnq-*, with links vmnq* and addresses in 10.202.0.0/16.

func requireRealGuest(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	if err := qemuguest.Available(); err != nil {
		testenv.Unavailable(t, "QEMU guest: %v", err)
	}
	testenv.Command(t, "ping")
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// hostNIC is one CNI-like attachment: a veth pair (host end with .1, the
// other end in the netns) and a TAP in the netns joined to the veth by tc
// ingress redirect both ways, as vmnic sets it up.
type hostNIC struct {
	HostIf, NsIf, Tap string
	MAC               string // the netns veth's MAC, used as the guest's
	HostIP, GuestIP   string
}

// fixture is a netns with hostNICs.
type fixture struct {
	t      *testing.T
	id     string
	Name   string
	Path   string
	NICs   []hostNIC
	torn   bool
	subnet int
}

// newFixture makes a netns vmnq-<id> with one hostNIC per entry of queues
// (the TAP's queue count; >1 makes a multi-queue TAP), on subnets
// 10.202.<s+i>.0/24. Cleanup removes everything even if the test fails.
func newFixture(t *testing.T, queues ...int) *fixture {
	t.Helper()
	s, _ := rand.Int(rand.Reader, big.NewInt(250/4))
	f := &fixture{t: t, id: randHex(3), subnet: 2 + 4*int(s.Int64())}
	f.Name = "vmnq-" + f.id
	f.Path = filepath.Join("/var/run/netns", f.Name)
	t.Cleanup(func() {
		if err := f.teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
	})
	errc := make(chan error, 1)
	go func() {
		// The thread moves into the new netns; it is never unlocked, so it
		// exits with this goroutine instead of serving other goroutines.
		runtime.LockOSThread()
		h, err := netns.NewNamed(f.Name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create netns %s: %v", f.Name, err)
	}
	for i, q := range queues {
		f.NICs = append(f.NICs, f.addNIC(i, q))
	}
	return f
}

func (f *fixture) inNetns(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		target, err := netns.GetFromPath(f.Path)
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- err
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, err) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

func (f *fixture) addNIC(i, queues int) hostNIC {
	t := f.t
	t.Helper()
	n := hostNIC{
		HostIf:  fmt.Sprintf("vmnq%s%dh", f.id, i),
		NsIf:    fmt.Sprintf("vmnq%s%dv", f.id, i),
		Tap:     fmt.Sprintf("vmnq%s%dt", f.id, i),
		HostIP:  fmt.Sprintf("10.202.%d.1", f.subnet+i),
		GuestIP: fmt.Sprintf("10.202.%d.2", f.subnet+i),
	}
	ns, err := netns.GetFromPath(f.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: n.HostIf}, PeerName: n.NsIf, PeerNamespace: netlink.NsFd(ns)}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", n.HostIf, err)
	}
	host, err := netlink.LinkByName(n.HostIf)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(n.HostIP + "/24")
	if err := netlink.AddrAdd(host, addr); err != nil {
		t.Fatalf("address %s: %v", n.HostIP, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		t.Fatal(err)
	}
	err = f.inNetns(func() error {
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: n.Tap},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
		}
		if queues > 1 {
			tap.Flags = netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_MULTI_QUEUE
			tap.Queues = queues
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return fmt.Errorf("add tap %s: %w", n.Tap, err)
		}
		for _, fd := range tap.Fds { // persistent: QEMU opens its own queues
			fd.Close()
		}
		v, err := netlink.LinkByName(n.NsIf)
		if err != nil {
			return err
		}
		tl, err := netlink.LinkByName(n.Tap)
		if err != nil {
			return err
		}
		n.MAC = v.Attrs().HardwareAddr.String()
		for _, l := range []netlink.Link{v, tl} {
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("up %s: %w", l.Attrs().Name, err)
			}
		}
		if err := redirect(v, tl); err != nil {
			return err
		}
		return redirect(tl, v)
	})
	if err != nil {
		t.Fatalf("netns %s: %v", f.Name, err)
	}
	return n
}

// redirect sends every frame received on from out of to (tc ingress +
// u32 match-all + mirred egress redirect; u32 because cls_matchall is not
// in every kernel).
func redirect(from, to netlink.Link) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: from.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS,
	}}
	if err := netlink.QdiscAdd(q); err != nil {
		return fmt.Errorf("ingress qdisc on %s: %w", from.Attrs().Name, err)
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: from.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0),
			Priority: 1, Protocol: unix.ETH_P_ALL,
		},
		Actions: []netlink.Action{netlink.NewMirredAction(to.Attrs().Index)},
	}
	if err := netlink.FilterAdd(filter); err != nil {
		return fmt.Errorf("redirect %s -> %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// teardown deletes the host veths and the netns (which takes the TAPs and
// the other veth ends with it). It is idempotent.
func (f *fixture) teardown() error {
	if f.torn {
		return nil
	}
	f.torn = true
	var errs []error
	for _, n := range f.NICs {
		if l, err := netlink.LinkByName(n.HostIf); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := netns.DeleteNamed(f.Name); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("delete netns %s: %w", f.Name, err))
	}
	return errors.Join(errs...)
}

// assertGone checks that nothing of the fixture or QEMU is left.
func (f *fixture) assertGone(t *testing.T, qemuPID int) {
	t.Helper()
	if err := syscall.Kill(qemuPID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("QEMU pid %d still exists (kill 0: %v)", qemuPID, err)
	}
	if _, err := os.Stat(f.Path); !os.IsNotExist(err) {
		t.Errorf("netns %s still exists (%v)", f.Path, err)
	}
	links, err := netlinksafe.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "vmnq"+f.id) {
			t.Errorf("link %s left behind", l.Attrs().Name)
		}
	}
}

// retry runs fn until it succeeds (at most tries times, pausing between).
func retry(ctx context.Context, tries int, fn func() error) error {
	var err error
	for i := 0; i < tries; i++ {
		if err = fn(); err == nil || ctx.Err() != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
	return err
}

// checkTraffic configures the guest interface and pings both ways.
func checkTraffic(ctx context.Context, t *testing.T, g *qemuguest.Guest, ifname string, n hostNIC) {
	t.Helper()
	if _, err := g.Run(ctx, fmt.Sprintf("ip link set %s up && ip addr add %s/24 dev %s", ifname, n.GuestIP, ifname)); err != nil {
		t.Fatalf("configure guest %s: %v", ifname, err)
	}
	err := retry(ctx, 5, func() error {
		_, err := g.Run(ctx, "ping -c 1 -W 2 "+n.HostIP)
		return err
	})
	if err != nil {
		t.Fatalf("guest -> host %s: %v\n%s", n.HostIP, err, g.ConsoleTail())
	}
	err = retry(ctx, 5, func() error {
		out, err := exec.CommandContext(ctx, "ping", "-c", "1", "-W", "2", "-I", n.HostIf, n.GuestIP).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("host -> guest %s: %v", n.GuestIP, err)
	}
}

// guestHasLink asserts, without waiting, whether the guest has ifname.
func guestHasLink(ctx context.Context, t *testing.T, g *qemuguest.Guest, ifname string, want bool) {
	t.Helper()
	links, err := g.Links(ctx)
	if err != nil {
		t.Fatalf("guest links: %v", err)
	}
	if got := slices.Contains(links, ifname); got != want {
		t.Fatalf("guest has %s = %v, want %v (links %v)", ifname, got, want, links)
	}
}

// qemuView asserts QEMU's view: the adapter's NICs(), the device tree as
// seen through the harness's own QMP socket, and the netdevs.
func qemuView(ctx context.Context, t *testing.T, g *qemuguest.Guest, a *qemu.Adapter, want []string) {
	t.Helper()
	got, err := a.NICs(ctx)
	if err != nil {
		t.Fatalf("NICs: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("NICs() = %v, want %v", got, want)
	}
	raw, err := g.QMP(ctx, "qom-list", map[string]any{"path": "/machine/peripheral"})
	if err != nil {
		t.Fatalf("qom-list through the private socket: %v", err)
	}
	var props []struct{ Name, Type string }
	if err := json.Unmarshal(raw, &props); err != nil {
		t.Fatal(err)
	}
	var devs []string
	for _, p := range props {
		if strings.HasPrefix(p.Type, "child<virtio-net") {
			devs = append(devs, p.Name)
		}
	}
	slices.Sort(devs)
	if !slices.Equal(devs, want) {
		t.Fatalf("QEMU's device tree has %v, want %v", devs, want)
	}
	var info string
	if err := a.Execute(ctx, "human-monitor-command", map[string]any{"command-line": "info network"}, &info); err != nil {
		t.Fatalf("info network: %v", err)
	}
	for _, id := range want {
		if !strings.Contains(info, qemu.NetdevID(id)) {
			t.Errorf("netdev %s missing from QEMU:\n%s", qemu.NetdevID(id), info)
		}
	}
	if len(want) == 0 && strings.Contains(info, "netdev-") {
		t.Errorf("netdevs left in QEMU:\n%s", info)
	}
}

// TestRealGuestHotplug: a guest booted with no NIC gets one hot-added,
// uses it both ways, loses it again, and gets it back (0 → 1 → 0 → 1 → 0);
// then a multi-queue NIC with an MTU comes and goes.
func TestRealGuestHotplug(t *testing.T) {
	requireRealGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fx := newFixture(t, 1, 2)
	n := fx.NICs[0]

	g, err := qemuguest.Boot(ctx, qemuguest.Config{Netns: fx.Path, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	t.Logf("timing: boot %s", g.BootTime().Round(time.Millisecond))
	guestHasLink(ctx, t, g, "eth0", false)

	a, err := qemu.Open(g.QMPSocket(), vmmadapter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	info, err := a.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != vmmadapter.QEMU || !info.Booted || !info.HotAdd || !info.HotRemove || info.Version == "" {
		t.Fatalf("Info = %+v", info)
	}
	qemuView(ctx, t, g, a, nil)

	// An id QEMU does not accept as is ("/" and ":"): the adapter sanitises it.
	nic := vmmadapter.NIC{ID: "sandbox:1/eth0", Tap: n.Tap, MAC: n.MAC, MTU: 1500}
	wantID := qemu.SanitizeID(nic.ID)
	for round := 1; round <= 2; round++ {
		t.Logf("round %d", round)
		t0 := time.Now()
		att, err := a.AddNIC(ctx, nic)
		if err != nil {
			t.Fatalf("AddNIC: %v\n%s", err, g.ConsoleTail())
		}
		if att.ID != wantID || !att.Hot || att.BDF == "" {
			t.Fatalf("Attachment = %+v, want id %s, hot, with a BDF", att, wantID)
		}
		ifname, err := g.WaitForMAC(ctx, n.MAC)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("timing: hot-add to %s visible in guest %s", ifname, time.Since(t0).Round(time.Millisecond))
		if ifname != "eth0" {
			t.Fatalf("hot-added NIC is %s in the guest, want eth0", ifname)
		}
		if mac, err := g.LinkMAC(ctx, "eth0"); err != nil || mac != n.MAC {
			t.Fatalf("guest eth0 MAC %q (%v), want %s", mac, err, n.MAC)
		}
		qemuView(ctx, t, g, a, []string{wantID})
		checkTraffic(ctx, t, g, "eth0", n)

		t0 = time.Now()
		if err := a.RemoveNIC(ctx, nic.ID); err != nil {
			t.Fatalf("RemoveNIC: %v\n%s", err, g.ConsoleTail())
		}
		t.Logf("timing: remove (device_del .. DEVICE_DELETED .. netdev_del) %s", time.Since(t0).Round(time.Millisecond))
		guestHasLink(ctx, t, g, "eth0", false)
		qemuView(ctx, t, g, a, nil)
		if g.Exited() {
			t.Fatal("QEMU exited")
		}
		if _, err := os.Stat(fx.Path); err != nil {
			t.Fatalf("netns gone: %v", err)
		}
		// Removing again is a no-op.
		if err := a.RemoveNIC(ctx, nic.ID); err != nil {
			t.Fatalf("second RemoveNIC: %v", err)
		}
	}

	// A multi-queue NIC with an MTU: the guest sees the features.
	mq := fx.NICs[1]
	mqNIC := vmmadapter.NIC{ID: "mq0", Tap: mq.Tap, MAC: mq.MAC, MTU: 1400, QueuePairs: 2}
	if _, err := a.AddNIC(ctx, mqNIC); err != nil {
		t.Fatalf("AddNIC multiqueue: %v", err)
	}
	ifname, err := g.WaitForMAC(ctx, mq.MAC)
	if err != nil {
		t.Fatal(err)
	}
	out, err := g.Run(ctx, "cat /sys/class/net/"+ifname+"/mtu /sys/class/net/"+ifname+"/device/features")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(out)
	const fMTU, fMQ = 3, 22 // VIRTIO_NET_F_MTU, VIRTIO_NET_F_MQ
	if len(fields) != 2 || fields[0] != "1400" || len(fields[1]) <= fMQ || fields[1][fMTU] != '1' || fields[1][fMQ] != '1' {
		t.Fatalf("guest %s: mtu and virtio features %q, want 1400 with MTU and MQ offered", ifname, out)
	}
	checkTraffic(ctx, t, g, ifname, mq)
	if err := a.RemoveNIC(ctx, "mq0"); err != nil {
		t.Fatal(err)
	}
	guestHasLink(ctx, t, g, ifname, false)
	qemuView(ctx, t, g, a, nil)

	pid := g.PID()
	a.Close()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fx.teardown(); err != nil {
		t.Fatal(err)
	}
	fx.assertGone(t, pid)
}

// TestRealGuestColdAttach: one NIC on the QEMU command line (Args, as a
// launcher would do) and one added through QMP while QEMU waits in -S; both
// come up at boot, work, and hot-remove afterwards.
func TestRealGuestColdAttach(t *testing.T) {
	requireRealGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fx := newFixture(t, 1, 1)
	argNIC := vmmadapter.NIC{ID: "net0", Tap: fx.NICs[0].Tap, MAC: fx.NICs[0].MAC}
	qmpNIC := vmmadapter.NIC{ID: "net1", Tap: fx.NICs[1].Tap, MAC: fx.NICs[1].MAC}

	g, err := qemuguest.Boot(ctx, qemuguest.Config{
		Netns: fx.Path, Prelaunch: true, Logf: t.Logf,
		ExtraArgs: qemu.Args([]vmmadapter.NIC{argNIC}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	a, err := qemu.Open(g.QMPSocket(), vmmadapter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	info, err := a.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Booted {
		t.Fatalf("Info before start = %+v, want not booted", info)
	}
	qemuView(ctx, t, g, a, []string{"net0"})
	att, err := a.AddNIC(ctx, qmpNIC)
	if err != nil {
		t.Fatal(err)
	}
	if att.ID != "net1" || att.Hot {
		t.Fatalf("cold Attachment = %+v", att)
	}
	qemuView(ctx, t, g, a, []string{"net0", "net1"})
	// Before boot QEMU cannot remove a device: refused, and nothing changes.
	if err := a.RemoveNIC(ctx, "net1"); !errors.Is(err, qemu.ErrRemoveBeforeBoot) {
		t.Fatalf("RemoveNIC before boot: %v, want ErrRemoveBeforeBoot", err)
	}

	if err := g.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("timing: boot %s", g.BootTime().Round(time.Millisecond))
	for i, nic := range []vmmadapter.NIC{argNIC, qmpNIC} {
		// Present at boot: no waiting.
		ifname, err := g.WaitForMAC(ctx, nic.MAC)
		if err != nil {
			t.Fatal(err)
		}
		checkTraffic(ctx, t, g, ifname, fx.NICs[i])
		t0 := time.Now()
		if err := a.RemoveNIC(ctx, nic.ID); err != nil {
			t.Fatalf("RemoveNIC %s: %v\n%s", nic.ID, err, g.ConsoleTail())
		}
		t.Logf("timing: remove of cold-plugged %s %s", nic.ID, time.Since(t0).Round(time.Millisecond))
		guestHasLink(ctx, t, g, ifname, false)
	}
	qemuView(ctx, t, g, a, nil)

	pid := g.PID()
	a.Close()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fx.teardown(); err != nil {
		t.Fatal(err)
	}
	fx.assertGone(t, pid)
}
