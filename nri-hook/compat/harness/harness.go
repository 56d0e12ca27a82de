// Package harness is the version-independent part of the vmnic NRI plugin's
// compatibility tests. The compat test builds against one
// github.com/containerd/nri version at a time (one module file each, see
// the compat package), wraps that version's pkg/adaptation (the runtime side
// of NRI) in Runtime, and runs Suite against the real vmnic-nri binary (path
// in VMNIC_NRI_BIN, built from the main module on NRI v0.12.5).
//
// It must not import the main module or NRI: either would pull
// github.com/containerd/nri up past the version under test.
package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Pod is a pod sandbox as the runtime reports it.
type Pod struct {
	ID, Name, Namespace, UID, Handler string
	Annotations                       map[string]string
	NetnsPath                         string // "" = host network
}

// Container is a container being created.
type Container struct{ ID, Name string }

// Adjustment is what the plugin changed in a container, as the runtime
// will apply it.
type Adjustment struct {
	Devices []Device
	Mounts  []Mount
	Env     map[string]string
	// NetworkNamespace is the path of a network namespace adjustment; ""
	// when there is none (or the runtime's NRI cannot express one).
	NetworkNamespace string
}

// Device is a device node added to a container.
type Device struct {
	Path         string
	Type         string
	Major, Minor int64
}

// Mount is a mount added to a container.
type Mount struct {
	Source, Destination string
	Options             []string
}

// Runtime is a fake runtime: one NRI version's pkg/adaptation.
type Runtime interface {
	// WaitSynced waits until a plugin registered and synchronized.
	WaitSynced(timeout time.Duration) error
	RunPodSandbox(ctx context.Context, p Pod) error
	StopPodSandbox(ctx context.Context, p Pod) error
	RemovePodSandbox(ctx context.Context, p Pod) error
	CreateContainer(ctx context.Context, p Pod, c Container) (*Adjustment, error)
	// StopContainer and PostStartContainer: the VMM container stopping
	// and running again (the plugin quiesces and resumes the pod's NICs).
	StopContainer(ctx context.Context, p Pod, c Container) error
	PostStartContainer(ctx context.Context, p Pod, c Container) error
	Stop()
}

// Options start a Runtime.
type Options struct {
	RuntimeName, RuntimeVersion string
	Socket                      string // NRI socket for external plugins
	PluginDir, ConfDir          string // pre-installed plugins and their configuration
	External                    bool   // accept external plugins (else only pre-installed)
}

// Factory starts a Runtime of one NRI version.
type Factory func(o Options) (Runtime, error)

// Version describes the runtime family under test.
type Version struct {
	// NRI is the adaptation's NRI version (v0.8.0, v0.10.0...).
	NRI string
	// RuntimeName and RuntimeVersion are what the fake runtime reports, so
	// the plugin infers NRI (runtimes before v0.12 do not send it).
	RuntimeName, RuntimeVersion string
	// NamespaceAdjustment: the runtime can move a container into a
	// namespace (NRI v0.10+).
	NamespaceAdjustment bool
}

const vmHandler = "vmnn-compat-vm"

// Suite runs the compatibility tests for one NRI version, with the plugin
// pre-installed and external.
func Suite(t *testing.T, v Version, start Factory) {
	bin := pluginBinary(t)
	RequireRoot(t)
	for _, external := range []bool{false, true} {
		name := "preinstalled"
		if external {
			name = "external"
		}
		t.Run(name, func(t *testing.T) { suite(t, v, start, bin, external) })
	}
}

func suite(t *testing.T, v Version, start Factory, bin string, external bool) {
	e := newEnv(t)
	dir, err := os.MkdirTemp("", "vmnn-compat-") // short: unix socket path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	o := Options{
		RuntimeName: v.RuntimeName, RuntimeVersion: v.RuntimeVersion,
		Socket:    filepath.Join(dir, "nri.sock"),
		PluginDir: filepath.Join(dir, "plugins"), ConfDir: filepath.Join(dir, "conf.d"),
		External: external,
	}
	for _, d := range []string{o.PluginDir, o.ConfDir} {
		must(t, "mkdir", os.Mkdir(d, 0o755))
	}
	if !external {
		must(t, "install plugin", os.Symlink(bin, filepath.Join(o.PluginDir, "10-vmnic")))
		must(t, "plugin config", os.WriteFile(filepath.Join(o.ConfDir, "10-vmnic.conf"), []byte(e.config()), 0o644))
	}
	rt, err := start(o)
	must(t, "start runtime", err)
	t.Cleanup(rt.Stop)
	if external {
		cfg := filepath.Join(dir, "vmnic-nri.yaml")
		must(t, "plugin config", os.WriteFile(cfg, []byte(e.config()), 0o644))
		startPlugin(t, bin, "--socket", o.Socket, "--config", cfg)
	}
	must(t, "plugin registered and synchronized", rt.WaitSynced(30*time.Second))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// A VM pod on the runtime's netns.
	ns := e.fixture("vmnn-compat-a")
	// Selected by its runtime handler (the annotation path is off by default).
	vm := Pod{ID: "vmnn-compat-vm", Name: "vm", Namespace: "ns-vmnn", UID: "uid-vm", NetnsPath: ns, Handler: vmHandler,
		Annotations: map[string]string{"vmnic.io/vmm-container": "vmm"}}
	must(t, "RunPodSandbox", rt.RunPodSandbox(ctx, vm))
	rec, err := e.record(vm.ID)
	if err != nil {
		t.Fatalf("no record after RunPodSandbox: was the plugin refused at registration? (%v)", err)
	}
	if rec.NetnsPath != ns || rec.NetnsOwned || rec.Origin != "nri" || rec.PodName != "vm" || rec.PodUID != "uid-vm" || rec.Phase != "prepared" {
		t.Errorf("record %+v", rec)
	}
	adj, err := rt.CreateContainer(ctx, vm, Container{ID: "c-vmm", Name: "vmm"})
	must(t, "CreateContainer vmm", err)
	checkVMM(t, e, vm.ID, adj, "", true)
	// The VMM container stops and starts again: the plugin subscribed to
	// both events (this runtime accepted the subscription) and handles them
	// for a pod at zero NICs without changing its record.
	must(t, "StopContainer vmm", rt.StopContainer(ctx, vm, Container{ID: "c-vmm", Name: "vmm"}))
	must(t, "PostStartContainer vmm", rt.PostStartContainer(ctx, vm, Container{ID: "c-vmm", Name: "vmm"}))
	if rec2, err := e.record(vm.ID); err != nil || rec2.Phase != "prepared" {
		t.Errorf("record after the VMM container stopped and started: %+v %v", rec2, err)
	}
	adj, err = rt.CreateContainer(ctx, vm, Container{ID: "c-side", Name: "sidecar"})
	must(t, "CreateContainer sidecar", err)
	if adj != nil && (len(adj.Devices) > 0 || len(adj.Mounts) > 0 || len(adj.Env) > 0) {
		t.Errorf("sidecar changed: %+v", adj)
	}

	// The pod names its VMM kind (vmnic.io/vmm): with tapHandoff "auto" (the
	// default) a Cloud Hypervisor VMM is handed its TAPs as fds, so its
	// container gets no /dev/net/tun; a kind vmnic does not know is refused
	// at CreateContainer with an error naming the annotation.
	ch := Pod{ID: "vmnn-compat-ch", Name: "ch", Namespace: "ns-vmnn", UID: "uid-ch", NetnsPath: ns, Handler: vmHandler,
		Annotations: map[string]string{"vmnic.io/vmm": "cloud-hypervisor"}}
	must(t, "RunPodSandbox cloud-hypervisor pod", rt.RunPodSandbox(ctx, ch))
	adj, err = rt.CreateContainer(ctx, ch, Container{ID: "c-ch", Name: "vmm"})
	must(t, "CreateContainer cloud-hypervisor VMM", err)
	checkVMM(t, e, ch.ID, adj, "", false)
	bad := Pod{ID: "vmnn-compat-bad", Name: "bad", Namespace: "ns-vmnn", UID: "uid-bad", NetnsPath: ns, Handler: vmHandler,
		Annotations: map[string]string{"vmnic.io/vmm": "kvmtool"}}
	must(t, "RunPodSandbox unknown-VMM pod", rt.RunPodSandbox(ctx, bad))
	if adj, err := rt.CreateContainer(ctx, bad, Container{ID: "c-bad", Name: "vmm"}); err == nil {
		t.Errorf("CreateContainer of a pod annotated vmnic.io/vmm: kvmtool succeeded: %+v", adj)
	} else if !strings.Contains(err.Error(), `vmnic.io/vmm "kvmtool"`) {
		t.Errorf("CreateContainer error %q does not name the annotation and its value", err)
	}

	// A host-network VM pod: vmnic owns its netns; moving the VMM container
	// into it needs NRI v0.10.
	host := Pod{ID: "vmnn-compat-host", Name: "host", Namespace: "ns-vmnn", UID: "uid-host", Handler: vmHandler}
	must(t, "RunPodSandbox host-network", rt.RunPodSandbox(ctx, host))
	owned := filepath.Join(e.netnsDir, "vmnic-"+host.ID)
	if !isNetns(owned) {
		t.Fatalf("owned netns %s not created", owned)
	}
	adj, err = rt.CreateContainer(ctx, host, Container{ID: "c-host", Name: "vmm"})
	if v.NamespaceAdjustment {
		must(t, "CreateContainer host-network", err)
		checkVMM(t, e, host.ID, adj, owned, true)
	} else {
		if err == nil {
			t.Fatalf("NRI %s cannot move the container into %s, yet CreateContainer succeeded: %+v", v.NRI, owned, adj)
		}
		for _, want := range []string{"cannot move a container into a namespace", v.NRI, "refusing to start the VMM in the host network namespace"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	}

	// A plain pod is left alone.
	plain := Pod{ID: "vmnn-compat-plain", Name: "plain", Namespace: "ns-vmnn", NetnsPath: ns, Handler: "runc"}
	must(t, "RunPodSandbox plain", rt.RunPodSandbox(ctx, plain))
	if _, err := e.record(plain.ID); err == nil {
		t.Errorf("plain pod got a record")
	}

	for _, p := range []Pod{vm, ch, bad, host, plain} {
		must(t, "StopPodSandbox "+p.ID, rt.StopPodSandbox(ctx, p))
		must(t, "RemovePodSandbox "+p.ID, rt.RemovePodSandbox(ctx, p))
		if _, err := e.record(p.ID); err == nil {
			t.Errorf("%s: record left after removal", p.ID)
		}
	}
	if _, err := os.Lstat(owned); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("owned netns %s left after removal", owned)
	}
	if !isNetns(ns) {
		t.Errorf("the runtime's netns %s was removed", ns)
	}
}

// checkVMM checks the adjustment of a VMM container; wantTun: it must get
// /dev/net/tun (else it must not).
func checkVMM(t *testing.T, e *env, id string, adj *Adjustment, ownedNetns string, wantTun bool) {
	t.Helper()
	if adj == nil {
		t.Fatal("VMM container not adjusted")
	}
	tun := false
	for _, d := range adj.Devices {
		tun = tun || (d.Path == "/dev/net/tun" && d.Type == "c" && d.Major == 10 && d.Minor == 200)
	}
	if tun != wantTun {
		t.Errorf("/dev/net/tun injected %v, want %v: devices %+v", tun, wantTun, adj.Devices)
	}
	rtDir := filepath.Join(e.runtimeDir, id)
	mirrorDir := filepath.Join(rtDir, "netsetup")
	var dir, ro bool
	for _, m := range adj.Mounts {
		dir = dir || (m.Source == rtDir && m.Destination == rtDir && contains(m.Options, "rw"))
		// The record copy's dir read-only, after its parent so it lands on top.
		ro = ro || (dir && m.Source == mirrorDir && m.Destination == mirrorDir && contains(m.Options, "ro") && !contains(m.Options, "rw"))
		if m.Source == filepath.Join(e.stateDir, "sandboxes", id+".json") {
			t.Errorf("the record file itself is mounted (its updates would not show): %+v", m)
		}
	}
	if !dir {
		t.Errorf("mounts %+v: runtime dir %s not mounted read-write", adj.Mounts, rtDir)
	}
	if !ro {
		t.Errorf("mounts %+v: record copy dir %s not mounted read-only after the runtime dir", adj.Mounts, mirrorDir)
	}
	// The VMM container reads the record's copy in its runtime dir.
	mirror := filepath.Join(mirrorDir, "netsetup.json")
	if adj.Env["VMNIC_SANDBOX_ID"] != id || adj.Env["VMNIC_NETSETUP"] != mirror {
		t.Errorf("env %v, want VMNIC_NETSETUP=%s", adj.Env, mirror)
	}
	if data, err := os.ReadFile(mirror); err != nil || !strings.Contains(string(data), `"sandbox_id": "`+id+`"`) {
		t.Errorf("record copy %s: %v %s", mirror, err, data)
	}
	if adj.NetworkNamespace != ownedNetns {
		t.Errorf("network namespace adjustment %q, want %q", adj.NetworkNamespace, ownedNetns)
	}
	if fi, err := os.Stat(rtDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir %s: %v", rtDir, err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// env is one test's plugin directories.
type env struct {
	t                                        *testing.T
	stateDir, netnsDir, runtimeDir, fixtures string
	logFile                                  string
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, stateDir: t.TempDir(), netnsDir: t.TempDir(), runtimeDir: filepath.Join(t.TempDir(), "rt"), fixtures: t.TempDir()}
	e.logFile = filepath.Join(t.TempDir(), "vmnic-nri.log")
	t.Cleanup(func() {
		for _, d := range []string{e.netnsDir, e.fixtures} {
			ents, _ := os.ReadDir(d)
			for _, ent := range ents {
				removeNetns(filepath.Join(d, ent.Name()))
			}
		}
		if t.Failed() {
			if data, err := os.ReadFile(e.logFile); err == nil {
				t.Logf("plugin log:\n%s", data)
			}
		}
	})
	return e
}

func (e *env) config() string {
	return fmt.Sprintf("runtimeHandlers: [%s]\nstateDir: %s\nnetnsDir: %s\nruntimeDir: %s\nlogFile: %s\nlogLevel: debug\n",
		vmHandler, e.stateDir, e.netnsDir, e.runtimeDir, e.logFile)
}

// record is the part of a NetSetup record the suite checks.
type record struct {
	SandboxID    string `json:"sandbox_id"`
	PodName      string `json:"pod_name"`
	PodUID       string `json:"pod_uid"`
	Phase        string `json:"phase"`
	NetnsPath    string `json:"netns_path"`
	NetnsOwned   bool   `json:"netns_owned"`
	Origin       string `json:"origin"`
	PodNamespace string `json:"pod_namespace"`
}

func (e *env) record(id string) (*record, error) {
	data, err := os.ReadFile(filepath.Join(e.stateDir, "sandboxes", id+".json"))
	if err != nil {
		return nil, err
	}
	var r record
	return &r, json.Unmarshal(data, &r)
}

// fixture creates a netns standing in for one the runtime made for a pod.
func (e *env) fixture(name string) string {
	e.t.Helper()
	p := filepath.Join(e.fixtures, name)
	must(e.t, "netns fixture", createNetns(p))
	return p
}

func createNetns(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread stays in the new namespace; it is never unlocked, so
		// the Go runtime ends it with the goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "none", unix.MS_BIND, "")
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	return nil
}

func removeNetns(path string) {
	_ = unix.Unmount(path, unix.MNT_DETACH)
	_ = os.Remove(path)
}

// isNetns: path is an nsfs mount of a network namespace.
func isNetns(path string) bool {
	var st unix.Statfs_t
	if unix.Statfs(path, &st) != nil || st.Type != unix.NSFS_MAGIC {
		return false
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	kind, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	return err == nil && kind == unix.CLONE_NEWNET
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
