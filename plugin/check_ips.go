package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmnic/vmnic/netsetup"
)

// checkGuestIPs compares, family by family, the addresses and gateway
// prevResult gives the interface with what the record gave the guest: a
// dual-stack result must be recorded with both families, or the guest is
// missing one.
func checkGuestIPs(nic *netsetup.NIC, p *picked) error {
	var problems []string
	rec := &netsetup.NIC{IPs: p.ips, Gateway: p.gateway, Gateways: p.gateways}
	for _, f := range []netsetup.Family{netsetup.IPv4, netsetup.IPv6} {
		want, got := rec.IPsOf(f), nic.IPsOf(f)
		for _, ip := range want {
			if !slices.Contains(got, ip) {
				problems = append(problems, fmt.Sprintf("IPv%d: prevResult gives %s address %s, the guest's record does not have it", f, nic.IfName, ip))
			}
		}
		for _, ip := range got {
			if !slices.Contains(want, ip) {
				problems = append(problems, fmt.Sprintf("IPv%d: the guest's record has address %s, prevResult does not give it to %s", f, ip, nic.IfName))
			}
		}
		if len(nic.Gateways) == 0 && netsetup.FamilyOf(nic.Gateway) != f {
			// A record written before Gateways kept one gateway: the
			// other family's was never recorded, not lost.
			continue
		}
		if w, g := rec.GatewayFor(f), nic.GatewayFor(f); w != g {
			problems = append(problems, fmt.Sprintf("IPv%d: prevResult gateway %q, the guest's record has %q", f, w, g))
		}
	}
	if len(problems) > 0 {
		return types.NewError(types.ErrInternal, "CHECK "+nic.IfName+": "+strings.Join(problems, "; "), "")
	}
	return nil
}
