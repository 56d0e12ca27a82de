package hook

import (
	"context"
	"errors"
	"fmt"

	"github.com/containerd/nri/pkg/api"

	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/nri-hook/internal/config"
)

// StopContainer quiesces the NICs of a VM pod when its VMM container stops
// (issue 12): the VMM process is gone, so traffic for the guest is dropped
// at the veth instead of being redirected into TAPs nobody reads, and the
// NICs come back pending for the next VMM (see sandbox.Quiesce). Other
// containers, and pods vmnic does not manage, are left alone. A failure is
// logged and returned; the runtime stops the container anyway.
func (p *Plugin) StopContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) ([]*api.ContainerUpdate, error) {
	return nil, p.vmmEvent(ctx, pod, ctr, "StopContainer", func(ctx context.Context, m *sandbox.Manager, id string) error {
		_, err := m.Quiesce(ctx, id, sandbox.QuiesceOptions{Reason: "NRI: VMM container " + ctr.GetName() + " stopped", VMMGone: true})
		return err
	})
}

// PostStartContainer puts the quiesced NICs of a VM pod back into the data
// path once its VMM container runs again.
func (p *Plugin) PostStartContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) error {
	return p.vmmEvent(ctx, pod, ctr, "PostStartContainer", func(ctx context.Context, m *sandbox.Manager, id string) error {
		_, err := m.Resume(ctx, id)
		return err
	})
}

// vmmEvent runs do for the record of pod when ctr is the VMM container of a
// VM pod that has a record with NICs.
func (p *Plugin) vmmEvent(ctx context.Context, pod *api.PodSandbox, ctr *api.Container, event string,
	do func(context.Context, *sandbox.Manager, string) error) error {
	st, err := p.state()
	if err != nil {
		return err
	}
	if !st.cfg.IsVMPod(pod.GetRuntimeHandler(), pod.GetAnnotations()) ||
		!config.IsVMMContainer(ctr.GetName(), pod.GetAnnotations()) ||
		netsetup.ValidateSandboxID(pod.GetId()) != nil {
		return nil
	}
	id := pod.GetId()
	defer p.events.begin(id, eventLive)()
	rec, err := st.mgr.Store.Get(id)
	if errors.Is(err, netsetup.ErrNotFound) || (err == nil && len(rec.NetworkConfigs) == 0) {
		return nil
	}
	if err != nil {
		p.logger().Warn(event+": the VM pod's record cannot be read", "pod", podRef(pod), "error", err)
		return nil
	}
	ctx, cancel := p.handlerContext(ctx)
	defer cancel()
	if err := do(ctx, st.mgr, id); err != nil {
		err = fmt.Errorf("vmnic: %s of VMM container %s of VM pod %s: %w", event, ctr.GetName(), podRef(pod), timeoutHint(err))
		p.logger().Error(event+" failed", "pod", podRef(pod), "error", err)
		return err
	}
	p.logger().Info("VMM container "+map[string]string{"StopContainer": "stopped: NICs quiesced", "PostStartContainer": "started: NICs resumed"}[event],
		"pod", podRef(pod), "container", ctr.GetName())
	return nil
}
