package connect

import (
	"slices"
	"testing"

	"github.com/vmnic/vmnic/vmmadapter"
)

// TestVMMsMatchKinds: the table has exactly one complete entry per
// vmmadapter.Kinds element.
func TestVMMsMatchKinds(t *testing.T) {
	if len(vmms) != len(vmmadapter.Kinds) {
		t.Errorf("vmms has %d entries, vmmadapter.Kinds %d", len(vmms), len(vmmadapter.Kinds))
	}
	for k, v := range vmms {
		if !slices.Contains(vmmadapter.Kinds, k) {
			t.Errorf("vmms[%q] is not in vmmadapter.Kinds %v", k, vmmadapter.Kinds)
		}
		if v.open == nil || v.deviceID == nil || v.launch == nil {
			t.Errorf("vmms[%q] is incomplete: %+v", k, v)
		}
	}
}
