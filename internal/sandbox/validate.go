package sandbox

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/netsetup"
)

// ValidateIfName checks a CNI interface name (1-15 bytes, not . or .., no
// '/', ':' or white space).
func ValidateIfName(name string) error {
	switch {
	case name == "":
		return errors.New("interface name is empty")
	case len(name) > hostnet.MaxIfNameLen:
		return fmt.Errorf("interface name %q is longer than %d bytes", name, hostnet.MaxIfNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is not valid", name)
	case strings.ContainsAny(name, "/: \t\n\v\f\r"):
		return fmt.Errorf("interface name %q contains '/', ':' or white space", name)
	}
	return nil
}

// ValidateQueueSize accepts 0 (default) or a power of two from 2 to 32768.
func ValidateQueueSize(n int) error {
	if n == 0 || (n >= 2 && n <= 32768 && n&(n-1) == 0) {
		return nil
	}
	return fmt.Errorf("queueSize %d: must be a power of two from 2 to 32768", n)
}

// validate checks s and fills its defaults (queue pairs, queue size,
// backend).
func (s *NICSpec) validate() error {
	if err := netsetup.ValidateSandboxID(s.SandboxID); err != nil {
		return coded(CodeInvalidEnv, err, "sandbox id")
	}
	if err := ValidateIfName(s.IfName); err != nil {
		return coded(CodeInvalidEnv, err, "CNI_IFNAME")
	}
	if s.QueuePairs == 0 {
		s.QueuePairs = 1
	}
	if s.QueuePairs < 1 || s.QueuePairs > hostnet.MaxQueuePairs {
		return codedf(CodeInvalidConfig, "queues %d: must be 1 to %d queue pairs", s.QueuePairs, hostnet.MaxQueuePairs)
	}
	if err := ValidateQueueSize(s.QueueSize); err != nil {
		return coded(CodeInvalidConfig, err, "invalid conf")
	}
	if s.QueueSize == 0 {
		s.QueueSize = DefaultQueueSize
	}
	switch s.Backend {
	case "":
		s.Backend = netsetup.BackendCNI
	case netsetup.BackendCNI:
	case netsetup.BackendBridge:
		if s.Bridge == "" {
			return codedf(CodeInvalidConfig, "backend bridge needs the conf key \"bridge\" (the host bridge)")
		}
	default:
		return codedf(CodeInvalidConfig, "backend %q: must be \"cni\" or \"bridge\"", s.Backend)
	}
	if s.MAC != "" {
		if _, err := parseUnicastMAC(s.MAC); err != nil {
			return coded(CodeInvalidConfig, err, "prevResult interface %s: mac", s.IfName)
		}
	}
	for _, ip := range s.IPs {
		if _, _, err := net.ParseCIDR(ip); err != nil {
			return coded(CodeInvalidConfig, err, "prevResult ip %q", ip)
		}
	}
	return nil
}

func parseUnicastMAC(s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil {
		return nil, fmt.Errorf("invalid MAC %q: %w", s, err)
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("invalid MAC %q: not a 6-byte Ethernet address", s)
	}
	if mac[0]&1 != 0 {
		return nil, fmt.Errorf("invalid MAC %q: a multicast address", s)
	}
	if allZero(mac) {
		return nil, fmt.Errorf("invalid MAC %q: all zero", s)
	}
	return mac, nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
