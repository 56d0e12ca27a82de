package faultenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/vmnic/vmnic/internal/failpoint"
)

// Binaries are vmnic's programs built with failpoints compiled in.
type Binaries struct {
	Dir      string // holds vmnic (a CNI plugin dir of its own), vmnicctl, vmnic-nri
	Plugin   string
	Vmnicctl string
	NRI      string
}

// RepoRoot is the directory with vmnic's go.mod (found from this file,
// internal/testkit/faultenv/build.go).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

// Build compiles the plugin, vmnicctl and the NRI hook with the
// vmnic_failpoints build tag into dir. Only the binaries built here honour
// VMNIC_FAILPOINTS: production builds (make build) never do.
func Build(ctx context.Context, dir string) (*Binaries, error) {
	root := RepoRoot()
	b := &Binaries{
		Dir:      dir,
		Plugin:   filepath.Join(dir, "vmnic"),
		Vmnicctl: filepath.Join(dir, "vmnicctl"),
		NRI:      filepath.Join(dir, "vmnic-nri"),
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	goBin := "go"
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		goBin = p
	}
	for out, pkg := range map[string]string{b.Plugin: "./plugin", b.Vmnicctl: "./cmd/vmnicctl", b.NRI: "./nri-hook"} {
		cmd := exec.CommandContext(ctx, goBin, "build", "-tags", failpoint.BuildTag, "-o", out, pkg)
		cmd.Dir = root
		if data, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build -tags %s %s: %v\n%s", failpoint.BuildTag, pkg, err, data)
		}
	}
	return b, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
