// Package e2e runs vmnic end to end on a real containerd driven through the
// CRI API (k8s.io/cri-client): containerd, runc, the reference CNI plugins,
// the vmnic CNI plugin and the vmnic NRI plugin, all on this host, all under a
// private temporary directory.
//
// It is a separate Go module so that the Kubernetes CRI client and its
// dependencies stay out of the main module. Run it with `make e2e` (root); the
// Makefile builds the pinned containerd and runc and the local images first.
// See e2e/README.md.
package e2e
