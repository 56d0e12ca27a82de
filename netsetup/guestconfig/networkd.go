package guestconfig

import (
	"fmt"
	"strings"

	"github.com/vmnic/vmnic/netsetup"
)

// renderNetworkd writes one systemd-networkd .network file per NIC
// (systemd.network(5)): [Match] by MAC, [Link] MTUBytes, [Network] the
// addresses and DNS with DHCP and router advertisements off (the config is
// static and complete), and one [Route] per route with Gateway, Metric,
// Table, Scope, MTUBytes and TCPAdvertisedMaximumSegmentSize.
func renderNetworkd(gc *netsetup.GuestConfig) *Output {
	o := &Output{Format: Networkd}
	for i, it := range gc.Interfaces {
		var b strings.Builder
		b.WriteString(header(gc))
		b.WriteString("[Match]\n")
		if it.MAC != "" {
			fmt.Fprintf(&b, "MACAddress=%s\n", it.MAC)
		} else {
			fmt.Fprintf(&b, "Name=%s\n", it.Name)
			o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: no MAC recorded, matched by the name %s, which the guest may not use", it.Name, it.Name))
		}
		if it.MTU > 0 {
			fmt.Fprintf(&b, "\n[Link]\nMTUBytes=%d\n", it.MTU)
		}
		b.WriteString("\n[Network]\nDHCP=no\nIPv6AcceptRA=no\n")
		for _, a := range it.Addresses {
			fmt.Fprintf(&b, "Address=%s\n", a)
		}
		if d := it.DNS; d != nil {
			for _, ns := range d.Nameservers {
				fmt.Fprintf(&b, "DNS=%s\n", ns)
			}
			if s := searchList(d); len(s) > 0 {
				fmt.Fprintf(&b, "Domains=%s\n", strings.Join(s, " "))
			}
			if len(d.Options) > 0 {
				o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: DNS options %s (networkd has none)", it.Name, strings.Join(d.Options, " ")))
			}
		}
		for _, r := range it.Routes {
			networkdRoute.write(&b, o, it.Name, r)
		}
		o.Files = append(o.Files, File{Name: networkdFileName(i, it.Name), Data: []byte(b.String())})
	}
	return o
}

// networkdRoute is a [Route] section of systemd.network(5).
var networkdRoute = routeSyntax{
	format: "networkd",
	to:     "\n[Route]\nDestination=%s\n", via: "Gateway=%s\n", metric: "Metric=%d\n",
	table: "Table=%d\n", scope: "Scope=%s\n", mtu: "MTUBytes=%d\n",
	advmss:     "TCPAdvertisedMaximumSegmentSize=%d\n",
	scopesNote: "networkd names global, site, link, host and nowhere",
	scopes:     []string{"global", "site", "link", "host", "nowhere"},
}

// networkdFileName orders the files as the NICs are ordered; networkd reads
// them in lexical order and the first match wins.
func networkdFileName(i int, name string) string {
	return fmt.Sprintf("10-vmnic-%02d-%s.network", i, name)
}
