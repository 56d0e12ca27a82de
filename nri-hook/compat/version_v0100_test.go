//go:build nri0100

package compat

import "github.com/vmnic/vmnic/nri-hook/compat/harness"

// NRI v0.10.0 (go.v0100.mod): containerd 2.2.0 and CRI-O 1.34. They apply
// namespace adjustments.
var version = harness.Version{
	NRI: "v0.10.0", RuntimeName: "containerd", RuntimeVersion: "v2.2.0",
	NamespaceAdjustment: true,
}
