package datapath

import (
	"context"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// setFeatures switches a veth's GRO features on and off through
// SIOCETHTOOL, and getFeatures reads back what the kernel has.
func TestSetFeatures(t *testing.T) {
	testenv.RequireRoot(t)
	a := netfixture.Netns(t, "feat-a")
	b := netfixture.Netns(t, "feat-b")
	netfixture.Veth(t, a, "eth0", b, "peer0", 1500, "")
	netfixture.In(t, a, func() error {
		f, err := getFeatures("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if !f.Changeable["rx-gro"] || !f.Changeable["rx-udp-gro-forwarding"] {
			t.Fatalf("veth features not changeable: rx-gro %v, rx-udp-gro-forwarding %v", f.Changeable["rx-gro"], f.Changeable["rx-udp-gro-forwarding"])
		}
		for _, on := range []bool{true, false} {
			want := map[string]bool{"rx-gro": on, "rx-udp-gro-forwarding": on}
			if err := setFeatures("eth0", want); err != nil {
				t.Fatalf("setFeatures %v: %v", want, err)
			}
			got, err := getFeatures("eth0")
			if err != nil {
				t.Fatal(err)
			}
			for name, w := range want {
				if got.Active[name] != w {
					t.Errorf("%s is %v after setting %v", name, got.Active[name], w)
				}
			}
		}
		if err := setFeatures("eth0", map[string]bool{"no-such-feature": true}); err == nil {
			t.Error("setFeatures accepted an unknown feature")
		}
		return nil
	})
}

// Both XDP programs pass the verifier and attach to a veth in native mode;
// while one is attached, the peer veth has no TSO (veth_fix_features clears
// NETIF_F_GSO_SOFTWARE on the peer of a veth with any XDP program, frags
// or not: what costs the XDP experiments their TCP throughput).
func TestXDPProgramsAttach(t *testing.T) {
	testenv.RequireRoot(t)
	if err := hostnet.ProbeBPF(); err != nil {
		testenv.Unavailable(t, "BPF: %v", err)
	}
	a := netfixture.Netns(t, "xdp-a")
	b := netfixture.Netns(t, "xdp-b")
	netfixture.Veth(t, a, "eth0", b, "peer0", 1500, "")
	netfixture.In(t, a, func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		netfixture.In(t, b, func() error {
			f, err := getFeatures("peer0")
			if err == nil && !f.Active["tx-tcp-segmentation"] {
				t.Fatal("peer0 has no TSO before any XDP program")
			}
			return err
		})
		for name, insns := range map[string]func() error{
			progNameXDPPass:  func() error { return attachXDP(eth0, progNameXDPPass, xdpPassInsns()) },
			progNameXDPRedir: func() error { return attachXDP(eth0, progNameXDPRedir, xdpRedirectInsns(eth0.Attrs().Index, 1514)) },
		} {
			if err := insns(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			if l.Attrs().Xdp == nil || !l.Attrs().Xdp.Attached || l.Attrs().Xdp.AttachMode != 1 /* XDP_ATTACHED_DRV */ {
				t.Errorf("%s: eth0 XDP state %+v, want attached in driver mode", name, l.Attrs().Xdp)
			}
			netfixture.In(t, b, func() error {
				f, err := getFeatures("peer0")
				if err != nil {
					return err
				}
				if f.Active["tx-tcp-segmentation"] {
					t.Errorf("%s: peer0 keeps TSO with XDP on eth0", name)
				}
				return nil
			})
		}
		return nil
	})
}

// The experimental variants run and produce echo numbers: the XDP redirect
// variant's ARP and ICMP go to the guest through tun_xdp_xmit.
func TestQuickExperiments(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Command(t, "iptables")
	if err := hostnet.ProbeBPF(); err != nil {
		testenv.Unavailable(t, "the experiments need BPF: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{Quick: true, EchoOnly: true, Experiments: true,
		Variants: []string{"cni-bpf-gro", "cni-bpf-xdppass", "cni-bpf-xdpredir"}})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Variants) != 4 {
		t.Fatalf("%d variants, want bridge and the three experiments", len(rep.Variants))
	}
	for _, v := range rep.Variants {
		r := v.Rounds[0]
		for name, p := range map[string]PingResult{"1 outstanding": r.Ping1, "64 outstanding": r.Ping64} {
			if p.Received == 0 || p.Rate <= 0 || p.ProcCPUUsPerEcho <= 0 {
				t.Errorf("%s echo %s: %+v", v.Name, name, p)
			}
		}
		if r.HostToVM.Bytes != 0 {
			t.Errorf("%s: echo-only run measured TCP", v.Name)
		}
	}
}
