package failpoint

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestPointsUsed checks the registry against the code: every point in
// Points is reached by exactly one place in vmnic's source (an engine step
// or a failpoint.Inject call), and no code injects a name the registry does
// not list. The crash tests enumerate Points, so a point missing here would
// be a crash no test tries.
func TestPointsUsed(t *testing.T) {
	root := filepath.Join("..", "..")
	// o.Step: the engine's step hook passed down to hostnet.Join
	// (JoinOptions.Step), which marks the point between the two redirects.
	calls := regexp.MustCompile(`(?:\bm\.step|\bo\.Step|failpoint\.Inject)\("([^"]+)"\)`)
	found := map[string][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", ".tools", "testdata", "failpoint", "e2e", "bin":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range calls.FindAllStringSubmatch(string(data), -1) {
			found[m[1]] = append(found[m[1]], p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range Points {
		switch len(found[p.Name]) {
		case 0:
			t.Errorf("failpoint %q is registered but no code reaches it", p.Name)
		case 1:
		default:
			t.Errorf("failpoint %q is reached from %d places %v: a name must say where the crash is", p.Name, len(found[p.Name]), found[p.Name])
		}
	}
	var unknown []string
	for name := range found {
		if _, ok := Lookup(name); !ok {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	if len(unknown) > 0 {
		t.Errorf("code injects failpoints that Points does not list: %v", unknown)
	}
	t.Logf("%d failpoints, all reached from the code", len(Points))
}
