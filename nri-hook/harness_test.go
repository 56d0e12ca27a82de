package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// Test names: netns vmnn-*, sandbox ids vmnn-*. The runtime handler that
// marks VM pods in the tests' configuration:
const testVMHandler = "vmnn-vm-handler"

// env is one test's plugin environment: its directories and configuration.
type env struct {
	t          testing.TB
	stateDir   string
	netnsDir   string // owned netns of host-network VM pods
	runtimeDir string
	fixtureDir string // netns fixtures standing in for the runtime's netns
	logFile    string
	store      *netsetup.Store
	// sweep is the plugin's sweepInterval: off unless a test turns it on,
	// so that tests that take a netns away under the plugin on purpose
	// (as CRI-O does before StopPodSandbox) see the events do the work.
	sweep string
	// vmAnnotation is the configuration's vmAnnotation line: the tests opt
	// in to the annotation path ("vmAnnotation: true"); "" leaves the key
	// out (the default: runtime handlers only).
	vmAnnotation string
	// extra is appended to the configuration.
	extra string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	testenv.RequireRoot(t)
	e := &env{
		t:            t,
		stateDir:     t.TempDir(),
		netnsDir:     t.TempDir(),
		runtimeDir:   filepath.Join(t.TempDir(), "sandboxes"),
		fixtureDir:   t.TempDir(),
		sweep:        "0s",
		vmAnnotation: "vmAnnotation: true",
	}
	e.logFile = filepath.Join(t.TempDir(), "vmnic-nri.log")
	// Registered after the TempDirs, so it runs before their removal: a
	// mounted netns would make the removal fail.
	t.Cleanup(func() {
		// The runtime dirs of pods a test left are tmpfs mounts of their own.
		ents, _ := os.ReadDir(e.runtimeDir)
		for _, ent := range ents {
			for dir := filepath.Join(e.runtimeDir, ent.Name()); unix.Unmount(dir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW) == nil; {
			}
		}
		for _, dir := range []string{e.netnsDir, e.fixtureDir} {
			paths, _ := netns.List(dir, "")
			for _, p := range paths {
				if err := netns.Remove(p); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			if data, err := os.ReadFile(e.logFile); err == nil {
				t.Logf("plugin log:\n%s", data)
			}
		}
	})
	store, err := netsetup.Open(e.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	e.store = store
	return e
}

// config is the plugin configuration (YAML) for this environment.
func (e *env) config() string {
	return fmt.Sprintf(`# vmnic NRI plugin, test configuration
runtimeHandlers: [%s]
%s
stateDir: %s
netnsDir: %s
runtimeDir: %s
logFile: %s
logLevel: debug
sweepInterval: %s
%s
`, testVMHandler, e.vmAnnotation, e.stateDir, e.netnsDir, e.runtimeDir, e.logFile, e.sweep, e.extra)
}

// fixture creates a netns standing in for one the runtime made for a pod.
func (e *env) fixture(name string) string {
	e.t.Helper()
	p, err := netns.Create(e.fixtureDir, "vmnn-"+name)
	if err != nil {
		e.t.Fatalf("netns fixture: %v", err)
	}
	return p
}

func (e *env) record(id string) *netsetup.NetSetup {
	e.t.Helper()
	rec, err := e.store.Get(id)
	if err != nil {
		e.t.Fatalf("record of %s: %v", id, err)
	}
	return rec
}

func (e *env) noRecord(id string) {
	e.t.Helper()
	if _, err := e.store.Get(id); !errors.Is(err, netsetup.ErrNotFound) {
		e.t.Fatalf("sandbox %s: want no record, got err=%v", id, err)
	}
}

// eventually polls cond (bounded) for background work such as the
// reconcile after Synchronize.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isNetns(path string) bool {
	_, err := netsetup.IdentifyNetns(path)
	return err == nil
}

// pod describes a test pod.
type pod struct {
	id          string
	handler     string
	annotations map[string]string
	netns       string // "" = host network
	pid         int    // the pod process the runtime reports (0: none)
	ips         []string
}

func (p pod) api() *api.PodSandbox {
	ps := &api.PodSandbox{
		Id:             p.id,
		Name:           "name-" + p.id,
		Uid:            "uid-" + p.id,
		Namespace:      "ns-vmnn",
		RuntimeHandler: p.handler,
		Annotations:    p.annotations,
		Linux:          &api.LinuxPodSandbox{},
		Pid:            uint32(p.pid),
		Ips:            p.ips,
	}
	ps.Linux.Namespaces = append(ps.Linux.Namespaces,
		&api.LinuxNamespace{Type: "ipc"}, &api.LinuxNamespace{Type: "uts"})
	if p.netns != "" {
		ps.Linux.Namespaces = append(ps.Linux.Namespaces, &api.LinuxNamespace{Type: "network", Path: p.netns})
	}
	return ps
}

func vmPod(id, nsPath string) pod {
	return pod{id: id, netns: nsPath, annotations: map[string]string{
		"vmnic.io/vm": "true", "vmnic.io/vmm-container": "vmm",
	}}
}

// mode is how the plugin runs.
type mode string

const (
	preinstalled mode = "preinstalled"
	external     mode = "external"
)

// fakeRuntime is an NRI runtime (the real pkg/adaptation) driving the real
// vmnic-nri binary.
type fakeRuntime struct {
	t      testing.TB
	r      *adaptation.Adaptation
	dir    string
	socket string
	cmd    *exec.Cmd // external plugin process

	mu     sync.Mutex
	synced chan struct{}
	syncs  int
}

type runtimeOptions struct {
	mode mode
	// pods the runtime lists at Synchronize.
	pods []pod
	// requestTimeout, when set, replaces the 2 s plugin request timeout.
	requestTimeout time.Duration
}

func startRuntime(t testing.TB, e *env, o runtimeOptions) *fakeRuntime {
	t.Helper()
	// Unix socket paths must stay short: no t.TempDir here.
	dir, err := os.MkdirTemp("", "vmnn-nri-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if o.requestTimeout > 0 {
		adaptation.SetPluginRequestTimeout(o.requestTimeout)
		t.Cleanup(func() { adaptation.SetPluginRequestTimeout(api.DefaultPluginRequestTimeout) })
	}
	rt := &fakeRuntime{t: t, dir: dir, socket: filepath.Join(dir, "nri.sock"), synced: make(chan struct{}, 16)}
	pluginDir, confDir := filepath.Join(dir, "plugins"), filepath.Join(dir, "conf.d")
	for _, d := range []string{pluginDir, confDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := []adaptation.Option{
		adaptation.WithPluginPath(pluginDir),
		adaptation.WithPluginConfigPath(confDir),
		adaptation.WithSocketPath(rt.socket),
	}
	if o.mode == preinstalled {
		if err := os.Symlink(pluginBin, filepath.Join(pluginDir, "10-vmnic")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(confDir, "10-vmnic.conf"), []byte(e.config()), 0o644); err != nil {
			t.Fatal(err)
		}
		opts = append(opts, adaptation.WithDisabledExternalConnections())
	}
	var syncPods []*api.PodSandbox
	for _, p := range o.pods {
		syncPods = append(syncPods, p.api())
	}
	// The runtime synchronizes its pre-installed plugins (maybe none) in
	// Start and each external plugin when it connects.
	var started atomic.Bool
	syncFn := func(ctx context.Context, cb adaptation.SyncCB) error {
		_, err := cb(ctx, syncPods, nil)
		if err == nil && (o.mode == preinstalled || started.Load()) {
			rt.mu.Lock()
			rt.syncs++
			rt.mu.Unlock()
			rt.synced <- struct{}{}
		}
		return err
	}
	updateFn := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	r, err := adaptation.New("vmnn-fake-runtime", "v0.0.1", syncFn, updateFn, opts...)
	if err != nil {
		t.Fatal(err)
	}
	rt.r = r
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	started.Store(true)
	t.Cleanup(r.Stop) // kills a pre-installed plugin
	if o.mode == external {
		rt.startExternalPlugin(e)
	}
	rt.waitSynced()
	return rt
}

// startExternalPlugin runs vmnic-nri as a daemon on the runtime's socket.
func (rt *fakeRuntime) startExternalPlugin(e *env) {
	t := rt.t
	t.Helper()
	cfg := filepath.Join(rt.dir, "vmnic-nri.yaml")
	if err := os.WriteFile(cfg, []byte(e.config()), 0o644); err != nil {
		t.Fatal(err)
	}
	rt.cmd = startPluginProcess(t, "--socket", rt.socket, "--idx", "10", "--name", "vmnic", "--config", cfg)
}

// startPluginProcess starts vmnic-nri in external mode; it is killed at
// the end of the test.
func startPluginProcess(t testing.TB, args ...string) *exec.Cmd {
	t.Helper()
	stderr := &lockedBuffer{}
	cmd := exec.Command(pluginBin, args...)
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("plugin stderr:\n%s", stderr.String())
		}
	})
	return cmd
}

// waitSynced waits until a plugin has registered and synchronized and is in
// the runtime's list of plugins.
func (rt *fakeRuntime) waitSynced() {
	rt.t.Helper()
	select {
	case <-rt.synced:
	case <-time.After(30 * time.Second):
		rt.t.Fatal("the plugin did not register and synchronize within 30 s")
	}
	rt.r.BlockPluginSync().Unblock()
}

func callCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func (rt *fakeRuntime) run(p pod) error {
	c, cancel := callCtx()
	defer cancel()
	return rt.r.RunPodSandbox(c, &api.RunPodSandboxRequest{Pod: p.api()})
}

func (rt *fakeRuntime) stop(p pod) error {
	c, cancel := callCtx()
	defer cancel()
	return rt.r.StopPodSandbox(c, &api.StopPodSandboxRequest{Pod: p.api()})
}

func (rt *fakeRuntime) remove(p pod) error {
	c, cancel := callCtx()
	defer cancel()
	return rt.r.RemovePodSandbox(c, &api.RemovePodSandboxRequest{Pod: p.api()})
}

func (rt *fakeRuntime) create(p pod, name string) (*api.ContainerAdjustment, error) {
	c := &api.Container{
		Id:           p.id + "-" + name,
		PodSandboxId: p.id,
		Name:         name,
		Args:         []string{"/bin/true"},
		Linux:        &api.LinuxContainer{},
	}
	cc, cancel := callCtx()
	defer cancel()
	rpl, err := rt.r.CreateContainer(cc, &api.CreateContainerRequest{Pod: p.api(), Container: c})
	if err != nil {
		return nil, err
	}
	return rpl.GetAdjust(), nil
}

func mustOK(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func mustFail(t testing.TB, what string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: want an error, got none", what)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("%s: error %q does not say %q", what, err, w)
		}
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
