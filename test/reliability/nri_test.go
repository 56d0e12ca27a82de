package reliability

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"

	"github.com/vmnic/vmnic/internal/failpoint"
	"github.com/vmnic/vmnic/internal/testkit/faultenv"
)

// nriRuntime is a fake NRI runtime (the real pkg/adaptation) with the
// failpoint build of vmnic-nri connected as an external plugin.
type nriRuntime struct {
	t      *testing.T
	e      *faultenv.Env
	r      *adaptation.Adaptation
	socket string
	cfg    string
	synced chan struct{}
	// started: Start is done; it synchronizes (no) pre-installed plugins
	// itself, which must not count as the external plugin's sync.
	started atomic.Bool

	mu   sync.Mutex
	pods []*api.PodSandbox // what Synchronize lists
	cmd  *exec.Cmd
	out  *bytes.Buffer
}

func startNRI(t *testing.T, e *faultenv.Env) *nriRuntime {
	t.Helper()
	dir, err := os.MkdirTemp("", "vmnr-nri-")
	must(t, "socket dir", err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	rt := &nriRuntime{t: t, e: e, socket: filepath.Join(dir, "nri.sock"), synced: make(chan struct{}, 8),
		cfg: filepath.Join(dir, "vmnic-nri.yaml")}
	conf := fmt.Sprintf("vmAnnotation: true\nstateDir: %s\nnetnsDir: %s\nruntimeDir: %s\nlogFile: %s\nlogLevel: debug\nsweepInterval: 0s\n",
		e.StateDir, e.NetnsDir, filepath.Join(e.RuntimeDir, "sandboxes"), filepath.Join(e.Root, "vmnic-nri.log"))
	must(t, "config", os.WriteFile(rt.cfg, []byte(conf), 0o600))
	// The plugin makes the base runtime dir when configured; it stays.
	must(t, "runtime dir", os.MkdirAll(filepath.Join(e.RuntimeDir, "sandboxes"), 0o755))
	sync := func(ctx context.Context, cb adaptation.SyncCB) error {
		rt.mu.Lock()
		pods := append([]*api.PodSandbox(nil), rt.pods...)
		rt.mu.Unlock()
		_, err := cb(ctx, pods, nil)
		if err == nil && rt.started.Load() {
			rt.synced <- struct{}{} // a plugin connected and synchronized
		}
		return err
	}
	update := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	r, err := adaptation.New("vmnr-runtime", "v0.0.1", sync, update,
		adaptation.WithPluginPath(filepath.Join(dir, "plugins")), adaptation.WithPluginConfigPath(filepath.Join(dir, "conf.d")),
		adaptation.WithSocketPath(rt.socket))
	must(t, "NRI runtime", err)
	must(t, "start NRI runtime", r.Start())
	rt.started.Store(true)
	t.Cleanup(r.Stop)
	rt.r = r
	t.Cleanup(rt.stopPlugin)
	return rt
}

// startPlugin starts vmnic-nri with extra environment and waits until it
// has synchronized.
func (rt *nriRuntime) startPlugin(env ...string) {
	rt.t.Helper()
	rt.stopPlugin()
	cmd := exec.Command(rt.e.Bins.NRI, "--socket", rt.socket, "--idx", "10", "--name", "vmnic", "--config", rt.cfg)
	cmd.Env = append(os.Environ(), env...)
	out := &bytes.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	must(rt.t, "start vmnic-nri", cmd.Start())
	rt.mu.Lock()
	rt.cmd, rt.out = cmd, out
	rt.mu.Unlock()
	select {
	case <-rt.synced:
	case <-time.After(30 * time.Second):
		rt.t.Fatalf("vmnic-nri did not synchronize within 30 s:\n%s", out)
	}
	rt.r.BlockPluginSync().Unblock()
}

func (rt *nriRuntime) stopPlugin() {
	rt.mu.Lock()
	cmd := rt.cmd
	rt.cmd = nil
	rt.mu.Unlock()
	if cmd != nil {
		cmd.Process.Kill()
		cmd.Wait()
	}
}

// waitPluginDead waits for the (crashed) plugin process and reports how it
// ended.
func (rt *nriRuntime) waitPluginDead() string {
	rt.mu.Lock()
	cmd := rt.cmd
	rt.cmd = nil
	rt.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			return "exit 0"
		}
		return err.Error()
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		return "still running"
	}
}

func (rt *nriRuntime) setPods(pods ...*api.PodSandbox) {
	rt.mu.Lock()
	rt.pods = pods
	rt.mu.Unlock()
}

func vmPodSandbox(id, netnsPath string) *api.PodSandbox {
	p := &api.PodSandbox{Id: id, Name: "pod-" + id, Uid: "uid-" + id, Namespace: "vmnr",
		Annotations: map[string]string{"vmnic.io/vm": "true"}, Linux: &api.LinuxPodSandbox{}}
	if netnsPath != "" {
		p.Linux.Namespaces = []*api.LinuxNamespace{{Type: "network", Path: netnsPath}}
	}
	return p
}

func nriCall(f func(context.Context) error) error {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return f(c)
}

// TestCrashNRIHandlers kills vmnic-nri at each of its handler failpoints
// (RunPodSandbox, RemovePodSandbox), for a host-network VM pod (an owned
// netns) and a pod with the runtime's netns; then the plugin is restarted
// and the runtime either removes the pod (RemovePodSandbox) or no longer
// lists it (Synchronize after the reconnect). The host must be as before.
func TestCrashNRIHandlers(t *testing.T) {
	points := append(failpoint.Select(failpoint.NRI, failpoint.OpNRIRun), failpoint.Select(failpoint.NRI, failpoint.OpNRIStop)...)
	n := 0
	for _, p := range points {
		for _, hostNetwork := range []bool{true, false} {
			for _, repair := range []string{"remove", "sync"} {
				n++
				name := fmt.Sprintf("%s/hostnet=%v/%s", p.Name, hostNetwork, repair)
				t.Run(name, func(t *testing.T) { crashNRI(t, p, hostNetwork, repair) })
			}
		}
	}
	t.Logf("%d NRI crash cases over %d NRI failpoints", n, len(points))
}

func crashNRI(t *testing.T, p failpoint.Point, hostNetwork bool, repair string) {
	e := newEnv(t)
	rt := startNRI(t, e)
	sid := id("n")
	var nsPath string
	if !hostNetwork {
		var err error
		nsPath, err = e.NewNetns(strings.TrimPrefix(sid, faultenv.NetnsPrefix))
		must(t, "netns", err)
	}
	pod := vmPodSandbox(sid, nsPath)
	before := audit(t, e)

	arm := e.Arm(p.Name, crash)
	switch p.Op {
	case failpoint.OpNRIRun:
		rt.startPlugin(arm...)
		// The runtime drops a plugin that dies in a call and goes on:
		// whether RunPodSandbox fails is the runtime's business.
		_ = nriCall(func(c context.Context) error {
			return rt.r.RunPodSandbox(c, &api.RunPodSandboxRequest{Pod: pod})
		})
	case failpoint.OpNRIStop:
		rt.startPlugin(arm...)
		rt.setPods(pod)
		must(t, "RunPodSandbox", nriCall(func(c context.Context) error {
			return rt.r.RunPodSandbox(c, &api.RunPodSandboxRequest{Pod: pod})
		}))
		must(t, "StopPodSandbox", nriCall(func(c context.Context) error {
			return rt.r.StopPodSandbox(c, &api.StopPodSandboxRequest{Pod: pod})
		}))
		_ = nriCall(func(c context.Context) error {
			return rt.r.RemovePodSandbox(c, &api.RemovePodSandboxRequest{Pod: pod})
		})
	}
	how := rt.waitPluginDead()
	if !strings.Contains(how, "killed") {
		data, _ := os.ReadFile(filepath.Join(e.Root, "vmnic-nri.log"))
		t.Logf("plugin log:\n%s", tail(string(data), 3000))
		t.Fatalf("vmnic-nri with a crash armed at %s ended with %q, want killed", p.Name, how)
	}
	if fired := e.FiredNames(); !slices.Contains(fired, p.Name) {
		t.Fatalf("failpoint %s did not fire (fired: %v)", p.Name, fired)
	}

	// The runtime gave up on the pod: it no longer lists it.
	rt.setPods()
	rt.startPlugin()
	if repair == "remove" {
		must(t, "RemovePodSandbox after the restart", nriCall(func(c context.Context) error {
			return rt.r.RemovePodSandbox(c, &api.RemovePodSandboxRequest{Pod: pod})
		}))
	}
	// Synchronize's reconcile may go on in the background: wait (same
	// looks again for a while) with the plugin still running, then stop it
	// and compare everything, its process included.
	what := fmt.Sprintf("vmnic-nri killed at %s, restarted, %s", p.Name, repair)
	same(t, what+" (plugin running)", before, audit(t, e), allKindsBut("proc")...)
	rt.stopPlugin()
	same(t, fmt.Sprintf("vmnic-nri killed at %s, restarted, %s", p.Name, repair), before, audit(t, e))
}
