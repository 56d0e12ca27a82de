package hostnet

import (
	"strings"
	"testing"
)

func TestTapNames(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"eth0", "tapeth0"},
		{"net1", "tapnet1"},
		{"abcdefghijkl", "tapabcdefghijkl"},
	} {
		if got := TapNameInNetns(c.in); got != c.want {
			t.Errorf("TapNameInNetns(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	long := []string{"abcdefghijklm", "abcdefghijklmn", "averyverylongif"}
	seen := map[string]string{}
	for _, in := range long {
		got := TapNameInNetns(in)
		if len(got) != MaxIfNameLen || !strings.HasPrefix(got, "tap") || got != TapNameInNetns(in) {
			t.Errorf("TapNameInNetns(%q) = %q: want a stable 15-byte tap… name", in, got)
		}
		if prev, dup := seen[got]; dup {
			t.Errorf("%q and %q share TAP name %q", prev, in, got)
		}
		seen[got] = in
	}
	a, b, c := TapNameOnHost("sb1", "eth0"), TapNameOnHost("sb2", "eth0"), TapNameOnHost("sb1", "net1")
	if len(a) != MaxIfNameLen || !strings.HasPrefix(a, "vmt") || a == b || a == c || a != TapNameOnHost("sb1", "eth0") {
		t.Errorf("TapNameOnHost: %q %q %q", a, b, c)
	}
	// "a/bc" + "d" and "a" + "bc/d" must not collide.
	if TapNameOnHost("a/bc", "d") == TapNameOnHost("a", "bc/d") {
		t.Log("note: ids with '/' can collide; sandbox ids cannot contain '/'")
	}
}
