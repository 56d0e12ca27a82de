package hostaudit

import (
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestDiff(t *testing.T) {
	tests := []struct {
		before, after []string
		want          string
	}{
		{nil, nil, ""},
		{[]string{"a", "b"}, []string{"b", "a"}, ""},
		{[]string{"a"}, []string{"a", "b"}, "+ b\n"},
		{[]string{"a", "b"}, []string{"b"}, "- a\n"},
		{[]string{"a", "a"}, []string{"a"}, "- a\n"}, // a multiset: one a is gone
		{[]string{"x"}, []string{"y", "y"}, "- x\n+ y\n+ y\n"},
	}
	for _, tt := range tests {
		if got := Diff(tt.before, tt.after); got != tt.want {
			t.Errorf("Diff(%q, %q) = %q, want %q", tt.before, tt.after, got, tt.want)
		}
	}
}

func TestWalk(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "a"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "a", "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var got []string
	walk := func(p string, d fs.DirEntry) error {
		rel, _ := filepath.Rel(dir, p)
		got = append(got, rel)
		return nil
	}
	if err := Walk(dir, walk); err != nil {
		t.Fatal(err)
	}
	if want := []string{".", "a", "a/f"}; !reflect.DeepEqual(got, want) {
		t.Errorf("walked %q, want %q", got, want)
	}
	got = nil
	if err := Walk(filepath.Join(dir, "absent"), walk); err != nil || got != nil {
		t.Errorf("walking a missing dir: %v, visited %q; want nothing", err, got)
	}
}

func TestChainCounters(t *testing.T) {
	tests := []struct{ in, want string }{
		{":CNI-FORWARD - [0:0]", ":CNI-FORWARD -"},
		{":FORWARD ACCEPT [12:3456]", ":FORWARD ACCEPT"},
		{"-A FORWARD -i br0 -o br0 -m comment --comment vmnic -j ACCEPT", "-A FORWARD -i br0 -o br0 -m comment --comment vmnic -j ACCEPT"},
	}
	for _, tt := range tests {
		if got := chainCounters.ReplaceAllString(tt.in, ""); got != tt.want {
			t.Errorf("%q without counters = %q, want %q", tt.in, got, tt.want)
		}
	}
}
