package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmnic/vmnic/internal/steptime"
	"github.com/vmnic/vmnic/vmmadapter"
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

// The ids below were computed by the code before nicIDHash (a slice of
// hostnet.TapNameOnHost("", ifname)): records hold them, so they must not
// change.
func TestNICIDKeepsRecordedIDs(t *testing.T) {
	for _, c := range []struct{ ifname, id string }{
		{"eth0", "eth0"},
		{"eth-0", "eth_0_f9ed1c1b"},
		{"eth.0", "eth_0_d88b37cd"},
		{"net-1.2", "net_1_2_1e7351b5"},
		{"e,th=0", "e_th_0_8397f127"},
		{"eth0\u00e9", "eth0___b57dbf8e"},
		{"", "_8a5edab2"},
		{"-", "__53ffa564"},
		{"abcdefghijklmn-", "abcdefghijklmn__0b7db713"},
	} {
		if got := NICID(c.ifname); got != c.id {
			t.Errorf("NICID(%q) = %q, want %q", c.ifname, got, c.id)
		}
	}
}

func TestVMMOutcomes(t *testing.T) {
	other := errors.New("connection reset")
	for _, c := range []struct {
		err    error
		booted bool
		want   addOutcome
	}{
		{vmmadapter.ErrHotplugUnsupported, true, addOutcome{stayPending: true}},
		{vmmadapter.ErrUnavailable, false, addOutcome{stayPending: true, until: " until the VMM starts"}},
		{vmmadapter.ErrUnavailable, true, addOutcome{code: CodeTryAgain}},
		{fmt.Errorf("add: %w", vmmadapter.ErrDeviceIDInUse), true, addOutcome{code: CodeInternal}},
		{vmmadapter.ErrTapBusy, false, addOutcome{code: CodeInternal}},
		{other, true, addOutcome{code: CodeInternal, mayHaveDevice: true}},
	} {
		if got := vmmAddOutcome(c.err, c.booted); got != c.want {
			t.Errorf("vmmAddOutcome(%v, booted=%v) = %+v, want %+v", c.err, c.booted, got, c.want)
		}
	}
	for _, c := range []struct {
		err           error
		code          uint
		stillAttached bool
	}{
		{vmmadapter.ErrUnavailable, 0, false},
		{vmmadapter.ErrHotplugUnsupported, 0, false},
		{fmt.Errorf("remove: %w", vmmadapter.ErrEjectTimeout), CodeTryAgain, false},
		{other, CodeInternal, true},
	} {
		got := vmmRemoveOutcome(c.err)
		if got.code != c.code || got.stillAttached != c.stillAttached || (got.code == 0) != (got.msg != "") {
			t.Errorf("vmmRemoveOutcome(%v) = %+v, want code %d stillAttached %v", c.err, got, c.code, c.stillAttached)
		}
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

// New wires the step hooks once: the step-time recorder sees every step,
// the test hook runs after it and its error stops the change there.
func TestStepHooks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "steps")
	rec := steptime.New(path, "ADD")
	var seen []string
	stop := errors.New("stop")
	m := New(Config{}, WithStepTimes(rec), withHook(func(s string) error {
		seen = append(seen, s)
		if s == "tap-created" {
			return stop
		}
		return nil
	}))
	if err := m.step("veth-read"); err != nil {
		t.Fatalf("step: %v", err)
	}
	if err := m.step("tap-created"); !errors.Is(err, stop) {
		t.Fatalf("step = %v, want the hook's error", err)
	}
	if err := rec.Finish(nil); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"name":"veth-read"`) || !strings.Contains(string(data), `"name":"tap-created"`) {
		t.Errorf("recorded steps %s: want veth-read and tap-created", data)
	}
	if !slices.Equal(seen, []string{"veth-read", "tap-created"}) {
		t.Errorf("hook saw %v", seen)
	}
	if err := New(Config{}).step("tap-created"); err != nil {
		t.Errorf("step without hooks: %v", err)
	}
}
