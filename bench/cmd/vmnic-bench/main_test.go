package main

import "testing"

func TestDeclaresMainModule(t *testing.T) {
	tests := []struct {
		gomod string
		want  bool
	}{
		{"module github.com/vmnic/vmnic\n\ngo 1.26.8\n", true},
		{"// the bench\nmodule github.com/vmnic/vmnic/bench\n", false},
		{"module github.com/vmnic/vmnic/e2e\n", false},
		{"go 1.26.8\n", false},
	}
	for _, tt := range tests {
		if got := declaresMainModule([]byte(tt.gomod)); got != tt.want {
			t.Errorf("declaresMainModule(%q) = %v, want %v", tt.gomod, got, tt.want)
		}
	}
}
