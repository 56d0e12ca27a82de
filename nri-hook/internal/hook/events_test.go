package hook

import "testing"

// TestEventLog: an event that ended before a plan was made does not make
// the plan stale; one running when it was made, or coming after, does, for
// its own kind and sandbox only.
func TestEventLog(t *testing.T) {
	var l eventLog
	l.begin("before", eventGone)()
	running := l.begin("running", eventGone)
	seq := l.startPlan()
	running()
	inflight := l.begin("inflight", eventLive)
	l.begin("after", eventGone)()
	for _, tc := range []struct {
		id   string
		kind eventKind
		want bool
	}{
		{"before", eventGone, false},
		{"running", eventGone, true},
		{"running", eventLive, false},
		{"inflight", eventLive, true},
		{"after", eventGone, true},
		{"after", eventLive, false},
		{"never", eventGone, false},
	} {
		if got := l.newer(tc.id, tc.kind, seq); got != tc.want {
			t.Errorf("newer(%s, %d) = %v, want %v", tc.id, tc.kind, got, tc.want)
		}
	}
	inflight()
	l.endPlan()
	if len(l.ids) != 0 {
		t.Errorf("the log keeps %d sandboxes after the last plan ended", len(l.ids))
	}
	// Without a plan under way nothing is kept.
	l.begin("x", eventLive)()
	if len(l.ids) != 0 {
		t.Errorf("an event without a plan under way is kept")
	}
}
