package connect_test

import (
	"bufio"
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestOnlyConnectImportsPerVMMPackages keeps connect the one seam to the
// VMMs: no Go file of the repository (product code, tests, tools, nested
// modules) imports a per-VMM package, except connect itself and the
// per-VMM package's own tests.
func TestOnlyConnectImportsPerVMMPackages(t *testing.T) {
	root := filepath.Join("..", "..")
	module, err := modulePath(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	vmms, err := perVMMPackages(root)
	if err != nil {
		t.Fatal(err)
	}
	// The scan must see the packages it guards, or it checks nothing.
	for _, want := range []string{"cloudhypervisor", "firecracker", "qemu"} {
		if !slices.Contains(vmms, want) {
			t.Fatalf("per-VMM packages found under vmmadapter/: %v, want %s among them", vmms, want)
		}
	}
	bad, scanned, err := seamViolations(root, module, vmms)
	if err != nil {
		t.Fatal(err)
	}
	if scanned < 100 {
		t.Fatalf("scanned only %d Go files under %s", scanned, root)
	}
	for _, b := range bad {
		t.Errorf("%s (reach the VMM through vmmadapter/connect instead)", b)
	}
}

// TestSeamViolationsFindsAStrayImport proves the check above can fail: a
// synthetic tree with an engine file importing a per-VMM package.
func TestSeamViolationsFindsAStrayImport(t *testing.T) {
	const module = "example.com/m"
	tests := []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{
			name: "engine imports qemu",
			files: map[string]string{
				"internal/engine/e.go": `package engine; import "example.com/m/vmmadapter/qemu"; var _ = qemu.X`,
			},
			want: []string{"internal/engine/e.go imports example.com/m/vmmadapter/qemu"},
		},
		{
			name: "test of another package imports a subpackage",
			files: map[string]string{
				"cmd/ctl/ctl_test.go": `package main; import ch "example.com/m/vmmadapter/cloudhypervisor/sub"`,
			},
			want: []string{"cmd/ctl/ctl_test.go imports example.com/m/vmmadapter/cloudhypervisor/sub"},
		},
		{
			name: "one VMM package imports another",
			files: map[string]string{
				"vmmadapter/qemu/q.go": `package qemu; import "example.com/m/vmmadapter/cloudhypervisor"`,
			},
			want: []string{"vmmadapter/qemu/q.go imports example.com/m/vmmadapter/cloudhypervisor"},
		},
		{
			name: "connect and a package's own tests are allowed",
			files: map[string]string{
				"vmmadapter/connect/c.go":       `package connect; import "example.com/m/vmmadapter/qemu"`,
				"vmmadapter/qemu/q_test.go":     `package qemu_test; import "example.com/m/vmmadapter/qemu"`,
				"internal/engine/e.go":          `package engine; import "example.com/m/vmmadapter"`,
				"internal/engine/testdata/x.go": `package x; import "example.com/m/vmmadapter/qemu"`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for _, d := range []string{"vmmadapter/cloudhypervisor", "vmmadapter/qemu", "vmmadapter/connect", "vmmadapter/internal/apiclient"} {
				if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for name, src := range tt.files {
				p := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(src+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			vmms, err := perVMMPackages(root)
			if err != nil {
				t.Fatal(err)
			}
			if want := []string{"cloudhypervisor", "qemu"}; !slices.Equal(vmms, want) {
				t.Fatalf("perVMMPackages = %v, want %v", vmms, want)
			}
			bad, _, err := seamViolations(root, module, vmms)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(bad, tt.want) {
				t.Fatalf("violations = %q, want %q", bad, tt.want)
			}
		})
	}
}

// modulePath reads the module line of a go.mod file.
func modulePath(gomod string) (string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("%s: no module line", gomod)
}

// perVMMPackages lists the per-VMM packages: the directories right under
// vmmadapter/ except connect and internal.
func perVMMPackages(root string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(root, "vmmadapter"))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && e.Name() != "connect" && e.Name() != "internal" && e.Name() != "testdata" {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// seamViolations parses the imports of every Go file under root (build
// tags ignored; hidden, testdata and vendor directories skipped) and
// returns "file imports path" for each import of a per-VMM package (or a
// package below it) from outside vmmadapter/connect and that package's own
// directory tree. It also returns how many files it parsed.
func seamViolations(root, module string, vmms []string) (bad []string, scanned int, err error) {
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
		if err != nil {
			return fmt.Errorf("parse imports of %s: %w", rel, err)
		}
		scanned++
		dir := path.Dir(rel)
		for _, imp := range f.Imports {
			ip, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				return fmt.Errorf("%s: import %s: %w", rel, imp.Path.Value, err)
			}
			for _, v := range vmms {
				pkg := module + "/vmmadapter/" + v
				if ip != pkg && !strings.HasPrefix(ip, pkg+"/") {
					continue
				}
				own := "vmmadapter/" + v
				if dir == "vmmadapter/connect" || dir == own || strings.HasPrefix(dir, own+"/") {
					continue
				}
				bad = append(bad, rel+" imports "+ip)
			}
		}
		return nil
	})
	slices.Sort(bad)
	return bad, scanned, err
}
