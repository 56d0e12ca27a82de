package stats

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		name        string
		in          []time.Duration
		med, p90    time.Duration
		min, max, n int
	}{
		{"empty", nil, 0, 0, 0, 0, 0},
		{"one", ms(7), 7 * time.Millisecond, 7 * time.Millisecond, 7, 7, 1},
		{"odd unsorted", ms(5, 1, 3), 3 * time.Millisecond, 4600 * time.Microsecond, 1, 5, 3},
		{"ten", ms(10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 5500 * time.Microsecond, 9100 * time.Microsecond, 1, 10, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := Summarize(tc.in)
			if s.N != tc.n || s.Median != tc.med || s.P90 != tc.p90 {
				t.Fatalf("got n=%d median=%v p90=%v, want n=%d median=%v p90=%v", s.N, s.Median, s.P90, tc.n, tc.med, tc.p90)
			}
			if tc.n > 0 && (s.Min != time.Duration(tc.min)*time.Millisecond || s.Max != time.Duration(tc.max)*time.Millisecond) {
				t.Fatalf("min/max = %v/%v", s.Min, s.Max)
			}
		})
	}
}

func TestMedianFloat(t *testing.T) {
	if got := MedianFloat([]float64{3, 1, 2, 10}); got != 2.5 {
		t.Fatalf("median = %v, want 2.5", got)
	}
	if got := MedianFloat(nil); got != 0 {
		t.Fatalf("median of nothing = %v", got)
	}
}
