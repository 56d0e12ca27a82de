package sandbox

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/netsetup"
)

// FuzzNames checks the names vmnic derives from its inputs: a sandbox id
// that validates is one path element in the state directory; an interface
// name that validates gives a TAP name the kernel and every VMM's option
// syntax accept (1–15 bytes of [A-Za-z0-9_.-]) and a VMM device id of
// [A-Za-z0-9_]; nothing else gets through.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"eth0", "net1", "a,b=c", "../x", "..", ".", "", "a/b", "a\nb", "ünïcödé", "abcdefghijklmnop",
		"x-y.z_1", "-rf", "\x00", "a:b", strings.Repeat("a", 201), "%2e%2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if netsetup.ValidateSandboxID(s) == nil {
			file := s + ".json"
			if filepath.Base(file) != file || strings.Contains(s, "..") || filepath.Clean("/state/sandboxes/"+file) != "/state/sandboxes/"+file {
				t.Fatalf("sandbox id %q escapes the state directory", s)
			}
		}
		if ValidateIfName(s) != nil {
			return
		}
		tap := hostnet.TapNameInNetns(s)
		if len(tap) == 0 || len(tap) > hostnet.MaxIfNameLen {
			t.Fatalf("TAP name %q for %q: bad length", tap, s)
		}
		for i := 0; i < len(tap); i++ {
			c := tap[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
				t.Fatalf("TAP name %q for ifname %q has byte %q", tap, s, c)
			}
		}
		host := hostnet.TapNameOnHost("sb", s)
		if len(host) != hostnet.MaxIfNameLen || !strings.HasPrefix(host, "vmt") {
			t.Fatalf("host TAP name %q", host)
		}
		id := NICID(s)
		if id == "" {
			t.Fatalf("empty NIC id for %q", s)
		}
		for i := 0; i < len(id); i++ {
			c := id[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
				t.Fatalf("NIC id %q for ifname %q has byte %q", id, s, c)
			}
		}
	})
}
