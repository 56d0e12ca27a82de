//go:build nri080

package compat

import "github.com/containerd/nri/pkg/api"

// networkNamespace: NRI v0.8.0 has no namespace adjustment, so there is
// never one to report.
func networkNamespace(*api.ContainerAdjustment) string { return "" }
