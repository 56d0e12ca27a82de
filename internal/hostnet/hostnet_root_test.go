package hostnet

import (
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

func TestTapLifecycle(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netfixture.Netns(t, netfixture.Name("vmnict-h"))
	netfixture.In(t, ns, func() error {
		link, err := CreateTap(TapSpec{Name: "tapx0", MTU: 9000, QueuePairs: 2, Owner: 42, Group: -1})
		if err != nil {
			t.Fatalf("CreateTap: %v", err)
		}
		tt := link.(*netlink.Tuntap)
		if link.Attrs().MTU != 9000 || link.Attrs().Flags&1 == 0 {
			t.Errorf("mtu %d flags %v", link.Attrs().MTU, link.Attrs().Flags)
		}
		l2, _ := netlink.LinkByName("tapx0")
		if l2.Attrs().MTU != 9000 || l2.Attrs().Flags&net.FlagUp == 0 || l2.Attrs().RawFlags&unix.IFF_UP == 0 {
			t.Errorf("in the kernel: mtu %d flags %v", l2.Attrs().MTU, l2.Attrs().Flags)
		}
		tt = l2.(*netlink.Tuntap)
		if tt.Flags&netlink.TUNTAP_MULTI_QUEUE == 0 || tt.Owner != 42 || tt.NonPersist {
			t.Errorf("tap %+v", tt)
		}
		if _, err := CreateTap(TapSpec{Name: "tapx0", Owner: -1, Group: -1}); !errors.Is(err, ErrNameTaken) {
			t.Errorf("second CreateTap = %v, want ErrNameTaken", err)
		}
		if _, err := CreateTap(TapSpec{Name: "averyveryverylongname", Owner: -1, Group: -1}); err == nil {
			t.Error("a 21-byte name was accepted")
		}
		// A failed create (MTU the TAP refuses) leaves no device.
		if _, err := CreateTap(TapSpec{Name: "tapx1", MTU: 70000, Owner: -1, Group: -1}); err == nil {
			t.Error("MTU 70000 accepted")
		}
		if _, err := netlink.LinkByName("tapx1"); err == nil {
			t.Error("a failed CreateTap left tapx1")
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "notatap"}}); err != nil {
			t.Fatal(err)
		}
		if err := DeleteTap("notatap"); err == nil {
			t.Error("DeleteTap removed a bridge")
		}
		for i := 0; i < 2; i++ {
			if err := DeleteTap("tapx0"); err != nil {
				t.Errorf("DeleteTap #%d: %v", i+1, err)
			}
		}
		return nil
	})
}

func TestRedirectAndIngress(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netfixture.Netns(t, netfixture.Name("vmnict-h"))
	netfixture.In(t, ns, func() error {
		a, err := CreateTap(TapSpec{Name: "tapa", Owner: -1, Group: -1})
		if err != nil {
			t.Fatal(err)
		}
		b, err := CreateTap(TapSpec{Name: "tapb", Owner: -1, Group: -1})
		if err != nil {
			t.Fatal(err)
		}
		created, err := EnsureIngress(a)
		if err != nil || !created {
			t.Fatalf("EnsureIngress on a bare link: %v %v", created, err)
		}
		if created, err := EnsureIngress(a); err != nil || created {
			t.Errorf("EnsureIngress again: %v %v", created, err)
		}
		if kind, _ := IngressKind(a); kind != "ingress" {
			t.Errorf("kind %q", kind)
		}
		if ok, _ := HasRedirect(a, b.Attrs().Index); ok {
			t.Error("redirect before AddRedirect")
		}
		if err := AddRedirect(a, b); err != nil {
			t.Fatal(err)
		}
		if ok, err := HasRedirect(a, b.Attrs().Index); !ok || err != nil {
			t.Errorf("HasRedirect = %v %v", ok, err)
		}
		if ok, _ := HasRedirect(a, a.Attrs().Index); ok {
			t.Error("redirect to the wrong device reported")
		}
		if err := RemoveIngressIfEmpty(a); err != nil {
			t.Fatal(err)
		}
		if kind, _ := IngressKind(a); kind != "ingress" {
			t.Error("ingress qdisc with a filter removed")
		}
		for i := 0; i < 2; i++ {
			if err := DelRedirect(a); err != nil {
				t.Errorf("DelRedirect #%d: %v", i+1, err)
			}
		}
		if ok, _ := HasRedirect(a, b.Attrs().Index); ok {
			t.Error("redirect after DelRedirect")
		}
		if err := RemoveIngressIfEmpty(a); err != nil {
			t.Fatal(err)
		}
		if kind, _ := IngressKind(a); kind != "" {
			t.Errorf("empty ingress qdisc kept: %q", kind)
		}
		// clsact: used as is, never removed by RemoveIngressIfEmpty.
		if err := netlink.QdiscAdd(&netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: b.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}); err != nil {
			t.Fatal(err)
		}
		if created, err := EnsureIngress(b); err != nil || created {
			t.Errorf("EnsureIngress on clsact: %v %v", created, err)
		}
		if err := AddRedirect(b, a); err != nil {
			t.Fatalf("redirect under clsact: %v", err)
		}
		if ok, err := HasRedirect(b, a.Attrs().Index); !ok || err != nil {
			t.Errorf("HasRedirect under clsact = %v %v", ok, err)
		}
		DelRedirect(b)
		RemoveIngressIfEmpty(b)
		if kind, _ := IngressKind(b); kind != "clsact" {
			t.Errorf("clsact removed: %q", kind)
		}
		return nil
	})
}

func TestForwardRules(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Command(t, "iptables")
	br := netfixture.Name("vmnbrt")
	ipt, err := iptables.New()
	if err != nil {
		t.Fatal(err)
	}
	count := func() int {
		t.Helper()
		rules, err := ipt.List("filter", "FORWARD")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, rule := range rules {
			if rule == "-A FORWARD -i "+br+" -o "+br+" -m comment --comment "+RuleComment+" -j ACCEPT" {
				n++
			}
		}
		return n
	}
	t.Cleanup(func() { ipt.DeleteIfExists("filter", "FORWARD", ForwardRuleSpec(br)...) })
	// Adding twice keeps one rule.
	for i := 0; i < 2; i++ {
		if err := AddForwardRules(br); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(); n != 1 {
		t.Fatalf("rule appears %d times after two adds, want 1", n)
	}
	if rules, _ := ipt.List("filter", "FORWARD"); len(rules) < 2 || !strings.Contains(rules[1], "--comment "+RuleComment) {
		t.Errorf("the rule is not first in FORWARD: %v", rules)
	}
	if err := RemoveForwardRules(br); err != nil {
		t.Fatal(err)
	}
	if n := count(); n != 0 {
		t.Errorf("rule appears %d times after the remove", n)
	}
	if err := RemoveForwardRules(br); err != nil {
		t.Errorf("remove again: %v", err)
	}
}

// TestTapOneRequest: the marker, the link group and IPv6 address
// generation "none" arrive with the request that brings the TAP up, and
// the TAP stays without an IPv6 address once a queue gives it carrier
// (the moment addrconf would make its link-local address).
func TestTapOneRequest(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netfixture.Netns(t, netfixture.Name("vmnict-h"))
	netfixture.In(t, ns, func() error {
		// The netns is private: IPv6 on, whatever the defaults.
		for _, p := range []string{"/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"} {
			if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
				t.Skipf("no IPv6 here: %v", err)
			}
		}
		mark := Marker{Install: "0123abcd", Backend: MarkerCNI, IfName: "eth0", Sandbox: "sb1"}
		const group = 1<<31 | 77
		if _, err := CreateTap(TapSpec{Name: "tapq0", MTU: 1400, Owner: -1, Group: -1, Marker: mark, LinkGroup: group}); err != nil {
			t.Fatalf("CreateTap: %v", err)
		}
		l, err := netlink.LinkByName("tapq0")
		if err != nil {
			t.Fatal(err)
		}
		if a := l.Attrs(); a.MTU != 1400 || a.RawFlags&unix.IFF_UP == 0 || a.Group != group || a.Alias != mark.String() {
			t.Errorf("tapq0: mtu %d flags %#x group %d alias %q, want 1400, up, %d, %q", a.MTU, a.RawFlags, a.Group, a.Alias, group, mark.String())
		}
		mode, err := os.ReadFile("/proc/sys/net/ipv6/conf/tapq0/addr_gen_mode")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(string(mode)) != "1" { // IN6_ADDR_GEN_MODE_NONE
			t.Errorf("addr_gen_mode %q, want 1 (none)", strings.TrimSpace(string(mode)))
		}
		q, err := OpenTapQueues("tapq0", 1)
		if err != nil {
			t.Fatal(err)
		}
		defer CloseFiles(q)
		deadline := time.Now().Add(2 * time.Second)
		for {
			l, err = netlink.LinkByName("tapq0")
			if err != nil {
				t.Fatal(err)
			}
			if l.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if l.Attrs().RawFlags&unix.IFF_LOWER_UP == 0 {
			t.Fatal("tapq0 has no carrier with a queue open")
		}
		time.Sleep(50 * time.Millisecond)
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		if len(addrs) != 0 {
			t.Errorf("tapq0 has IPv6 addresses %v, want none", addrs)
		}
		return DeleteTap("tapq0")
	})
}
