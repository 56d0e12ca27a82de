package netsetup

import (
	"strings"
	"testing"
)

// TestValidateQuiesced: a quiesced NIC must say what it resumes to.
func TestValidateQuiesced(t *testing.T) {
	for _, tc := range []struct {
		resume NICState
		err    string
	}{
		{NICPending, ""},
		{NICAttached, ""},
		{"", "resume state"},
		{NICDetaching, "resume state"},
		{NICQuiesced, "resume state"},
	} {
		s := New("sb-q")
		s.PutNIC(NIC{IfName: "eth0", Tap: "tapeth0", State: NICQuiesced, ResumeState: tc.resume})
		err := s.Validate()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("quiesced, resume %q: Validate = %v, want %q", tc.resume, err, tc.err)
		}
	}
}
