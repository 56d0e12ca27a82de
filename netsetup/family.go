package netsetup

import (
	"net"
	"strings"
)

// Family is an IP address family of the guest configuration.
type Family int

const (
	// IPv4 is the IPv4 family.
	IPv4 Family = 4
	// IPv6 is the IPv6 family.
	IPv6 Family = 6
)

// FamilyOf is the family of an address or prefix ("10.0.0.2", "fd00::/64");
// 0 when s is neither.
func FamilyOf(s string) Family {
	if i := strings.IndexByte(s, '/'); i >= 0 {
		s = s[:i]
	}
	ip := net.ParseIP(s)
	switch {
	case ip == nil:
		return 0
	case ip.To4() != nil:
		return IPv4
	default:
		return IPv6
	}
}

// GatewayFor is the NIC's gateway of family f ("" when it has none): from
// Gateways, or, for records that kept only Gateway, that one when it is of
// family f.
func (n NIC) GatewayFor(f Family) string {
	for _, g := range n.Gateways {
		if FamilyOf(g) == f {
			return g
		}
	}
	if FamilyOf(n.Gateway) == f {
		return n.Gateway
	}
	return ""
}

// IPsOf are the NIC's addresses (CIDR notation) of family f, in record order.
func (n NIC) IPsOf(f Family) []string {
	var out []string
	for _, ip := range n.IPs {
		if FamilyOf(ip) == f {
			out = append(out, ip)
		}
	}
	return out
}
