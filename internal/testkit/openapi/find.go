package openapi

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Spec file names under the specs directory.
const (
	CloudHypervisorSpec = "cloud-hypervisor.yaml"
	FirecrackerSpec     = "firecracker.yaml"
)

// ErrNoSpec: the spec files are not where the project keeps them.
var ErrNoSpec = errors.New("API spec files not found")

const modulePath = "github.com/vmnic/vmnic"

// RepoRoot finds the repository root: the nearest directory at or above the
// working directory whose go.mod declares the vmnic module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				f := strings.Fields(line)
				if len(f) == 2 && f[0] == "module" && f[1] == modulePath {
					return dir, nil
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s at or above the working directory", modulePath)
		}
		dir = parent
	}
}

// SpecPath returns the path of a spec file, which the project keeps in
// ../shared/specs relative to the repository root. The error wraps ErrNoSpec
// when the file is absent.
func SpecPath(name string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoSpec, err)
	}
	p := filepath.Join(root, "..", "shared", "specs", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%w: %s (expected at ../shared/specs/%s relative to the repository root)", ErrNoSpec, p, name)
	}
	return p, nil
}

// LoadNamed loads a spec by file name from the project's specs directory.
func LoadNamed(name string) (*Spec, error) {
	p, err := SpecPath(name)
	if err != nil {
		return nil, err
	}
	return Load(p)
}
