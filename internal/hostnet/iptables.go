package hostnet

import (
	"errors"
	"fmt"

	"github.com/coreos/go-iptables/iptables"
)

// RuleComment marks every iptables rule vmnic adds.
const RuleComment = "vmnic"

// ForwardRuleSpec is the rule for bridge (without table and chain).
func ForwardRuleSpec(bridge string) []string {
	return []string{"-i", bridge, "-o", bridge, "-m", "comment", "--comment", RuleComment, "-j", "ACCEPT"}
}

// AddForwardRules adds the bridge backend's FORWARD ACCEPT rules for
// bridge (`-i <br> -o <br> -m comment --comment vmnic -j ACCEPT`, first in
// the filter table's FORWARD chain), IPv4 always and IPv6 when ip6tables is
// installed; a rule already there is kept. On error nothing stays added.
// Who still needs a bridge's rules is counted by the caller
// (netsetup.Store.AcquireBridgeForward).
func AddForwardRules(bridge string) error { return setForwardRules(bridge, true) }

// RemoveForwardRules removes the rules AddForwardRules adds; missing rules
// are not an error.
func RemoveForwardRules(bridge string) error { return setForwardRules(bridge, false) }

// setForwardRules adds (present) or removes the rules for bridge, IPv4
// always and IPv6 when ip6tables is installed.
func setForwardRules(bridge string, present bool) error {
	spec := ForwardRuleSpec(bridge)
	var errs []error
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			if proto == iptables.ProtocolIPv6 {
				continue // no ip6tables: nothing to do for IPv6
			}
			errs = append(errs, fmt.Errorf("iptables: %w", err))
			continue
		}
		if present {
			ok, err := ipt.Exists("filter", "FORWARD", spec...)
			if err == nil && !ok {
				err = ipt.Insert("filter", "FORWARD", 1, spec...)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("add FORWARD ACCEPT rule for bridge %s (%s): %w", bridge, protoName(proto), err))
			}
		} else if err := ipt.DeleteIfExists("filter", "FORWARD", spec...); err != nil {
			errs = append(errs, fmt.Errorf("remove FORWARD ACCEPT rule for bridge %s (%s): %w", bridge, protoName(proto), err))
		}
	}
	if len(errs) > 0 && present {
		// Leave nothing half added.
		_ = setForwardRules(bridge, false)
	}
	return errors.Join(errs...)
}

func protoName(p iptables.Protocol) string {
	if p == iptables.ProtocolIPv6 {
		return "ip6tables"
	}
	return "iptables"
}
