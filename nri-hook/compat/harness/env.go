package harness

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// required mirrors the main module's internal/testkit/testenv: with
// VMNIC_REQUIRE_ROOT_TESTS=1 (make test as root) a missing prerequisite
// fails the test instead of skipping it.
func required() bool { return os.Getenv("VMNIC_REQUIRE_ROOT_TESTS") == "1" }

func unavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	if required() {
		t.Fatalf("required for this test (VMNIC_REQUIRE_ROOT_TESTS=1): "+format, args...)
	}
	t.Skipf("skipped: "+format, args...)
}

// RequireRoot skips (or fails) a test that needs root (network namespaces).
func RequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, "needs root (network namespaces); run `make nri-compat-test` as root")
	}
}

// pluginBinary is the vmnic-nri binary under test (VMNIC_NRI_BIN).
func pluginBinary(t *testing.T) string {
	t.Helper()
	p := os.Getenv("VMNIC_NRI_BIN")
	if p == "" {
		unavailable(t, "VMNIC_NRI_BIN is not set (run `make nri-compat-test`)")
	}
	if _, err := os.Stat(p); err != nil {
		unavailable(t, "vmnic-nri binary %s: %v (run `make build`)", p, err)
	}
	return p
}

// startPlugin runs vmnic-nri as an external plugin until the test ends.
func startPlugin(t *testing.T, bin string, args ...string) {
	t.Helper()
	var stderr lockedBuilder
	cmd := exec.Command(bin, args...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("plugin stderr:\n%s", stderr.String())
		}
	})
}

type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
