package guestconfig

import (
	"fmt"
	"net"
	"strings"

	"github.com/vmnic/vmnic/netsetup"
)

// renderKernel writes the Linux kernel's own ip= argument
// (Documentation/admin-guide/nfs/nfsroot.rst, net/ipv4/ipconfig.c):
//
//	ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>
//
// The kernel takes one ip= (a later one replaces an earlier one), one IPv4
// address, and makes a default route via <gw-ip>; so it configures the first
// NIC with an IPv4 address, named eth<n> by its place among the NICs (the
// kernel's names, given before any udev renaming), and its default route.
// Everything else — other NICs, IPv6, further addresses, other routes or
// route attributes, more than two or IPv6 nameservers, search domains — is
// reported in Lost. The interface MTU is not part of ip=: the guest's
// virtio-net device has it from the VMM, which vmnic gives the TAP's.
func renderKernel(gc *netsetup.GuestConfig) *Output {
	o := &Output{Format: Kernel}
	idx := -1
	for i, it := range gc.Interfaces {
		for _, a := range it.Addresses {
			if netsetup.FamilyOf(a) == netsetup.IPv4 && idx < 0 {
				idx = i
			}
		}
	}
	for i, it := range gc.Interfaces {
		if i != idx {
			o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: not configured (ip= configures one NIC, with IPv4)", it.Name))
		}
	}
	if idx < 0 {
		o.Files = []File{{Name: "cmdline", Data: []byte("ip=off\n")}}
		return o
	}
	it := gc.Interfaces[idx]
	var addr *net.IPNet
	var ip net.IP
	for _, a := range it.Addresses {
		if netsetup.FamilyOf(a) != netsetup.IPv4 {
			o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: address %s (ip= is IPv4 only)", it.Name, a))
			continue
		}
		if addr != nil {
			o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: address %s (ip= takes one address)", it.Name, a))
			continue
		}
		var err error
		if ip, addr, err = net.ParseCIDR(a); err != nil {
			o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: address %q is not valid: %v", it.Name, a, err))
			addr = nil
		}
	}
	if addr == nil {
		o.Files = []File{{Name: "cmdline", Data: []byte("ip=off\n")}}
		return o
	}
	gw := ""
	for _, r := range it.Routes {
		plain := r.MTU == 0 && r.AdvMSS == 0 && r.Metric == 0 && r.Table == 0 && (r.Scope == "" || r.Scope == "global")
		if r.To == "0.0.0.0/0" && r.Via != "" && r.Via == it.Gateway4 && plain && gw == "" {
			gw = r.Via
			continue
		}
		o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: route %s (ip= makes only a plain default route via the gateway)", it.Name, describeRoute(r)))
	}
	if it.Gateway4 != "" && gw == "" {
		o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: gateway %s left out: ip= would make a default route via it, and the NIC has none", it.Name, it.Gateway4))
	}
	var dns []string
	if d := it.DNS; d != nil {
		for _, ns := range d.Nameservers {
			if netsetup.FamilyOf(ns) != netsetup.IPv4 || len(dns) == 2 {
				o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: nameserver %s (ip= takes two IPv4 nameservers)", it.Name, ns))
				continue
			}
			dns = append(dns, ns)
		}
		if s := searchList(d); len(s) > 0 {
			o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: DNS search %s (ip= has none)", it.Name, strings.Join(s, " ")))
		}
		if len(d.Options) > 0 {
			o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: DNS options %s (ip= has none)", it.Name, strings.Join(d.Options, " ")))
		}
	}
	fields := []string{ip.String(), "", gw, net.IP(addr.Mask).String(), "", fmt.Sprintf("eth%d", idx), "off"}
	fields = append(fields, dns...)
	o.Files = []File{{Name: "cmdline", Data: []byte("ip=" + strings.Join(fields, ":") + "\n")}}
	return o
}

func describeRoute(r netsetup.GuestRoute) string {
	s := r.To
	if r.Via != "" {
		s += " via " + r.Via
	}
	for _, kv := range []struct {
		k string
		v int
	}{{"mtu", r.MTU}, {"advmss", r.AdvMSS}, {"metric", r.Metric}, {"table", r.Table}} {
		if kv.v != 0 {
			s += fmt.Sprintf(" %s %d", kv.k, kv.v)
		}
	}
	if r.Scope != "" {
		s += " scope " + r.Scope
	}
	return s
}
