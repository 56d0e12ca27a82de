package main

import (
	"context"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/netsetup"
)

func (rt *fakeRuntime) container(p pod, name string) *api.Container {
	return &api.Container{Id: p.id + "-" + name, PodSandboxId: p.id, Name: name, Linux: &api.LinuxContainer{}}
}

func (rt *fakeRuntime) stopContainer(p pod, name string) error {
	c, cancel := callCtx()
	defer cancel()
	_, err := rt.r.StopContainer(c, &api.StopContainerRequest{Pod: p.api(), Container: rt.container(p, name)})
	return err
}

func (rt *fakeRuntime) postStart(p pod, name string) error {
	c, cancel := callCtx()
	defer cancel()
	return rt.r.PostStartContainer(c, &api.PostStartContainerRequest{Pod: p.api(), Container: rt.container(p, name)})
}

// TestVMMContainerStopQuiesces (issue 12): when the VMM container of a VM
// pod stops, the hook quiesces the pod's NICs (a drop filter instead of the
// veth -> TAP redirect; the NIC recorded quiesced, pending for the next
// VMM); when it runs again (PostStartContainer) they are resumed. A sidecar
// stopping changes nothing.
func TestVMMContainerStopQuiesces(t *testing.T) {
	for _, m := range []mode{preinstalled, external} {
		t.Run(string(m), func(t *testing.T) {
			e := newEnv(t)
			rt := startRuntime(t, e, runtimeOptions{mode: m})
			p := vmPod("vmnn-vmmstate-"+string(m), e.fixture("vmmstate-"+string(m)))
			mustOK(t, "RunPodSandbox", rt.run(p))
			_, err := rt.create(p, "vmm")
			mustOK(t, "CreateContainer vmm", err)

			// The CNI ADD's part: a veth in the pod netns, and the NIC.
			peer := netfixture.Netns(t, netfixture.Name("vmnn-peer"))
			netfixture.Veth(t, p.netns, "eth0", peer, "peer0", 1500, "02:00:0a:cb:00:05")
			eng := sandbox.New(sandbox.Config{Store: e.store})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, err := eng.AddNIC(ctx, sandbox.NICSpec{SandboxID: p.id, ContainerID: p.id, IfName: "eth0", NetnsPath: p.netns, TapOwner: -1, TapGroup: -1}); err != nil {
				t.Fatalf("AddNIC: %v", err)
			}
			state := func() (netsetup.NICState, bool) {
				t.Helper()
				n, ok := e.record(p.id).NIC("eth0")
				if !ok {
					t.Fatal("NIC eth0 not recorded")
				}
				var drop bool
				netfixture.In(t, p.netns, func() error {
					l, err := netlink.LinkByName("eth0")
					if err != nil {
						return err
					}
					drop, err = hostnet.HasDrop(l)
					return err
				})
				return n.State, drop
			}

			mustOK(t, "StopContainer sidecar", rt.stopContainer(p, "sidecar"))
			if s, drop := state(); s != netsetup.NICPending || drop {
				t.Errorf("after a sidecar stopped: NIC %s, drop filter %v; want pending, none", s, drop)
			}
			mustOK(t, "StopContainer vmm", rt.stopContainer(p, "vmm"))
			if s, drop := state(); s != netsetup.NICQuiesced || !drop {
				t.Errorf("after the VMM container stopped: NIC %s, drop filter %v; want quiesced with the drop filter", s, drop)
			}
			if n, _ := e.record(p.id).NIC("eth0"); n.ResumeState != netsetup.NICPending || n.QuiesceReason == "" {
				t.Errorf("quiesced NIC %+v: want resume state pending and a reason", n)
			}
			mustOK(t, "PostStartContainer vmm", rt.postStart(p, "vmm"))
			if s, drop := state(); s != netsetup.NICPending || drop {
				t.Errorf("after the VMM container started again: NIC %s, drop filter %v; want pending, none", s, drop)
			}
			if err := eng.CheckNIC(ctx, p.id, "eth0"); err != nil {
				t.Errorf("CHECK after resume: %v", err)
			}
			mustOK(t, "StopPodSandbox", rt.stop(p))
			mustOK(t, "RemovePodSandbox", rt.remove(p))
			e.noRecord(p.id)
		})
	}
}
