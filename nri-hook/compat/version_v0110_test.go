//go:build !nri080 && !nri0100

package compat

import "github.com/vmnic/vmnic/nri-hook/compat/harness"

// NRI v0.11.0 (go.mod): containerd 2.2.1+ and CRI-O 1.35/1.36. They apply
// namespace adjustments, so the VMM container of a host-network VM pod is
// moved into the netns vmnic owns.
var version = harness.Version{
	NRI: "v0.11.0", RuntimeName: "cri-o", RuntimeVersion: "v1.35.0",
	NamespaceAdjustment: true,
}
