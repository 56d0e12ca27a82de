package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// env is one sandbox fixture: a state dir, a netns dir, a sandbox netns
// with a veth "eth0" (MTU 1400) whose peer sits in a second netns.
type env struct {
	m *Manager
	// hook, when set, runs at each named point of a change of m; an
	// error it returns makes the change fail there.
	hook    func(step string) error
	state   string
	netns   string
	peer    string
	vethMAC string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testenv.RequireRoot(t)
	state := t.TempDir()
	st, err := netsetup.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{
		state: state,
		netns: netfixture.Netns(t, netfixture.Name("vmnict-s")),
		peer:  netfixture.Netns(t, netfixture.Name("vmnict-p")),
	}
	e.m = New(Config{Store: st, NetnsDir: t.TempDir(), VMMOptions: vmmadapter.Options{CallTimeout: 2 * time.Second, RemoveTimeout: 2 * time.Second}},
		withHook(func(step string) error {
			if e.hook == nil {
				return nil
			}
			return e.hook(step)
		}))
	e.vethMAC = "02:00:0a:c9:00:05"
	netfixture.Veth(t, e.netns, "eth0", e.peer, "peer0", 1400, e.vethMAC)
	// The address a main plugin would have given eth0 (spec's IPs; CHECK
	// verifies it is still there).
	netfixture.In(t, e.netns, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr("10.201.0.5/24")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, a)
	})
	return e
}

// defaultDataPath is the data path an ADD without a configured one gets:
// $VMNIC_DATAPATH's, else bpf where this kernel runs it.
func defaultDataPath(t *testing.T) hostnet.DataPath {
	t.Helper()
	dp, err := hostnet.ChooseDataPath(hostnet.JoinOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return dp
}

func (e *env) spec(id string) NICSpec {
	return NICSpec{
		SandboxID: id, ContainerID: id, Network: "vmnict-net", IfName: "eth0", NetnsPath: e.netns,
		TapOwner: -1, TapGroup: -1, IPs: []string{"10.201.0.5/24"}, Gateway: "10.201.0.1",
	}
}

func (e *env) scope() hostaudit.Scope {
	return hostaudit.Scope{Netns: []string{e.netns}, StateDirs: []string{e.state}, HostLinkPrefixes: []string{"vmt"}}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func TestAddDelNICCNIBackend(t *testing.T) {
	e := newEnv(t)
	before := netfixture.Take(t, e.scope())
	added, err := e.m.AddNIC(ctx(t), e.spec("vmnict-sb1"))
	if err != nil {
		t.Fatalf("AddNIC: %v", err)
	}
	if added.NIC.Tap != "tapeth0" || added.Sandbox != e.netns || added.TapMAC == "" {
		t.Errorf("AddNIC result = %+v", added)
	}
	tap := netfixture.LinkIn(t, e.netns, "tapeth0")
	if tap == nil {
		t.Fatal("TAP tapeth0 not created")
	}
	tt, ok := tap.(*netlink.Tuntap)
	if !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
		t.Fatalf("tapeth0 is %T %+v, want a TAP", tap, tap)
	}
	if tt.Flags&netlink.TUNTAP_VNET_HDR == 0 || tt.Flags&netlink.TUNTAP_NO_PI == 0 || tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		t.Errorf("TAP flags %v: want VNET_HDR|NO_PI, single queue", tt.Flags)
	}
	if tap.Attrs().MTU != 1400 || tap.Attrs().Flags&1 == 0 {
		t.Errorf("TAP mtu %d flags %v: want 1400, up", tap.Attrs().MTU, tap.Attrs().Flags)
	}
	if tt.Owner != 0 || tt.Group != 0 {
		// The kernel reports -1 as 4294967295: owner/group not set.
		if tt.Owner != ^uint32(0) || tt.Group != ^uint32(0) {
			t.Errorf("TAP owner/group %d/%d: want unset", tt.Owner, tt.Group)
		}
	}
	veth := netfixture.LinkIn(t, e.netns, "eth0")
	netfixture.In(t, e.netns, func() error {
		for _, c := range []struct {
			from, to netlink.Link
		}{{veth, tap}, {tap, veth}} {
			ok, err := hostnet.HasRedirect(c.from, c.to.Attrs().Index)
			if err != nil || !ok {
				t.Errorf("redirect %s -> %s: %v %v", c.from.Attrs().Name, c.to.Attrs().Name, ok, err)
			}
		}
		return nil
	})
	rec, err := e.m.Store.Get("vmnict-sb1")
	if err != nil {
		t.Fatal(err)
	}
	nic, ok := rec.NIC("eth0")
	if !ok || !nic.HostReady || nic.State != netsetup.NICPending || nic.MAC != e.vethMAC || nic.MTU != 1400 ||
		nic.NumQueues != 2 || nic.QueueSize != DefaultQueueSize || !nic.VethQdiscOwned || nic.Gateway != "10.201.0.1" ||
		nic.DataPath != string(defaultDataPath(t)) {
		t.Errorf("recorded NIC = %+v (want data path %s)", nic, defaultDataPath(t))
	}
	if rec.Phase != netsetup.PhaseConfigured || rec.CreatedBy != netsetup.CreatedByCNI || rec.NetnsOwned {
		t.Errorf("record phase %s created_by %q owned %v", rec.Phase, rec.CreatedBy, rec.NetnsOwned)
	}
	if err := e.m.CheckNIC(ctx(t), "vmnict-sb1", "eth0"); err != nil {
		t.Errorf("CheckNIC: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: "vmnict-sb1", ContainerID: "vmnict-sb1", IfName: "eth0"}); err != nil {
			t.Fatalf("DelNIC #%d: %v", i+1, err)
		}
	}
	if d := before.Diff(netfixture.Take(t, e.scope())); d != "" {
		t.Errorf("ADD+DEL left changes:\n%s", d)
	}
}

func TestAddNICMultiqueueOwner(t *testing.T) {
	e := newEnv(t)
	s := e.spec("vmnict-mq")
	s.QueuePairs, s.QueueSize, s.TapOwner, s.TapGroup = 4, 1024, 1234, 5678
	added, err := e.m.AddNIC(ctx(t), s)
	if err != nil {
		t.Fatal(err)
	}
	tt := netfixture.LinkIn(t, e.netns, added.NIC.Tap).(*netlink.Tuntap)
	if tt.Flags&netlink.TUNTAP_MULTI_QUEUE == 0 {
		t.Errorf("TAP is not multiqueue: %v", tt.Flags)
	}
	if tt.Owner != 1234 || tt.Group != 5678 {
		t.Errorf("owner/group %d/%d, want 1234/5678", tt.Owner, tt.Group)
	}
	if added.NIC.NumQueues != 8 || added.NIC.QueueSize != 1024 {
		t.Errorf("num_queues %d queue_size %d", added.NIC.NumQueues, added.NIC.QueueSize)
	}
	if err := e.m.CheckNIC(ctx(t), "vmnict-mq", "eth0"); err != nil {
		t.Errorf("CheckNIC: %v", err)
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: "vmnict-mq", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
}

// foreignFilter adds somebody else's u32 filter (prio 7, IPv4, classid 1:1;
// no action module needed) on eth0's ingress hook.
func foreignFilter(link netlink.Link) error {
	return netlink.FilterAdd(&netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: link.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS, Priority: 7, Protocol: unix.ETH_P_IP},
		ClassId:     netlink.MakeHandle(1, 1),
	})
}

func TestPreexistingIngressQdisc(t *testing.T) {
	for _, kind := range []string{"ingress", "clsact"} {
		t.Run(kind, func(t *testing.T) {
			e := newEnv(t)
			netfixture.In(t, e.netns, func() error {
				veth, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				attrs := netlink.QdiscAttrs{LinkIndex: veth.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}
				var q netlink.Qdisc = &netlink.Ingress{QdiscAttrs: attrs}
				if kind == "clsact" {
					q = &netlink.Clsact{QdiscAttrs: attrs}
				}
				if err := netlink.QdiscAdd(q); err != nil {
					return err
				}
				return foreignFilter(veth)
			})
			before := netfixture.Take(t, e.scope())
			if !before.Contains("filter dev eth0 parent ffff:fff2 u32 prio 7") {
				t.Fatalf("fixture filter missing:\n%s", strings.Join(before, "\n"))
			}
			added, err := e.m.AddNIC(ctx(t), e.spec("vmnict-q"))
			if err != nil {
				t.Fatal(err)
			}
			if added.NIC.VethQdiscOwned {
				t.Error("vmnic claims the pre-existing qdisc")
			}
			mid := netfixture.Take(t, e.scope())
			for _, want := range []string{"qdisc " + kind + " dev eth0", "filter dev eth0 parent ffff:fff2 u32 prio 7",
				fmt.Sprintf("filter dev eth0 parent ffff:fff2 %s prio %d", hostnet.FilterKind(hostnet.DataPath(added.NIC.DataPath)), hostnet.FilterPriority)} {
				if !mid.Contains(want) {
					t.Errorf("after ADD, no %q:\n%s", want, strings.Join(mid, "\n"))
				}
			}
			if err := e.m.CheckNIC(ctx(t), "vmnict-q", "eth0"); err != nil {
				t.Errorf("CheckNIC: %v", err)
			}
			if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: "vmnict-q", IfName: "eth0"}); err != nil {
				t.Fatal(err)
			}
			if d := before.Diff(netfixture.Take(t, e.scope())); d != "" {
				t.Errorf("DEL did not restore the %s qdisc state:\n%s", kind, d)
			}
		})
	}
}

func TestAddNICRollback(t *testing.T) {
	steps := []string{"veth-read", "tap-created", "veth-filter-added", "host-ready"}
	for _, prepared := range []bool{false, true} {
		for _, step := range steps {
			t.Run(fmt.Sprintf("%s/prepared=%v", step, prepared), func(t *testing.T) {
				e := newEnv(t)
				id := "vmnict-rb"
				if prepared {
					if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{NetnsPath: e.netns}); err != nil {
						t.Fatal(err)
					}
				}
				before := netfixture.Take(t, e.scope())
				injected := errors.New("injected failure")
				e.hook = func(s string) error {
					if s == step {
						return injected
					}
					return nil
				}
				_, err := e.m.AddNIC(ctx(t), e.spec(id))
				if !errors.Is(err, injected) {
					t.Fatalf("AddNIC error = %v, want the injected failure", err)
				}
				if d := before.Diff(netfixture.Take(t, e.scope())); d != "" {
					t.Errorf("rollback after %s left changes:\n%s", step, d)
				}
				e.hook = nil
				if _, err := e.m.AddNIC(ctx(t), e.spec(id)); err != nil {
					t.Fatalf("AddNIC after rollback: %v", err)
				}
			})
		}
	}
}

// A NIC left pending by a crashed ADD (recorded, TAP made, never
// host-ready) is cleaned up by the next ADD, and by DEL.
func TestPendingLeftover(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-crash"
	// What an ADD that crashed after making the TAP leaves: the NIC
	// recorded pending (not host-ready) and the TAP.
	rec := netsetup.New(id)
	rec.CreatedBy, rec.NetnsPath = netsetup.CreatedByCNI, e.netns
	rec.PutNIC(netsetup.NIC{ID: "eth0", IfName: "eth0", Tap: "tapeth0", ContainerID: id, State: netsetup.NICPending})
	if err := e.m.Store.Create(ctx(t), rec); err != nil {
		t.Fatal(err)
	}
	netfixture.In(t, e.netns, func() error {
		_, err := hostnet.CreateTap(hostnet.TapSpec{Name: "tapeth0", Owner: -1, Group: -1})
		return err
	})
	if _, err := e.m.AddNIC(ctx(t), e.spec(id)); err != nil {
		t.Fatalf("ADD after a crash: %v", err)
	}
	if err := e.m.CheckNIC(ctx(t), id, "eth0"); err != nil {
		t.Errorf("CheckNIC: %v", err)
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") != nil {
		t.Error("TAP left after DEL")
	}

	// DEL alone also undoes such a leftover.
	if err := e.m.Store.Create(ctx(t), rec); err != nil {
		t.Fatal(err)
	}
	netfixture.In(t, e.netns, func() error {
		_, err := hostnet.CreateTap(hostnet.TapSpec{Name: "tapeth0", Owner: -1, Group: -1})
		return err
	})
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") != nil {
		t.Error("pending TAP left after DEL")
	}
	if _, err := e.m.Store.Get(id); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("record after DEL: %v", err)
	}
}

func TestAddNICBadInput(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, e *env, s *NICSpec)
		code  uint
		msg   string
	}{
		{"tap name taken", func(t *testing.T, e *env, s *NICSpec) { netfixture.Blocker(t, e.netns, "tapeth0") }, CodeInvalidEnv, "TAP name tapeth0 is already taken"},
		{"ifname missing in netns", func(t *testing.T, e *env, s *NICSpec) { s.IfName = "net9" }, CodeInvalidEnv, "CNI_IFNAME net9: no such interface"},
		{"not a netns", func(t *testing.T, e *env, s *NICSpec) {
			p := t.TempDir() + "/file"
			os.WriteFile(p, nil, 0o600)
			s.NetnsPath = p
		}, CodeInvalidNetns, "not a network namespace"},
		{"netns missing", func(t *testing.T, e *env, s *NICSpec) { s.NetnsPath = "/proc/0/ns/net" }, CodeInvalidNetns, "CNI_NETNS"},
		{"bad mac", func(t *testing.T, e *env, s *NICSpec) { s.MAC = "01:00:5e:00:00:01" }, CodeInvalidConfig, "multicast"},
		{"bad queues", func(t *testing.T, e *env, s *NICSpec) { s.QueuePairs = 300 }, CodeInvalidConfig, "queues 300"},
		{"bad queue size", func(t *testing.T, e *env, s *NICSpec) { s.QueueSize = 100 }, CodeInvalidConfig, "queueSize 100"},
		{"bridge missing", func(t *testing.T, e *env, s *NICSpec) {
			s.Backend, s.Bridge = netsetup.BackendBridge, "vmnbrtnone"
		}, CodeInvalidConfig, "bridge vmnbrtnone"},
		{"invalid record", func(t *testing.T, e *env, s *NICSpec) {
			if _, err := e.m.Prepare(context.Background(), s.SandboxID, PrepareOptions{NetnsPath: e.netns}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.m.Store.Update(context.Background(), s.SandboxID, func(r *netsetup.NetSetup) error {
				r.Phase, r.Error = netsetup.PhaseInvalid, "teardown failed: test"
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}, CodeInvalidConfig, "is invalid"},
		{"other netns", func(t *testing.T, e *env, s *NICSpec) {
			if _, err := e.m.Prepare(context.Background(), s.SandboxID, PrepareOptions{NetnsPath: e.peer}); err != nil {
				t.Fatal(err)
			}
		}, CodeInvalidNetns, "is not the netns of sandbox"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			s := e.spec("vmnict-bad")
			c.setup(t, e, &s)
			before := netfixture.Take(t, e.scope())
			_, err := e.m.AddNIC(ctx(t), s)
			if err == nil {
				t.Fatal("AddNIC succeeded")
			}
			if Code(err) != c.code || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error = code %d %q, want code %d with %q", Code(err), err, c.code, c.msg)
			}
			if d := before.Diff(netfixture.Take(t, e.scope())); d != "" {
				t.Errorf("a refused ADD changed things:\n%s", d)
			}
		})
	}
}

func TestPrepareStopTeardown(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-prep"
	rec, err := e.m.Prepare(ctx(t), id, PrepareOptions{PodName: "p", PodNamespace: "ns", RuntimeDir: "/run/x"})
	if err != nil {
		t.Fatal(err)
	}
	path := e.m.OwnedNetnsPath(id)
	if rec.NetnsPath != path || !rec.NetnsOwned || rec.Phase != netsetup.PhasePrepared || rec.PodName != "p" || rec.RuntimeDir != "/run/x" {
		t.Fatalf("prepared record %+v", rec)
	}
	nsid, err := netsetup.IdentifyNetns(path)
	if err != nil {
		t.Fatal(err)
	}
	again, err := e.m.Prepare(ctx(t), id, PrepareOptions{})
	if err != nil || again.NetnsID == nil || *again.NetnsID != nsid {
		t.Fatalf("second Prepare: %v %+v", err, again)
	}
	if got, _ := e.m.Resolve("", path, "cnitool-xyz"); got != id {
		t.Errorf("Resolve by netns = %q, want %q", got, id)
	}
	netfixture.Veth(t, path, "eth0", e.peer, "peer1", 0, "")
	s := e.spec(id)
	s.NetnsPath, s.ContainerID = path, "cnitool-xyz"
	if _, err := e.m.AddNIC(ctx(t), s); err != nil {
		t.Fatal(err)
	}
	// The container index lets a DEL find the sandbox without the netns.
	if got, _ := e.m.Resolve("", "", "cnitool-xyz"); got != id {
		t.Errorf("Resolve by container index = %q, want %q", got, id)
	}
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{KeepNetns: true}); err != nil {
		t.Fatal(err)
	}
	rec, err = e.m.Store.Get(id)
	if err != nil || rec.Phase != netsetup.PhasePrepared || len(rec.NetworkConfigs) != 0 {
		t.Fatalf("after stop: %v %+v", err, rec)
	}
	if netfixture.LinkIn(t, path, "tapeth0") != nil {
		t.Error("TAP left after stop")
	}
	if _, err := netsetup.IdentifyNetns(path); err != nil {
		t.Errorf("owned netns gone after stop: %v", err)
	}
	if got, _ := e.m.Resolve("", "", "cnitool-xyz"); got != "cnitool-xyz" {
		t.Errorf("container index kept after stop: %q", got)
	}
	for i := 0; i < 2; i++ {
		if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("owned netns %s still there: %v", path, err)
	}
	if _, err := e.m.Store.Get(id); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("record still there: %v", err)
	}
	// The sandbox's lock is a byte-range lock on the shared lock file:
	// nothing of it stays, and no per-sandbox lock file is made.
	if _, err := os.Lstat(e.state + "/locks"); err == nil {
		t.Error("a per-sandbox lock directory was made")
	}
	if fi, err := os.Stat(e.state + "/sandboxes.lock"); err != nil || fi.Size() != 0 {
		t.Errorf("shared lock file: %v, %v (want it, empty)", fi, err)
	}
}

func TestTeardownFailureThenRetry(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-td"
	if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{}); err != nil {
		t.Fatal(err)
	}
	path := e.m.OwnedNetnsPath(id)
	netfixture.Veth(t, path, "eth0", e.peer, "peer2", 0, "")
	s := e.spec(id)
	s.NetnsPath = path
	if _, err := e.m.AddNIC(ctx(t), s); err != nil {
		t.Fatal(err)
	}
	for _, step := range []string{"teardown-nic", "teardown-netns"} {
		e.hook = func(s string) error {
			if s == step {
				return errors.New("injected " + s)
			}
			return nil
		}
		if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err == nil {
			t.Fatalf("teardown with a failing %s succeeded", step)
		}
		rec, err := e.m.Store.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Phase != netsetup.PhaseInvalid || !strings.Contains(rec.Error, "injected "+step) {
			t.Errorf("after a failed teardown: phase %s error %q", rec.Phase, rec.Error)
		}
		_, err = e.m.AddNIC(ctx(t), s)
		if !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("ADD on an invalid sandbox: %v", err)
		}
		if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{}); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("Prepare on an invalid sandbox: %v", err)
		}
	}
	e.hook = nil
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err != nil {
		t.Fatalf("retried teardown: %v", err)
	}
	if _, err := e.m.Store.Get(id); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("record after retried teardown: %v", err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("netns after retried teardown: %v", err)
	}
}

func TestOrphanNetns(t *testing.T) {
	e := newEnv(t)
	if _, err := e.m.Prepare(ctx(t), "vmnict-kept", PrepareOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.m.Teardown(context.Background(), "vmnict-kept", TeardownOptions{}) })
	orphan := e.m.OwnedNetnsPath("vmnict-orphan")
	if _, err := e.m.Prepare(ctx(t), "vmnict-orphan", PrepareOptions{}); err != nil {
		t.Fatal(err)
	}
	// Drop the record only: its netns becomes an orphan.
	tx, _ := e.m.Store.Lock(ctx(t), "vmnict-orphan")
	tx.Delete()
	tx.Unlock()
	stale := e.m.OwnedNetnsPath("vmnict-stale")
	os.WriteFile(stale, nil, 0o444)
	got, err := e.m.OrphanNetns(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	want := []string{orphan, stale}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("OrphanNetns = %v, want %v", got, want)
	}
	for _, p := range got {
		if err := e.m.RemoveNetns(p); err != nil {
			t.Error(err)
		}
	}
	if got, _ := e.m.OrphanNetns(ctx(t)); len(got) != 0 {
		t.Errorf("orphans after removal: %v", got)
	}
}

func forwardRuleExists(t *testing.T, br string) bool {
	t.Helper()
	ipt, err := iptables.New()
	if err != nil {
		testenv.Unavailable(t, "iptables: %v", err)
	}
	ok, err := ipt.Exists("filter", "FORWARD", hostnet.ForwardRuleSpec(br)...)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestBridgeBackend(t *testing.T) {
	e := newEnv(t)
	testenv.Command(t, "iptables")
	br := netfixture.Name("vmnbrt")
	netfixture.Bridge(t, br)
	// A second sandbox on the same bridge.
	ns2 := netfixture.Netns(t, netfixture.Name("vmnict-s"))
	netfixture.Veth(t, ns2, "eth0", e.peer, "peer3", 0, "")
	scope := e.scope()
	scope.Netns = append(scope.Netns, ns2)
	scope.HostLinks = []string{br}
	scope.IPTablesMarkers = []string{br}
	before := netfixture.Take(t, scope)

	s1 := e.spec("vmnict-br1")
	s1.Backend, s1.Bridge = netsetup.BackendBridge, br
	s2 := s1
	s2.SandboxID, s2.ContainerID, s2.NetnsPath = "vmnict-br2", "vmnict-br2", ns2
	var taps []string
	for _, s := range []NICSpec{s1, s2} {
		added, err := e.m.AddNIC(ctx(t), s)
		if err != nil {
			t.Fatal(err)
		}
		taps = append(taps, added.NIC.Tap)
		if added.Sandbox != "" || !strings.HasPrefix(added.NIC.Tap, "vmt") || len(added.NIC.Tap) > 15 {
			t.Errorf("bridge NIC %+v sandbox %q", added.NIC, added.Sandbox)
		}
		tap, err := netlink.LinkByName(added.NIC.Tap)
		if err != nil {
			t.Fatalf("TAP %s not on the host: %v", added.NIC.Tap, err)
		}
		brl, _ := netlink.LinkByName(br)
		if tap.Attrs().MasterIndex != brl.Attrs().Index {
			t.Errorf("TAP %s is not a port of %s", added.NIC.Tap, br)
		}
		if v := netfixture.LinkIn(t, s.NetnsPath, "eth0"); v.Attrs().Flags&1 != 0 {
			t.Errorf("veth of %s not parked (down)", s.SandboxID)
		}
		if err := e.m.CheckNIC(ctx(t), s.SandboxID, "eth0"); err != nil {
			t.Errorf("CheckNIC: %v", err)
		}
	}
	if taps[0] == taps[1] {
		t.Errorf("two sandboxes got the same host TAP name %s", taps[0])
	}
	if !forwardRuleExists(t, br) {
		t.Error("FORWARD ACCEPT rule missing")
	}
	users, _ := e.m.forwardRules().Users(br)
	if len(users) != 2 {
		t.Errorf("rule users = %v", users)
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: "vmnict-br1", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if !forwardRuleExists(t, br) {
		t.Error("FORWARD rule removed while a user is left")
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: "vmnict-br2", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if forwardRuleExists(t, br) {
		t.Error("FORWARD rule left after the last user")
	}
	after := netfixture.Take(t, scope)
	if d := before.Diff(after); d != "" {
		t.Errorf("bridge ADD+DEL left changes:\n%s", d)
	}
}

// A bridge-backend ADD that fails at any of its steps leaves the host as it
// was: veth up again, no TAP on the host, no FORWARD rule, no record.
func TestBridgeAddRollback(t *testing.T) {
	for _, step := range []string{"veth-read", "bridge-tap-created", "host-ready", "add-saved"} {
		t.Run(step, func(t *testing.T) {
			e := newEnv(t)
			testenv.Command(t, "iptables")
			br := netfixture.Name("vmnbrt")
			netfixture.Bridge(t, br)
			scope := e.scope()
			scope.HostLinks = []string{br}
			scope.IPTablesMarkers = []string{br}
			before := netfixture.Take(t, scope)
			s := e.spec("vmnict-brb")
			s.Backend, s.Bridge = netsetup.BackendBridge, br
			injected := errors.New("injected failure")
			e.hook = func(name string) error {
				if name == step {
					return injected
				}
				return nil
			}
			if _, err := e.m.AddNIC(ctx(t), s); !errors.Is(err, injected) {
				t.Fatalf("AddNIC error = %v, want the injected failure", err)
			}
			if d := before.Diff(netfixture.Take(t, scope)); d != "" {
				t.Errorf("rollback after %s left changes:\n%s", step, d)
			}
			if forwardRuleExists(t, br) {
				t.Errorf("FORWARD rule left after a rollback at %s", step)
			}
			e.hook = nil
			if _, err := e.m.AddNIC(ctx(t), s); err != nil {
				t.Fatalf("AddNIC after rollback: %v", err)
			}
			if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: s.SandboxID, IfName: "eth0"}); err != nil {
				t.Fatal(err)
			}
			if d := before.Diff(netfixture.Take(t, scope)); d != "" {
				t.Errorf("ADD+DEL after the rollback left changes:\n%s", d)
			}
		})
	}
}

func attachCH(t *testing.T, e *env, id string, state vmmsim.CHState) *vmmsim.CH {
	t.Helper()
	sim := vmmsim.NewCH(t, vmmsim.CHConfig{State: state})
	if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{NetnsPath: e.netns}); err != nil {
		t.Fatal(err)
	}
	rec, err := e.m.AttachVMM(ctx(t), id, vmmadapter.CloudHypervisor, sim.Socket())
	if err != nil {
		t.Fatalf("AttachVMM: %v", err)
	}
	if rec.VMM == nil || rec.VMM.Booted != (state == vmmsim.CHRunning) {
		t.Fatalf("recorded VMM %+v", rec.VMM)
	}
	return sim
}

func TestVMMHotAddRemove(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-vmm"
	sim := attachCH(t, e, id, vmmsim.CHRunning)
	added, err := e.m.AddNIC(ctx(t), e.spec(id))
	if err != nil {
		t.Fatal(err)
	}
	if added.NIC.State != netsetup.NICAttached || added.NIC.VMMDeviceID == "" || added.NIC.BDF == "" {
		t.Errorf("hot-added NIC %+v", added.NIC)
	}
	nets := sim.Net()
	if len(nets) != 1 || nets[0].Tap != "tapeth0" || nets[0].MAC != e.vethMAC || nets[0].NumQueues != 2 {
		t.Errorf("VMM nets = %+v", nets)
	}
	if err := e.m.CheckNIC(ctx(t), id, "eth0"); err != nil {
		t.Errorf("CheckNIC: %v", err)
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if n := sim.Net(); len(n) != 0 {
		t.Errorf("VMM still has %+v", n)
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") != nil {
		t.Error("TAP left")
	}
	rec, _ := e.m.Store.Get(id)
	if rec == nil || rec.Phase != netsetup.PhasePrepared {
		t.Errorf("prepared record after DEL: %+v", rec)
	}
}

func TestVMMRefusalRollsBack(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-ref"
	sim := attachCH(t, e, id, vmmsim.CHRunning)
	sim.HoldTap("tapeth0") // a simulated holder: only a VMM opening by name sees it
	before := netfixture.Take(t, e.scope())
	spec := e.spec(id)
	spec.TapHandoff = netsetup.HandoffName
	_, err := e.m.AddNIC(ctx(t), spec)
	if err == nil || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("AddNIC = %v, want the VMM's refusal (TAP busy)", err)
	}
	if d := before.Diff(netfixture.Take(t, e.scope())); d != "" {
		t.Errorf("VMM refusal left changes:\n%s", d)
	}
}

func TestVMMGoneAtDel(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-gone"
	sim := attachCH(t, e, id, vmmsim.CHRunning)
	if _, err := e.m.AddNIC(ctx(t), e.spec(id)); err != nil {
		t.Fatal(err)
	}
	sim.Close()
	if err := e.m.CheckNIC(ctx(t), id, "eth0"); err == nil || !strings.Contains(err.Error(), "VMM") {
		t.Errorf("CheckNIC with the VMM gone = %v", err)
	}
	// That CHECK quiesced the sandbox (issue 12): the NIC comes back
	// pending for the next VMM, and the next CHECK finds it healthy.
	if rec, err := e.m.Store.Get(id); err != nil {
		t.Fatal(err)
	} else if n, _ := rec.NIC("eth0"); n.State != netsetup.NICQuiesced || n.ResumeState != netsetup.NICPending {
		t.Errorf("after CHECK found the VMM gone the NIC is %s (resume %s), want quiesced (resume pending)", n.State, n.ResumeState)
	}
	if err := e.m.CheckNIC(ctx(t), id, "eth0"); err != nil {
		t.Errorf("second CheckNIC (quiesced) = %v, want healthy", err)
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"}); err != nil {
		t.Fatalf("DelNIC with the VMM gone: %v", err)
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") != nil {
		t.Error("TAP left")
	}
}

func TestVMMColdAttach(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-cold"
	sim := attachCH(t, e, id, vmmsim.CHCreated)
	added, err := e.m.AddNIC(ctx(t), e.spec(id))
	if err != nil {
		t.Fatal(err)
	}
	if added.NIC.State != netsetup.NICAttached || len(sim.Net()) != 1 {
		t.Errorf("cold-attached NIC %+v, VMM nets %+v", added.NIC, sim.Net())
	}
}

func TestVMMHotplugUnsupportedStaysPending(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-fc"
	sim := vmmsim.NewFC(t, vmmsim.FCConfig{State: vmmsim.FCRunning, Version: "1.12.1"})
	if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{NetnsPath: e.netns}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.AttachVMM(ctx(t), id, vmmadapter.Firecracker, sim.Socket()); err != nil {
		t.Fatal(err)
	}
	added, err := e.m.AddNIC(ctx(t), e.spec(id))
	if err != nil {
		t.Fatalf("AddNIC: %v", err)
	}
	if added.NIC.State != netsetup.NICPending || !added.NIC.HostReady || added.Warning == "" {
		t.Errorf("NIC %+v warning %q: want pending, host-ready, with a warning", added.NIC, added.Warning)
	}
	rec, err := e.m.Store.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := rec.NIC("eth0"); n == nil || !strings.Contains(n.Note, "cannot hot-plug") {
		t.Errorf("the record must say why the NIC stays pending: %+v", n)
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") == nil {
		t.Error("TAP missing")
	}
}

func TestAttachVMMBringsInPendingNICs(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-att"
	if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{NetnsPath: e.netns}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.AddNIC(ctx(t), e.spec(id)); err != nil {
		t.Fatal(err)
	}
	sim := vmmsim.NewCH(t, vmmsim.CHConfig{State: vmmsim.CHRunning})
	rec, err := e.m.AttachVMM(ctx(t), id, vmmadapter.CloudHypervisor, sim.Socket())
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := rec.NIC("eth0"); n.State != netsetup.NICAttached || len(sim.Net()) != 1 {
		t.Errorf("after attach-vmm: NIC %+v, VMM nets %+v", n, sim.Net())
	}
	// Again: nothing new is sent to the VMM.
	if _, err := e.m.AttachVMM(ctx(t), id, vmmadapter.CloudHypervisor, sim.Socket()); err != nil {
		t.Fatal(err)
	}
	if got := sim.CountCalls("PUT", "/api/v1/vm.add-net"); got != 1 {
		t.Errorf("vm.add-net calls = %d, want 1", got)
	}
}

func TestGC(t *testing.T) {
	e := newEnv(t)
	ns2 := netfixture.Netns(t, netfixture.Name("vmnict-s"))
	netfixture.Veth(t, ns2, "eth0", e.peer, "peer4", 0, "")
	ns3 := netfixture.Netns(t, netfixture.Name("vmnict-s"))
	netfixture.Veth(t, ns3, "eth0", e.peer, "peer5", 0, "")
	s1 := e.spec("vmnict-gc1")
	s2 := e.spec("vmnict-gc2")
	s2.NetnsPath = ns2
	if _, err := e.m.Prepare(ctx(t), "vmnict-gc3", PrepareOptions{NetnsPath: ns3}); err != nil {
		t.Fatal(err)
	}
	s3 := e.spec("vmnict-gc3")
	s3.NetnsPath, s3.ContainerID = ns3, "cnitool-gc3"
	for _, s := range []NICSpec{s1, s2, s3} {
		if _, err := e.m.AddNIC(ctx(t), s); err != nil {
			t.Fatal(err)
		}
	}
	// Another network's NIC is not this GC's business.
	if err := e.m.GC(ctx(t), "other-net", nil); err != nil {
		t.Fatal(err)
	}
	if ids, _ := e.m.Store.IDs(); len(ids) != 3 {
		t.Fatalf("GC of another network removed records: %v", ids)
	}
	if err := e.m.GC(ctx(t), "vmnict-net", []Attachment{{ContainerID: "vmnict-gc1", IfName: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Store.Get("vmnict-gc1"); err != nil {
		t.Errorf("valid attachment's record removed: %v", err)
	}
	if _, err := e.m.Store.Get("vmnict-gc2"); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("CNI-made record of a stale attachment kept: %v", err)
	}
	rec, err := e.m.Store.Get("vmnict-gc3")
	if err != nil || len(rec.NetworkConfigs) != 0 || rec.Phase != netsetup.PhasePrepared {
		t.Errorf("prepared sandbox after GC: %v %+v", err, rec)
	}
	for _, p := range []string{ns2, ns3} {
		if netfixture.LinkIn(t, p, "tapeth0") != nil {
			t.Errorf("TAP left in %s", p)
		}
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") == nil {
		t.Error("valid attachment's TAP removed")
	}
}
