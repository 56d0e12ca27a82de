package hook

import (
	"strconv"
	"strings"
)

// atLeast reports whether the NRI version v ("v0.10.0", "0.11.0",
// "v0.9.1-0.20250219030224-e597e7849f24") is at least major.minor. Unknown
// or unparsable versions ("unknown", "(devel)", "") are not.
func atLeast(v string, major, minor int) bool {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(leadingDigits(parts[1]))
	if err1 != nil || err2 != nil {
		return false
	}
	if ma != major {
		return ma > major
	}
	return mi >= minor
}

func leadingDigits(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}
