package netsetup

import (
	"strconv"
)

// GuestConfigVersion is the version of the GuestConfig document. A change
// that an agent reading version 1 would misread bumps it; new optional keys
// do not.
const GuestConfigVersion = 1

// GuestConfig is what the guest must apply to have the sandbox's network:
// the stable, versioned document of `vmnicctl guest-config --format json`,
// also kept under "guest_config" in the record's live copy in the VMM's
// runtime dir (see MirrorPath), so an agent in the guest can apply a
// hot-added NIC.
type GuestConfig struct {
	Version    int              `json:"version"`
	SandboxID  string           `json:"sandbox_id"`
	Interfaces []GuestInterface `json:"interfaces"`
}

// GuestInterface is one NIC as the guest must configure it. The guest finds
// it by MAC; Name is the CNI interface name, a label only.
type GuestInterface struct {
	Name string `json:"name"`
	MAC  string `json:"mac,omitempty"`
	// State is the NIC's state in the record: an agent applies an
	// "attached" NIC; a "pending" one is not in the VM yet.
	State NICState `json:"state"`
	// MTU is the NIC's MTU, the TAP's (0: unknown, keep the device's).
	MTU       int          `json:"mtu,omitempty"`
	Addresses []string     `json:"addresses"`
	Gateway4  string       `json:"gateway4,omitempty"`
	Gateway6  string       `json:"gateway6,omitempty"`
	Routes    []GuestRoute `json:"routes,omitempty"`
	DNS       *DNS         `json:"dns,omitempty"`
}

// GuestRoute is a route as the guest installs it: Via is resolved (a CNI
// route without a gateway goes via the NIC's gateway of its family, as
// ConfigureIface in containernetworking/plugins pkg/ipam/ipam_linux.go
// installs it in the pod netns; without one the route is on the link), and
// MTU is never above the interface's, the TAP's.
type GuestRoute struct {
	To     string `json:"to"`
	Via    string `json:"via,omitempty"`
	MTU    int    `json:"mtu,omitempty"`
	AdvMSS int    `json:"advmss,omitempty"`
	Metric int    `json:"metric,omitempty"`
	Table  int    `json:"table,omitempty"`
	// Scope is "global", "site", "link", "host" or "nowhere" (or the
	// rtnetlink number for another value); empty: the kernel's default.
	Scope string `json:"scope,omitempty"`
}

// GuestConfig builds the guest document of the record: every NIC that is
// not being removed, in record order.
func (s *NetSetup) GuestConfig() *GuestConfig {
	gc := &GuestConfig{Version: GuestConfigVersion, SandboxID: s.SandboxID, Interfaces: []GuestInterface{}}
	for _, n := range s.NetworkConfigs {
		if n.State == NICDetaching {
			continue
		}
		gc.Interfaces = append(gc.Interfaces, n.GuestInterface())
	}
	return gc
}

// GuestInterface is the NIC as the guest must configure it (see
// GuestConfig). Routes of a family the NIC has no address of are left out:
// a CNI result lists its routes once for all its interfaces.
func (n NIC) GuestInterface() GuestInterface {
	gi := GuestInterface{
		Name:      n.IfName,
		MAC:       n.MAC,
		State:     n.State,
		MTU:       n.MTU,
		Addresses: append([]string{}, n.IPs...),
		Gateway4:  n.GatewayFor(IPv4),
		Gateway6:  n.GatewayFor(IPv6),
	}
	if n.DNS != nil && !n.DNS.empty() {
		d := *n.DNS
		gi.DNS = &d
	}
	has := map[Family]bool{IPv4: len(n.IPsOf(IPv4)) > 0, IPv6: len(n.IPsOf(IPv6)) > 0}
	for _, r := range n.Routes {
		f := FamilyOf(r.Dst)
		if !has[f] {
			continue
		}
		gr := GuestRoute{To: r.Dst, Via: r.GW, MTU: r.MTU, AdvMSS: r.AdvMSS, Metric: r.Priority}
		if gr.Via == "" {
			gr.Via = n.GatewayFor(f)
		}
		if n.MTU > 0 && gr.MTU > n.MTU {
			gr.MTU = n.MTU
		}
		if r.Table != nil {
			gr.Table = *r.Table
		}
		if r.Scope != nil {
			gr.Scope = ScopeName(*r.Scope)
		}
		gi.Routes = append(gi.Routes, gr)
	}
	return gi
}

func (d *DNS) empty() bool {
	return len(d.Nameservers) == 0 && d.Domain == "" && len(d.Search) == 0 && len(d.Options) == 0
}

// ScopeName names an rtnetlink route scope (RT_SCOPE_* of linux/rtnetlink.h)
// the way ip-route(8) and systemd-networkd do; other values stay numbers.
func ScopeName(scope int) string {
	switch scope {
	case 0:
		return "global"
	case 200:
		return "site"
	case 253:
		return "link"
	case 254:
		return "host"
	case 255:
		return "nowhere"
	}
	return strconv.Itoa(scope)
}

// IPsOf4 are the interface's IPv4 addresses (CIDR notation).
func (g GuestInterface) IPsOf4() []string { return g.ipsOf(IPv4) }

// IPsOf6 are the interface's IPv6 addresses (CIDR notation).
func (g GuestInterface) IPsOf6() []string { return g.ipsOf(IPv6) }

func (g GuestInterface) ipsOf(f Family) []string {
	var out []string
	for _, a := range g.Addresses {
		if FamilyOf(a) == f {
			out = append(out, a)
		}
	}
	return out
}
