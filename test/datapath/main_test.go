// Package datapath holds the data-path integration tests (root): the real
// vmnic plugin, chained after the reference bridge and ptp plugins and driven
// through cnitool, must give a TAP that a guest stand-in (or a real QEMU
// guest) can use to reach the gateway and be reached from the host.
//
// Names: netns vmnd-*, bridges vmnbrd*, subnets in 10.206.0.0/16.
package datapath

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

var (
	buildOnce sync.Once
	buildDir  string // temp dir holding the freshly built vmnic and vmnicctl
	buildErr  error
)

func TestMain(m *testing.M) {
	// The QEMU guest's QMP socket lives in a temp dir.
	os.Setenv("VMNIC_VMM_SOCKET_DIRS", os.TempDir())
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// built builds the vmnic plugin (./plugin), vmnicctl (./cmd/vmnicctl) and the
// QEMU guest's agent (static) from
// this checkout once per test binary, into a temp dir, so the tests run the
// code under test rather than whatever bin/ holds.
func built(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		root := repoRoot()
		for _, pkg := range []string{"plugin", "cmd/vmnicctl"} {
			if _, err := os.Stat(filepath.Join(root, pkg)); err != nil {
				buildErr = fmt.Errorf("./%s is not in this checkout", pkg)
				return
			}
		}
		dir, err := os.MkdirTemp("", "vmnd-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		for name, pkg := range map[string]string{"vmnic": "./plugin", "vmnicctl": "./cmd/vmnicctl",
			"vmnic-guest-agent": "./internal/testkit/guestagent/cmd/vmnic-guest-agent"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // the guest agent runs in the QEMU guest's initramfs
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		testenv.Unavailable(t, "build vmnic: %v", buildErr)
	}
	return buildDir
}

// pluginPath is CNI_PATH: the freshly built vmnic first, then the reference
// plugins.
func pluginPath(t *testing.T) string {
	t.Helper()
	return built(t) + string(os.PathListSeparator) + testenv.CNIBinDir(t, "bridge", "ptp", "host-local")
}

// vmnicctl is the freshly built CLI.
func vmnicctl(t *testing.T) string {
	t.Helper()
	return filepath.Join(built(t), "vmnicctl")
}
