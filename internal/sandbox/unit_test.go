package sandbox

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestNICID(t *testing.T) {
	for in, want := range map[string]string{"eth0": "eth0", "net_1": "net_1", "Net2": "Net2"} {
		if got := NICID(in); got != want {
			t.Errorf("NICID(%q) = %q", in, got)
		}
	}
	a, b := NICID("eth-0"), NICID("eth.0")
	if a == b || a[:6] != "eth_0_" || len(a) != 14 {
		t.Errorf("NICID of invalid ids: %q %q", a, b)
	}
}

func TestValidators(t *testing.T) {
	for _, bad := range []string{"", ".", "..", "a/b", "a:b", "a b", "abcdefghijklmnop"} {
		if ValidateIfName(bad) == nil {
			t.Errorf("ifname %q accepted", bad)
		}
	}
	for _, good := range []string{"eth0", "net1", "abcdefghijklmno"} {
		if err := ValidateIfName(good); err != nil {
			t.Errorf("ifname %q: %v", good, err)
		}
	}
	for _, n := range []int{0, 2, 256, 1024, 32768} {
		if err := ValidateQueueSize(n); err != nil {
			t.Errorf("queue size %d: %v", n, err)
		}
	}
	for _, n := range []int{1, 3, 100, 65536, -256} {
		if ValidateQueueSize(n) == nil {
			t.Errorf("queue size %d accepted", n)
		}
	}
	for _, c := range []struct {
		mac string
		ok  bool
	}{{"02:00:00:00:00:01", true}, {"01:00:5e:00:00:01", false}, {"00:00:00:00:00:00", false}, {"zz", false}, {"00:11:22:33:44:55:66:77", false}} {
		if _, err := parseUnicastMAC(c.mac); (err == nil) != c.ok {
			t.Errorf("MAC %q: %v", c.mac, err)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	ok := NICSpec{SandboxID: "sb", IfName: "eth0", NetnsPath: "/x"}
	if err := ok.validate(); err != nil || ok.QueuePairs != 1 || ok.QueueSize != DefaultQueueSize || ok.Backend != "cni" {
		t.Errorf("defaults: %v %+v", err, ok)
	}
	for _, c := range []struct {
		mut  func(*NICSpec)
		code uint
	}{
		{func(s *NICSpec) { s.SandboxID = "../x" }, CodeInvalidEnv},
		{func(s *NICSpec) { s.IfName = "" }, CodeInvalidEnv},
		{func(s *NICSpec) { s.QueuePairs = 257 }, CodeInvalidConfig},
		{func(s *NICSpec) { s.QueueSize = 7 }, CodeInvalidConfig},
		{func(s *NICSpec) { s.Backend = "x" }, CodeInvalidConfig},
		{func(s *NICSpec) { s.Backend = "bridge" }, CodeInvalidConfig},
		{func(s *NICSpec) { s.MAC = "ff:ff:ff:ff:ff:ff" }, CodeInvalidConfig},
		{func(s *NICSpec) { s.IPs = []string{"10.0.0.1"} }, CodeInvalidConfig},
	} {
		s := NICSpec{SandboxID: "sb", IfName: "eth0", NetnsPath: "/x"}
		c.mut(&s)
		if err := s.validate(); Code(err) != c.code {
			t.Errorf("%+v: %v (code %d), want code %d", s, err, Code(err), c.code)
		}
	}
}

func TestErrorCodes(t *testing.T) {
	e := coded(CodeInvalidNetns, errors.New("inner"), "CNI_NETNS %s", "/x")
	if e.Error() != "CNI_NETNS /x: inner" || Code(fmt.Errorf("wrap: %w", e)) != types.ErrInvalidNetNS {
		t.Errorf("coded: %q %d", e, Code(e))
	}
	if Code(errors.New("plain")) != types.ErrInternal {
		t.Error("a plain error is not internal")
	}
	if !errors.Is(e, e.Err) {
		t.Error("Unwrap")
	}
}
