package guestconfig

import (
	"fmt"
	"slices"
	"strings"

	"github.com/vmnic/vmnic/netsetup"
)

// routeSyntax spells one route in a format: a printf pattern per attribute
// ("" where the format cannot express it: a set attribute is then reported
// lost), the scopes the format names, and how it quotes addresses.
type routeSyntax struct {
	format                                     string // for the lost items
	to, via, metric, table, scope, mtu, advmss string
	scopes                                     []string
	scopesNote                                 string              // why another scope is lost
	quote                                      func(string) string // nil: as they are
}

// write appends route r of NIC nic in this syntax, and to o.Lost what it
// cannot express.
func (rs routeSyntax) write(b *strings.Builder, o *Output, nic string, r netsetup.GuestRoute) {
	quote := rs.quote
	if quote == nil {
		quote = func(s string) string { return s }
	}
	lost := func(what, why string) {
		o.Lost = append(o.Lost, fmt.Sprintf("NIC %s: route %s: %s (%s)", nic, r.To, what, why))
	}
	fmt.Fprintf(b, rs.to, quote(r.To))
	if r.Via != "" {
		fmt.Fprintf(b, rs.via, quote(r.Via))
	}
	rs.number(b, rs.metric, r.Metric, "metric", lost)
	rs.number(b, rs.table, r.Table, "table", lost)
	switch {
	case r.Scope == "":
	case slices.Contains(rs.scopes, r.Scope):
		fmt.Fprintf(b, rs.scope, r.Scope)
	default:
		lost("scope "+r.Scope, rs.scopesNote)
	}
	rs.number(b, rs.mtu, r.MTU, "mtu", lost)
	rs.number(b, rs.advmss, r.AdvMSS, "advmss", lost)
}

// number writes a positive attribute, or reports it lost where the format
// has no pattern for it.
func (rs routeSyntax) number(b *strings.Builder, pattern string, v int, name string, lost func(what, why string)) {
	switch {
	case v <= 0:
	case pattern == "":
		lost(fmt.Sprintf("%s %d", name, v), rs.format+" has no "+name)
	default:
		fmt.Fprintf(b, pattern, v)
	}
}
