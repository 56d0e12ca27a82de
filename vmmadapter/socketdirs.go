package vmmadapter

import (
	"path/filepath"
	"strings"
)

// WithinSocketDirs reports that dir (a resolved path) is one of dirs,
// resolved, or below one: the check of Options.SocketDirs. Relative and
// unresolvable entries of dirs confine nothing.
func WithinSocketDirs(dir string, dirs []string) bool {
	for _, d := range dirs {
		if !filepath.IsAbs(d) {
			continue
		}
		rd, err := filepath.EvalSymlinks(filepath.Clean(d))
		if err != nil {
			continue
		}
		if dir == rd || rd == "/" || strings.HasPrefix(dir, rd+string(filepath.Separator)) {
			return true
		}
	}
	return false
}
