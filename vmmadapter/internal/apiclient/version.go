package apiclient

import (
	"strconv"
	"strings"
)

// Version is a parsed "vMAJOR.MINOR.PATCH[-suffix]" string.
type Version struct {
	Major, Minor, Patch int
	// Pre is a pre-release suffix ("dev" of "1.16.0-dev"): a build on the
	// way to Major.Minor.Patch, which it may not have all of yet. A git
	// describe suffix after "+" or " " is not one.
	Pre string
}

// ParseVersion reads "53.0.0", "v53.0", "1.16.1", "1.17.0-dev",
// "v40.0-12-gdeadbeef". ok is false when no major number is found.
func ParseVersion(s string) (v Version, ok bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(strings.TrimPrefix(s, "v"), "V")
	pre := ""
	if i := strings.IndexAny(s, "-+ "); i >= 0 {
		if s[i] == '-' {
			pre = s[i+1:]
			if j := strings.IndexAny(pre, "+ "); j >= 0 {
				pre = pre[:j]
			}
			if gitDescribe(pre) {
				pre = "" // "v40.0-12-gdeadbeef": 12 commits after v40.0
			}
		}
		s = s[:i]
	}
	parts := strings.Split(s, ".")
	nums := make([]int, 3)
	for i := 0; i < len(parts) && i < 3; i++ {
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			if i == 0 {
				return Version{}, false
			}
			break
		}
		nums[i] = n
	}
	return Version{nums[0], nums[1], nums[2], pre}, true
}

// AtLeast reports v ≥ major.minor.
func (v Version) AtLeast(major, minor int) bool {
	if v.Major != major {
		return v.Major > major
	}
	return v.Minor >= minor
}

// ReleasedAtLeast reports whether v contains everything of release
// major.minor.patch: v ≥ it, where a pre-release of exactly that version
// ("1.16.0-dev") counts as before it.
func (v Version) ReleasedAtLeast(major, minor, patch int) bool {
	a := [3]int{v.Major, v.Minor, v.Patch}
	b := [3]int{major, minor, patch}
	for i := range a {
		if a[i] != b[i] {
			return a[i] > b[i]
		}
	}
	return v.Pre == ""
}

// gitDescribe reports whether s is git describe's "N-gHASH" tail.
func gitDescribe(s string) bool {
	n, hash, ok := strings.Cut(s, "-g")
	if !ok || n == "" || hash == "" {
		return false
	}
	if _, err := strconv.Atoi(n); err != nil {
		return false
	}
	for _, c := range hash {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
