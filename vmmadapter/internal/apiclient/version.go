package apiclient

import (
	"strconv"
	"strings"
)

// Version is a parsed "vMAJOR.MINOR.PATCH[-suffix]" string.
type Version struct {
	Major, Minor, Patch int
}

// ParseVersion reads "53.0.0", "v53.0", "1.16.1", "1.17.0-dev",
// "v40.0-12-gdeadbeef". ok is false when no major number is found.
func ParseVersion(s string) (v Version, ok bool) {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(strings.TrimPrefix(s, "v"), "V")
	if i := strings.IndexAny(s, "-+ "); i >= 0 {
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
	return Version{nums[0], nums[1], nums[2]}, true
}

// AtLeast reports v ≥ major.minor.
func (v Version) AtLeast(major, minor int) bool {
	if v.Major != major {
		return v.Major > major
	}
	return v.Minor >= minor
}
