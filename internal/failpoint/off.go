//go:build !vmnic_failpoints

package failpoint

// Enabled reports whether failpoints are compiled in (false: this build
// ignores VMNIC_FAILPOINTS).
const Enabled = false

// Inject is a no-op in normal builds; the compiler inlines it away.
func Inject(string) error { return nil }
