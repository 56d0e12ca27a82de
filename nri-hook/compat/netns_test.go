//go:build !nri080

package compat

import "github.com/containerd/nri/pkg/api"

// networkNamespace is the path of the plugin's network namespace
// adjustment ("" when there is none).
func networkNamespace(a *api.ContainerAdjustment) string {
	path := ""
	for _, n := range a.GetLinux().GetNamespaces() {
		if n.Type == "network" {
			path = n.Path
		}
	}
	return path
}
