package netsetup

import (
	"strings"
	"testing"
)

// TestValidateKeepsNewerValuesWhileTearingDown (issue 16 item 2): a NIC
// state or a backend a newer vmnic wrote validates only while the sandbox
// is torn down, so that a teardown can always save its progress.
func TestValidateKeepsNewerValuesWhileTearingDown(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*NetSetup)
		want string
	}{
		{"nic state", func(s *NetSetup) { s.NetworkConfigs = []NIC{{IfName: "eth0", State: "quiesced-by-v9"}} }, `unknown state "quiesced-by-v9"`},
		{"backend", func(s *NetSetup) { s.NetBackend = "macvtap-by-v9" }, `unknown net_backend "macvtap-by-v9"`},
	} {
		for _, phase := range []Phase{PhasePrepared, PhaseConfigured, PhaseTearingDown, PhaseInvalid} {
			s := New("newer")
			tc.mod(s)
			s.Phase = phase
			err := s.Validate()
			switch phase {
			case PhaseTearingDown, PhaseInvalid:
				if err != nil {
					t.Errorf("%s, %s: %v", tc.name, phase, err)
				}
			default:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s, %s: %v, want %q", tc.name, phase, err, tc.want)
				}
			}
		}
	}
}
