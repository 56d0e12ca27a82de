package hook

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containerd/nri/pkg/api"

	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/nri-hook/internal/config"
)

// Environment variables the VMM container gets.
const (
	EnvSandboxID  = "VMNIC_SANDBOX_ID"
	EnvNetSetup   = "VMNIC_NETSETUP"
	EnvRuntimeDir = "VMNIC_RUNTIME_DIR"
)

// TUN device: /dev/net/tun, character device 10:200.
const (
	tunPath  = "/dev/net/tun"
	tunMajor = 10
	tunMinor = 200
)

// CreateContainer wires the VMM container of a VM pod: /dev/net/tun (device
// node and cgroup rule; only where its VMM may open TAPs by name, see
// config.InjectTunFor), the per-sandbox runtime directory (for the VMM's
// API socket, at the same path as on the host, read-write) with its
// netsetup/ subdirectory read-only on top (the live copy of the NetSetup
// record, netsetup.json, that every save of the record refreshes), the
// VMNIC_* environment and, when vmnic owns the sandbox netns
// (host-network VM pods), the move into that netns. A runtime whose NRI
// cannot move a container into a namespace fails the container rather than
// start the VMM in the host's network namespace.
func (p *Plugin) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	st, err := p.state()
	if err != nil {
		return nil, nil, err
	}
	if !st.cfg.IsVMPod(pod.GetRuntimeHandler(), pod.GetAnnotations()) ||
		!config.IsVMMContainer(ctr.GetName(), pod.GetAnnotations()) {
		return nil, nil, nil
	}
	// Decided before anything is made, so that a refusal leaves nothing.
	tun, err := st.cfg.InjectTunFor(pod.GetAnnotations())
	if err != nil {
		err = fmt.Errorf("vmnic: container %s of VM pod %s: %w", ctr.GetName(), podRef(pod), err)
		p.logger().Error("CreateContainer refused", "error", err)
		return nil, nil, err
	}
	id := pod.GetId()
	defer p.events.begin(id, eventLive)()
	ctx, cancel := p.handlerContext(ctx)
	defer cancel()
	rec, err := st.mgr.Store.Get(id)
	switch {
	case errors.Is(err, netsetup.ErrNotFound):
		// RunPodSandbox was missed (the plugin was not connected): do it now.
		p.logger().Warn("VM pod has no record at CreateContainer: preparing it now", "pod", podRef(pod))
		rec, err = p.prepare(ctx, st, pod)
	case err == nil && rec.Origin != OriginNRI:
		// RunPodSandbox was missed and the CNI ADD made the record: adopt
		// it, or the sweep would not watch it and a CNI DEL of its last NIC
		// would delete it while the VM runs.
		p.logger().Warn("VM pod's record is not the hook's at CreateContainer (its RunPodSandbox was missed): adopting it",
			"pod", podRef(pod), "createdBy", rec.CreatedBy)
		rec, err = p.prepare(ctx, st, pod)
	}
	if err != nil {
		err = fmt.Errorf("vmnic: container %s of VM pod %s: %w", ctr.GetName(), podRef(pod), err)
		p.logger().Error("CreateContainer failed", "error", err)
		return nil, nil, err
	}
	nriVersion := p.runtimeNRIVersion()
	if rec.NetnsOwned && !atLeast(nriVersion, 0, 10) {
		err := fmt.Errorf("vmnic: container %s of VM pod %s must join the network namespace %s that vmnic made for the host-network pod, "+
			"but this runtime (%s, NRI %s) cannot move a container into a namespace (that needs NRI v0.10 or later: containerd 2.2+, CRI-O 1.34+); "+
			"refusing to start the VMM in the host network namespace: upgrade the runtime or give the pod its own network (hostNetwork: false)",
			ctr.GetName(), podRef(pod), rec.NetnsPath, p.runtimeDesc(), nriVersion)
		p.logger().Error("CreateContainer refused", "error", err)
		return nil, nil, err
	}
	rtDir := rec.RuntimeDir
	if rtDir == "" {
		rtDir = st.cfg.SandboxRuntimeDir(id)
	}
	// Only the directories the hook makes under runtimeDir are its own
	// bounded mounts; a runtime dir vmnicctl recorded elsewhere is used as
	// it is.
	var size uint64
	if rtDir == st.cfg.SandboxRuntimeDir(id) {
		size = st.cfg.RuntimeDirBytes()
	}
	if err := ensureRuntimeDir(rtDir, size); err != nil {
		return nil, nil, fmt.Errorf("vmnic: container %s of VM pod %s: %w", ctr.GetName(), podRef(pod), err)
	}
	// The store keeps the record's copy in the runtime dir on every save,
	// but only when the dir exists: save once more if it was (re)made just
	// now, or the record did not name it.
	if _, err := os.Lstat(netsetup.MirrorPathIn(rtDir)); err != nil || rec.RuntimeDir != rtDir {
		rec, err = st.mgr.Store.Update(ctx, id, func(r *netsetup.NetSetup) error {
			if r.RuntimeDir == "" {
				r.RuntimeDir = rtDir
			}
			return nil
		})
		if err != nil {
			err = fmt.Errorf("vmnic: container %s of VM pod %s: write the record's copy into %s: %w", ctr.GetName(), podRef(pod), rtDir, timeoutHint(err))
			p.logger().Error("CreateContainer failed", "error", err)
			return nil, nil, err
		}
	}
	adj := AdjustmentFor(id, rtDir, rec, tun)
	p.logger().Info("VMM container wired", "pod", podRef(pod), "container", ctr.GetName(),
		"netns", rec.NetnsPath, "owned", rec.NetnsOwned, "runtimeDir", rtDir, "tun", tun)
	return adj, nil, nil
}

// Adjustment is the change made to a VMM container of sandbox id. The
// container reads its record from the copy in the runtime directory's
// netsetup/ subdirectory (VMNIC_NETSETUP), mounted read-only: a mount of the
// directory shows every update, where a mount of the record file itself
// would keep the file it found at CreateContainer (the store replaces the
// record by an atomic rename).
func Adjustment(id, runtimeDir string, rec *netsetup.NetSetup) *api.ContainerAdjustment {
	return AdjustmentFor(id, runtimeDir, rec, true)
}

// AdjustmentFor is Adjustment with /dev/net/tun (device node and cgroup
// rule) only when tun is true: a VMM that is handed its TAPs as fds
// (tapHandoff "fd") opens no TUN device, so its container gets none.
func AdjustmentFor(id, runtimeDir string, rec *netsetup.NetSetup, tun bool) *api.ContainerAdjustment {
	adj := &api.ContainerAdjustment{}
	if tun {
		adj.AddDevice(&api.LinuxDevice{
			Path:     tunPath,
			Type:     "c",
			Major:    tunMajor,
			Minor:    tunMinor,
			FileMode: api.FileMode(0o666),
		})
		if adj.Linux.Resources == nil {
			adj.Linux.Resources = &api.LinuxResources{}
		}
		adj.Linux.Resources.Devices = append(adj.Linux.Resources.Devices, &api.LinuxDeviceCgroup{
			Allow:  true,
			Type:   "c",
			Major:  api.Int64(int64(tunMajor)),
			Minor:  api.Int64(int64(tunMinor)),
			Access: "rwm",
		})
	}
	adj.AddMount(&api.Mount{
		Source:      runtimeDir,
		Destination: runtimeDir,
		Type:        "bind",
		Options:     []string{"bind", "rw", "nosuid", "nodev", "noexec"},
	})
	// Listed after its parent: runtimes mount in order (and containerd and
	// CRI-O sort by depth), so the read-only mount lands on top.
	adj.AddMount(&api.Mount{
		Source:      netsetup.MirrorDirIn(runtimeDir),
		Destination: netsetup.MirrorDirIn(runtimeDir),
		Type:        "bind",
		Options:     []string{"bind", "ro", "nosuid", "nodev", "noexec"},
	})
	adj.AddEnv(EnvSandboxID, id)
	adj.AddEnv(EnvNetSetup, netsetup.MirrorPathIn(runtimeDir))
	adj.AddEnv(EnvRuntimeDir, runtimeDir)
	if rec.NetnsOwned {
		adj.AddOrReplaceNamespace(&api.LinuxNamespace{Type: "network", Path: rec.NetnsPath})
	}
	return adj
}
