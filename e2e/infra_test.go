package e2e

import (
	"net"
	"slices"
	"strings"
	"testing"
)

// TestPlainPod checks the infrastructure itself: a pod on the default handler
// (bridge + host-local, no vmnic) gets its netns, veth, IP and lease, and
// leaves nothing behind once removed.
func TestPlainPod(t *testing.T) {
	e := needSuite(t)
	p := e.RunPod(t, podName("plain"), podOpts{})
	st := e.Status(t, p)
	_, subnet, _ := net.ParseCIDR(net0Subnet)
	if ip := net.ParseIP(st.IP); ip == nil || !subnet.Contains(ip) {
		t.Fatalf("pod IP %q, want one in %s", st.IP, net0Subnet)
	}
	if !isNetnsMount(st.NetnsPath) {
		t.Fatalf("pod netns %q is not a mounted netns", st.NetnsPath)
	}
	ns := OpenNetns(t, st.NetnsPath)
	links := ns.Links(t)
	eth0, ok := links["eth0"]
	if !ok || eth0.Type != "veth" {
		t.Fatalf("pod netns links %v: want veth eth0", links)
	}
	if !slices.ContainsFunc(eth0.Addrs, func(a string) bool { return strings.HasPrefix(a, st.IP+"/") }) {
		t.Fatalf("eth0 addresses %v, want %s", eth0.Addrs, st.IP)
	}
	if taps := Taps(links); len(taps) != 0 {
		t.Fatalf("plain pod has TAPs %v", taps)
	}
	if ports := BridgePorts(t, net0Bridge); len(ports) == 0 {
		t.Fatalf("bridge %s has no ports", net0Bridge)
	}
	if leases := e.Leases(t, net0Name); !slices.Contains(leases, st.IP) {
		t.Fatalf("leases %v, want %s", leases, st.IP)
	}

	e.RemovePod(t, p)
	if leases := e.Leases(t, net0Name); slices.Contains(leases, st.IP) {
		t.Errorf("lease %s left after RemovePodSandbox: %v", st.IP, leases)
	}
	if exists(st.NetnsPath) {
		t.Errorf("netns %s left after RemovePodSandbox", st.NetnsPath)
	}
	if links := ns.Links(t); len(links) != 1 {
		t.Errorf("links left in the pod netns after RemovePodSandbox: %v", links)
	}
}
