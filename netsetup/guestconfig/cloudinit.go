package guestconfig

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/vmnic/vmnic/netsetup"
)

// renderCloudInit writes a NoCloud network-config in version 2, the schema
// netplan defines (doc/netplan-yaml.md upstream) and cloud-init reads:
// one "ethernets" entry per NIC matched by MAC, its addresses, routes (to,
// via, metric, table, scope, mtu) and nameservers. Every string is
// double-quoted: YAML 1.1 would read a MAC of only digits as a number.
func renderCloudInit(gc *netsetup.GuestConfig) *Output {
	o := &Output{Format: CloudInit}
	var b strings.Builder
	b.WriteString(header(gc))
	b.WriteString("network:\n  version: 2\n")
	if len(gc.Interfaces) == 0 {
		b.WriteString("  ethernets: {}\n")
	} else {
		b.WriteString("  ethernets:\n")
	}
	for _, it := range gc.Interfaces {
		fmt.Fprintf(&b, "    %s:\n", q(it.Name))
		b.WriteString("      match:\n")
		if it.MAC != "" {
			fmt.Fprintf(&b, "        macaddress: %s\n", q(it.MAC))
		} else {
			fmt.Fprintf(&b, "        name: %s\n", q(it.Name))
			o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: no MAC recorded, matched by the name %s, which the guest may not use", it.Name, it.Name))
		}
		if it.MTU > 0 {
			fmt.Fprintf(&b, "      mtu: %d\n", it.MTU)
		}
		b.WriteString("      dhcp4: false\n      dhcp6: false\n      accept-ra: false\n")
		if len(it.Addresses) > 0 {
			b.WriteString("      addresses:\n")
			for _, a := range it.Addresses {
				fmt.Fprintf(&b, "        - %s\n", q(a))
			}
		}
		if len(it.Routes) > 0 {
			b.WriteString("      routes:\n")
		}
		for _, r := range it.Routes {
			cloudInitRoute.write(&b, o, it.Name, r)
		}
		if d := it.DNS; d != nil {
			search := searchList(d)
			if len(d.Nameservers) > 0 || len(search) > 0 {
				b.WriteString("      nameservers:\n")
			}
			if len(d.Nameservers) > 0 {
				fmt.Fprintf(&b, "        addresses: %s\n", qlist(d.Nameservers))
			}
			if len(search) > 0 {
				fmt.Fprintf(&b, "        search: %s\n", qlist(search))
			}
			if len(d.Options) > 0 {
				o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: DNS options %s (network-config v2 has none)", it.Name, strings.Join(d.Options, " ")))
			}
		}
	}
	o.Files = []File{{Name: "network-config", Data: []byte(b.String())}}
	return o
}

// cloudInitRoute is a route entry of network-config v2 (netplan's
// "routes" list): no advmss there.
var cloudInitRoute = routeSyntax{
	format: "network-config v2",
	to:     "        - to: %s\n", via: "          via: %s\n", metric: "          metric: %d\n",
	table: "          table: %d\n", scope: "          scope: %s\n", mtu: "          mtu: %d\n",
	scopesNote: "network-config v2 has global, link and host",
	scopes:     []string{"global", "link", "host"},
	quote:      q,
}

// q double-quotes a YAML scalar (JSON string escapes are valid YAML).
func q(s string) string { return strconv.Quote(s) }

func qlist(v []string) string {
	out := make([]string, len(v))
	for i, s := range v {
		out[i] = q(s)
	}
	return "[" + strings.Join(out, ", ") + "]"
}
