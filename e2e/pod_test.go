package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/vmnic/vmnic/e2e/internal/probe"
)

// podOpts says what kind of pod to run.
type podOpts struct {
	vm          bool   // a VM pod: the vm runtime handler and the vmnic.io/vm annotation
	vmm         string // the pod's vmnic.io/vmm annotation (its VMM kind)
	hostNetwork bool   // the pod uses the host's network namespace
	handler     string // overrides the runtime handler
}

// Pod is a running pod sandbox.
type Pod struct {
	ID      string
	UID     string
	Name    string
	Handler string
	Config  *runtimeapi.PodSandboxConfig
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// opTimeout bounds every single runtime operation of the suite.
const opTimeout = 2 * time.Minute

func opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}

// podConfig is the CRI config of a pod named name.
func (e *Env) podConfig(name string, o podOpts) (*runtimeapi.PodSandboxConfig, string) {
	uid := randHex(8)
	netMode := runtimeapi.NamespaceMode_POD
	if o.hostNetwork {
		netMode = runtimeapi.NamespaceMode_NODE
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: podNamespace, Uid: uid},
		Hostname:     name,
		LogDirectory: filepath.Join(e.LogDir, uid),
		Labels:       map[string]string{"vmnic-e2e": "1"},
		Annotations:  map[string]string{},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: "/" + cgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: netMode, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD},
			},
		},
	}
	if o.hostNetwork {
		cfg.Hostname = "" // the host's UTS namespace: runc refuses to set a hostname
	}
	handler := o.handler
	if o.vmm != "" {
		cfg.Annotations[vmmAnnotation] = o.vmm
	}
	if o.vm {
		cfg.Annotations[vmAnnotation] = "true"
		if handler == "" {
			handler = vmHandler
		}
	}
	return cfg, handler
}

// RunPod runs a pod sandbox and registers its removal with t.Cleanup.
func (e *Env) RunPod(t testing.TB, name string, o podOpts) *Pod {
	t.Helper()
	p, err := e.runPod(name, o)
	if err != nil {
		t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := opCtx()
		defer cancel()
		if err := e.removePod(ctx, p.ID); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return p
}

func (e *Env) runPod(name string, o podOpts) (*Pod, error) {
	cfg, handler := e.podConfig(name, o)
	if err := os.MkdirAll(cfg.LogDirectory, 0o700); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	id, err := e.RS.RunPodSandbox(ctx, cfg, handler)
	if err != nil {
		return nil, err
	}
	return &Pod{ID: id, UID: cfg.Metadata.Uid, Name: name, Handler: handler, Config: cfg}, nil
}

// RemovePod stops and removes a pod now (its t.Cleanup then finds it gone).
func (e *Env) RemovePod(t testing.TB, p *Pod) {
	t.Helper()
	ctx, cancel := opCtx()
	defer cancel()
	if err := e.removePod(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
}

// StartVMM creates and starts the VMM stand-in container in pod p.
func (e *Env) StartVMM(t testing.TB, p *Pod) string {
	t.Helper()
	return e.StartVMMWith(t, p, vmmOpts{})
}

// vmmOpts say how to run a VMM container.
type vmmOpts struct {
	// ch: run `vmmprobe ch`, the Cloud Hypervisor simulator taking TAP fds
	// (in /vmnic, where it finds the API spec the image ships).
	ch bool
	// dropAll drops every capability (a VMM that is handed its TAPs
	// needs none for networking).
	dropAll bool
	// attempt is the container's restart count (a kubelet's new container
	// for the same spec after the old one stopped).
	attempt uint32
}

// StartVMMWith creates and starts a VMM container named "vmm" in pod p.
func (e *Env) StartVMMWith(t testing.TB, p *Pod, o vmmOpts) string {
	t.Helper()
	ctx, cancel := opCtx()
	defer cancel()
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "vmm", Attempt: o.attempt},
		Image:    &runtimeapi.ImageSpec{Image: vmmImage},
		Command:  []string{"/vmmprobe"},
		LogPath:  fmt.Sprintf("vmm.%d.log", o.attempt),
		Linux: &runtimeapi.LinuxContainerConfig{
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: p.Config.Linux.SecurityContext.NamespaceOptions,
			},
		},
	}
	if o.ch {
		cfg.Command = []string{"/vmmprobe", "ch"}
		cfg.WorkingDir = "/vmnic"
	}
	if o.dropAll {
		cfg.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{DropCapabilities: []string{"ALL"}}
	}
	id, err := e.RS.CreateContainer(ctx, p.ID, cfg, p.Config)
	if err != nil {
		t.Fatalf("CreateContainer vmm in %s: %v", p.Name, err)
	}
	if err := e.RS.StartContainer(ctx, id); err != nil {
		t.Fatalf("StartContainer vmm in %s: %v", p.Name, err)
	}
	return id
}

// Probe asks the VMM stand-in what its container sees.
func (e *Env) Probe(t testing.TB, containerID string) probe.Report {
	t.Helper()
	ctx, cancel := opCtx()
	defer cancel()
	stdout, stderr, err := e.RS.ExecSync(ctx, containerID, []string{"/vmmprobe", "report"}, 30*time.Second)
	if err != nil {
		t.Fatalf("exec vmmprobe report: %v (stderr %q)", err, stderr)
	}
	var r probe.Report
	if err := json.Unmarshal(stdout, &r); err != nil {
		t.Fatalf("decode probe report %q: %v", stdout, err)
	}
	return r
}

// PodStatus is what the tests read from PodSandboxStatus.
type PodStatus struct {
	State     runtimeapi.PodSandboxState
	IP        string
	NetnsPath string // "" for a host-network pod
	Pid       int
}

// Status returns the pod's CRI status, with the netns path and pause pid
// from containerd's verbose info.
func (e *Env) Status(t testing.TB, p *Pod) PodStatus {
	t.Helper()
	ctx, cancel := opCtx()
	defer cancel()
	resp, err := e.RS.PodSandboxStatus(ctx, p.ID, true)
	if err != nil {
		t.Fatalf("PodSandboxStatus %s: %v", p.Name, err)
	}
	st := PodStatus{State: resp.GetStatus().GetState(), IP: resp.GetStatus().GetNetwork().GetIp()}
	var info struct {
		Pid         int `json:"pid"`
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct {
					Type string `json:"type"`
					Path string `json:"path"`
				} `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if raw := resp.GetInfo()["info"]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &info); err != nil {
			t.Fatalf("decode verbose status of %s: %v", p.Name, err)
		}
	}
	st.Pid = info.Pid
	for _, ns := range info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			st.NetnsPath = ns.Path
		}
	}
	return st
}

// podName makes a unique pod name.
func podName(prefix string) string {
	return fmt.Sprintf("%s-%s", prefix, randHex(3))
}
