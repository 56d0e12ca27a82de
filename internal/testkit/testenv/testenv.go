// Package testenv finds the tools and binaries tests need and decides whether
// a root-only test runs, skips, or fails.
//
// Root-only tests skip (with a message) when not root. When
// VMNIC_REQUIRE_ROOT_TESTS=1 (set by `make test` as root, and so in CI), a
// missing tool or binary fails the test instead of skipping it, so CI can
// never pass by skipping the integration tests.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// Required reports whether root tests must run (VMNIC_REQUIRE_ROOT_TESTS=1).
func Required() bool { return os.Getenv("VMNIC_REQUIRE_ROOT_TESTS") == "1" }

// Unavailable skips the test, or fails it when root tests are required.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if Required() {
		t.Fatalf("required for this test (VMNIC_REQUIRE_ROOT_TESTS=1): "+format, args...)
	}
	t.Skipf("skipped: "+format, args...)
}

// RequireRoot skips (or fails) a test that needs root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		if Required() {
			t.Fatalf("VMNIC_REQUIRE_ROOT_TESTS=1 but not running as root")
		}
		t.Skip("skipped: needs root (network namespaces, links, tc); run `make test` as root")
	}
}

// RepoRoot is the directory holding go.mod of the vmnic module.
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the repository root")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

func envOr(t testing.TB, key, rel string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return filepath.Join(RepoRoot(t), rel)
}

// ToolsDir is .tools (VMNIC_TOOLS).
func ToolsDir(t testing.TB) string { t.Helper(); return envOr(t, "VMNIC_TOOLS", ".tools") }

// CNIBinDir is the directory with the reference CNI plugins and our built
// vmnic plugin (VMNIC_CNI_BIN); it checks that the plugins are there.
func CNIBinDir(t testing.TB, plugins ...string) string {
	t.Helper()
	dir := envOr(t, "VMNIC_CNI_BIN", ".tools/cni")
	if len(plugins) == 0 {
		plugins = []string{"bridge", "host-local"}
	}
	for _, p := range plugins {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			Unavailable(t, "CNI plugin %s not in %s (run `make tools build`)", p, dir)
		}
	}
	return dir
}

// Tool returns the path of a Go tool installed under .tools/bin (cnitool),
// falling back to PATH.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(ToolsDir(t), "bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	Unavailable(t, "tool %s not found in %s/bin or PATH (run `make tools`)", name, ToolsDir(t))
	return ""
}

// Binary returns the path of one of our binaries in bin/ (VMNIC_BIN).
func Binary(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(envOr(t, "VMNIC_BIN", "bin"), name)
	if _, err := os.Stat(p); err != nil {
		Unavailable(t, "binary %s not built at %s (run `make build`)", name, p)
	}
	return p
}

// Command returns the path of a system command (ip, qemu-system-x86_64...).
func Command(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "command %s not installed (make test installs it with apt-get)", name)
	}
	return p
}
