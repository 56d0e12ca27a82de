package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/vmmadapter"
)

func TestCheckVMMSocket(t *testing.T) {
	root := t.TempDir()
	allowed := filepath.Join(root, "allowed")
	outside := filepath.Join(root, "outside")
	for _, d := range []string{allowed + "/sb", outside} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{allowed + "/sb/api.sock", outside + "/api.sock"} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Symlink(outside, allowed+"/escape"))
	must(os.Symlink(outside+"/api.sock", allowed+"/sb/link.sock"))
	linkedAllowed := filepath.Join(root, "via-link")
	must(os.Symlink(allowed, linkedAllowed))
	dirs := []string{allowed, "relative/dir", filepath.Join(root, "missing")}

	for _, tc := range []struct {
		path string
		ok   bool
		want string
	}{
		{allowed + "/sb/api.sock", true, ""},
		{allowed + "/sb/not-yet.sock", true, ""}, // missing: the dial says so
		{allowed + "/api.sock", true, ""},
		{linkedAllowed + "/sb/api.sock", true, ""}, // resolves into allowed
		{outside + "/api.sock", false, "not within an allowed one"},
		{allowed + "/../outside/api.sock", false, "not a clean path"},
		{allowed + "//sb/api.sock", false, "not a clean path"},
		{allowed + "/sb/", false, "not a clean path"},
		{allowed + "/escape/api.sock", false, "not within an allowed one"},
		{allowed + "/sb/link.sock", false, "a symlink"},
		{"sb/api.sock", false, "not an absolute path"},
		{"", false, "empty"},
		{allowed + "/sb/a\nb.sock", false, "control character"},
		{allowed + "/" + strings.Repeat("x", 120), false, "longer than"},
		{"/run/docker.sock", false, ""},
	} {
		err := CheckVMMSocket(tc.path, dirs)
		if tc.ok {
			if err != nil {
				t.Errorf("%q: %v", tc.path, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%q accepted", tc.path)
			continue
		}
		if !errors.Is(err, ErrSocketNotAllowed) && !errors.Is(err, vmmadapter.ErrUnavailable) {
			t.Errorf("%q: error %v wraps neither ErrSocketNotAllowed nor ErrUnavailable", tc.path, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %q does not say %q", tc.path, err, tc.want)
		}
	}
	// A missing directory: unreachable, not refused.
	if err := CheckVMMSocket(allowed+"/gone/api.sock", dirs); !errors.Is(err, vmmadapter.ErrUnavailable) {
		t.Errorf("socket in a missing dir: %v", err)
	}
	t.Setenv(VMMSocketDirsEnv, "/a:/b")
	if got := SocketDirs("/c"); strings.Join(got, ",") != strings.Join(append(append([]string{}, DefaultVMMSocketDirs...), "/c", "/a", "/b"), ",") {
		t.Errorf("SocketDirs = %v", got)
	}
}
