// Package compat tests vmnic-nri against the NRI versions that runtimes
// vendor. One test, three module files, each pinning
// github.com/containerd/nri to one version and built with its tag
// (mk/nri.mk runs them all):
//
//	go.mod       NRI v0.11.0: containerd 2.2.1+, CRI-O 1.35/1.36 (no tag)
//	go.v0100.mod NRI v0.10.0: containerd 2.2.0, CRI-O 1.34 (-tags nri0100)
//	go.v080.mod  NRI v0.8.0: containerd 2.0.x and 2.1.x, 1.7.26+ (-tags nri080)
//
// The test starts that version's pkg/adaptation (the runtime side of NRI) as
// a fake runtime and runs harness.Suite against the real vmnic-nri binary
// (VMNIC_NRI_BIN, built from the main module on a newer NRI).
package compat

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"

	"github.com/vmnic/vmnic/nri-hook/compat/harness"
)

const nriModule = "github.com/containerd/nri"

func TestCompat(t *testing.T) {
	// The build tag names the version; the module file decides it. A
	// mismatch would label one version's results as another's. mk/nri.mk
	// passes the version the module file resolves (go list -m).
	if got := os.Getenv("VMNIC_NRI_MODULE_VERSION"); got != "" && got != version.NRI {
		t.Fatalf("built with %s %s, but the build tag is for %s: use that version's module file (mk/nri.mk)", nriModule, got, version.NRI)
	}
	nrilog.Set(quiet{})
	harness.Suite(t, version, start)
}

type runtime struct {
	r      *adaptation.Adaptation
	synced chan struct{}
}

func start(o harness.Options) (harness.Runtime, error) {
	rt := &runtime{synced: make(chan struct{}, 8)}
	var started atomic.Bool
	sync := func(ctx context.Context, cb adaptation.SyncCB) error {
		_, err := cb(ctx, nil, nil)
		if err == nil && (!o.External || started.Load()) {
			rt.synced <- struct{}{}
		}
		return err
	}
	update := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	opts := []adaptation.Option{adaptation.WithPluginPath(o.PluginDir), adaptation.WithPluginConfigPath(o.ConfDir)}
	if o.External {
		opts = append(opts, adaptation.WithSocketPath(o.Socket))
	} else {
		opts = append(opts, adaptation.WithDisabledExternalConnections())
	}
	r, err := adaptation.New(o.RuntimeName, o.RuntimeVersion, sync, update, opts...)
	if err != nil {
		return nil, err
	}
	if err := r.Start(); err != nil {
		return nil, err
	}
	started.Store(true)
	rt.r = r
	return rt, nil
}

func (rt *runtime) WaitSynced(timeout time.Duration) error {
	select {
	case <-rt.synced:
		rt.r.BlockPluginSync().Unblock()
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("no plugin synchronized within %v", timeout)
	}
}

func (rt *runtime) Stop() { rt.r.Stop() }

func pod(p harness.Pod) *api.PodSandbox {
	ps := &api.PodSandbox{Id: p.ID, Name: p.Name, Namespace: p.Namespace, Uid: p.UID,
		RuntimeHandler: p.Handler, Annotations: p.Annotations, Linux: &api.LinuxPodSandbox{}}
	if p.NetnsPath != "" {
		ps.Linux.Namespaces = []*api.LinuxNamespace{{Type: "network", Path: p.NetnsPath}}
	}
	return ps
}

func (rt *runtime) RunPodSandbox(ctx context.Context, p harness.Pod) error {
	return rt.r.RunPodSandbox(ctx, &api.StateChangeEvent{Pod: pod(p)})
}

func (rt *runtime) StopPodSandbox(ctx context.Context, p harness.Pod) error {
	return rt.r.StopPodSandbox(ctx, &api.StateChangeEvent{Pod: pod(p)})
}

func (rt *runtime) RemovePodSandbox(ctx context.Context, p harness.Pod) error {
	return rt.r.RemovePodSandbox(ctx, &api.StateChangeEvent{Pod: pod(p)})
}

func (rt *runtime) CreateContainer(ctx context.Context, p harness.Pod, c harness.Container) (*harness.Adjustment, error) {
	rpl, err := rt.r.CreateContainer(ctx, &api.CreateContainerRequest{
		Pod:       pod(p),
		Container: &api.Container{Id: c.ID, PodSandboxId: p.ID, Name: c.Name, Linux: &api.LinuxContainer{}},
	})
	if err != nil {
		return nil, err
	}
	a := rpl.GetAdjust()
	if a == nil {
		return nil, nil
	}
	out := &harness.Adjustment{Env: map[string]string{}}
	for _, d := range a.GetLinux().GetDevices() {
		out.Devices = append(out.Devices, harness.Device{Path: d.Path, Type: d.Type, Major: d.Major, Minor: d.Minor})
	}
	for _, m := range a.GetMounts() {
		out.Mounts = append(out.Mounts, harness.Mount{Source: m.Source, Destination: m.Destination, Options: m.Options})
	}
	for _, kv := range a.GetEnv() {
		out.Env[kv.Key] = kv.Value
	}
	out.NetworkNamespace = networkNamespace(a)
	return out, nil
}

func (rt *runtime) StopContainer(ctx context.Context, p harness.Pod, c harness.Container) error {
	_, err := rt.r.StopContainer(ctx, &api.StopContainerRequest{
		Pod:       pod(p),
		Container: &api.Container{Id: c.ID, PodSandboxId: p.ID, Name: c.Name, Linux: &api.LinuxContainer{}},
	})
	return err
}

func (rt *runtime) PostStartContainer(ctx context.Context, p harness.Pod, c harness.Container) error {
	return rt.r.PostStartContainer(ctx, &api.StateChangeEvent{
		Pod:       pod(p),
		Container: &api.Container{Id: c.ID, PodSandboxId: p.ID, Name: c.Name, Linux: &api.LinuxContainer{}},
	})
}

type quiet struct{}

func (quiet) Debugf(context.Context, string, ...interface{}) {}
func (quiet) Infof(context.Context, string, ...interface{})  {}
func (quiet) Warnf(context.Context, string, ...interface{})  {}
func (quiet) Errorf(context.Context, string, ...interface{}) {}
