//go:build nri080

package compat

import "github.com/vmnic/vmnic/nri-hook/compat/harness"

// NRI v0.8.0 (go.v080.mod): containerd 2.0.x and 2.1.x (and 1.7.26+). They
// know no namespace adjustment, so a host-network VM pod's VMM container
// must be refused.
var version = harness.Version{
	NRI: "v0.8.0", RuntimeName: "containerd", RuntimeVersion: "v2.1.5",
	NamespaceAdjustment: false,
}
