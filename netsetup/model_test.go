package netsetup

import (
	"strings"
	"testing"
)

func TestSortNICsEth0FirstThenIndex(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{"eth0 first", []string{"net1", "eth0"}, []string{"eth0", "net1"}},
		{"numeric index", []string{"net10", "net2", "eth0", "net1"}, []string{"eth0", "net1", "net2", "net10"}},
		{"eth1 by index", []string{"eth2", "eth1", "eth0"}, []string{"eth0", "eth1", "eth2"}},
		{"names without index last, by name", []string{"wlan", "net3", "abc"}, []string{"net3", "abc", "wlan"}},
		{"same index by name", []string{"net1", "eth1"}, []string{"eth1", "net1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nics := make([]NIC, len(tc.in))
			for i, n := range tc.in {
				nics[i] = NIC{IfName: n}
			}
			SortNICs(nics)
			var got []string
			for _, n := range nics {
				got = append(got, n.IfName)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Fatalf("order = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPutRemoveNICDrivesPhase(t *testing.T) {
	s := New("sb1")
	if s.Phase != PhasePrepared {
		t.Fatalf("new record phase = %s, want prepared", s.Phase)
	}
	s.PutNIC(NIC{IfName: "net1", State: NICPending})
	s.PutNIC(NIC{IfName: "eth0", State: NICPending})
	if s.Phase != PhaseConfigured {
		t.Fatalf("phase with NICs = %s, want configured", s.Phase)
	}
	if s.NetworkConfigs[0].IfName != "eth0" {
		t.Fatalf("eth0 not first: %+v", s.NetworkConfigs)
	}
	s.PutNIC(NIC{IfName: "eth0", State: NICAttached, Tap: "tapeth0"})
	if len(s.NetworkConfigs) != 2 {
		t.Fatalf("PutNIC of an existing ifname added a NIC: %+v", s.NetworkConfigs)
	}
	if n, _ := s.NIC("eth0"); n.State != NICAttached || n.Tap != "tapeth0" {
		t.Fatalf("eth0 not replaced: %+v", n)
	}
	if !s.RemoveNIC("eth0") || s.RemoveNIC("eth0") {
		t.Fatal("RemoveNIC must report true once, then false")
	}
	s.RemoveNIC("net1")
	if s.Phase != PhasePrepared || len(s.NetworkConfigs) != 0 {
		t.Fatalf("after removing all NICs: phase %s, %d NICs", s.Phase, len(s.NetworkConfigs))
	}
	s.Phase = PhaseInvalid
	s.PutNIC(NIC{IfName: "eth0", State: NICPending})
	if s.Phase != PhaseInvalid {
		t.Fatalf("an invalid record must stay invalid, got %s", s.Phase)
	}
}

func TestValidateSandboxID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"abc", true},
		{"cnitool-0123456789abcdef0123", true},
		{"a.b_c-d", true},
		{"", false},
		{"../etc/passwd", false},
		{"a/b", false},
		{"a..b", false},
		{".hidden", false},
		{"-flag", false},
		{"a b", false},
		{"a\nb", false},
		{strings.Repeat("a", MaxSandboxIDLen), true},
		{strings.Repeat("a", MaxSandboxIDLen+1), false},
	}
	for _, tc := range tests {
		err := ValidateSandboxID(tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateSandboxID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
		}
	}
}

func TestValidateRecord(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*NetSetup)
		wantErr string
	}{
		{"ok", func(*NetSetup) {}, ""},
		{"bad phase", func(s *NetSetup) { s.Phase = "running" }, `unknown phase "running"`},
		{"bad backend", func(s *NetSetup) { s.NetBackend = "macvtap" }, `unknown net_backend "macvtap"`},
		{"dup nic", func(s *NetSetup) {
			s.NetworkConfigs = []NIC{{IfName: "eth0", State: NICPending}, {IfName: "eth0", State: NICPending}}
		}, "NIC eth0 recorded twice"},
		{"nic state", func(s *NetSetup) { s.NetworkConfigs = []NIC{{IfName: "eth0", State: "up"}} }, `unknown state "up"`},
		{"nic without ifname", func(s *NetSetup) { s.NetworkConfigs = []NIC{{State: NICPending}} }, "no ifname"},
		{"handoffs", func(s *NetSetup) {
			s.NetworkConfigs = []NIC{{IfName: "eth0", State: NICAttached, Handoff: HandoffFd}, {IfName: "eth1", State: NICPending, TapHandoff: HandoffName}}
		}, ""},
		{"bad handoff", func(s *NetSetup) {
			s.NetworkConfigs = []NIC{{IfName: "eth0", State: NICAttached, Handoff: "smoke-signal"}}
		}, `unknown handoff "smoke-signal"`},
		{"bad tap_handoff", func(s *NetSetup) { s.NetworkConfigs = []NIC{{IfName: "eth0", State: NICPending, TapHandoff: "FD"}} }, `unknown tap_handoff "FD"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New("sb1")
			tc.mutate(s)
			err := s.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestQueuePairs(t *testing.T) {
	for _, tc := range []struct{ numQueues, pairs int }{{0, 1}, {1, 1}, {2, 1}, {4, 2}, {8, 4}} {
		if got := (NIC{NumQueues: tc.numQueues}).QueuePairs(); got != tc.pairs {
			t.Errorf("NumQueues %d: QueuePairs = %d, want %d", tc.numQueues, got, tc.pairs)
		}
	}
}
