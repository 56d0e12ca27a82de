package hook

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/nri-hook/internal/logging"
)

func TestAtLeast(t *testing.T) {
	for _, tc := range []struct {
		v    string
		want bool
	}{
		{"v0.10.0", true}, {"0.10.0", true}, {"v0.11.0", true}, {"v0.12.5", true}, {"v1.0.0", true},
		{"v0.9.1-0.20250219030224-e597e7849f24", false}, {"v0.8.0", false}, {"v0.3.0", false},
		{"unknown", false}, {"(devel)", false}, {"", false}, {"v0", false}, {"vX.10", false},
	} {
		if got := atLeast(tc.v, 0, 10); got != tc.want {
			t.Errorf("atLeast(%q, 0.10) = %v, want %v", tc.v, got, tc.want)
		}
	}
}

// TestEvents: the subscription names exactly the six events the plugin
// handles, all known to NRI runtimes older than v0.10 (event numbers below 12).
func TestEvents(t *testing.T) {
	if got := Events.PrettyString(); got != "RunPodSandbox,StopPodSandbox,RemovePodSandbox,CreateContainer,PostStartContainer,StopContainer" {
		t.Errorf("events %s", got)
	}
	for e := api.Event_UPDATE_POD_SANDBOX; e < api.Event_LAST; e++ {
		if Events.IsSet(e) {
			t.Errorf("subscribes to %v, which NRI < v0.10 runtimes refuse", e)
		}
	}
}

type fakeRuntime struct {
	version string
	timeout time.Duration
}

func (f fakeRuntime) RuntimeNRIVersion() string     { return f.version }
func (f fakeRuntime) RequestTimeout() time.Duration { return f.timeout }

func newPlugin(t *testing.T, nriVersion string) (*Plugin, string, *netsetup.Store) {
	t.Helper()
	// CreateContainer mounts a tmpfs of its own for a VM pod's runtime dir.
	testenv.RequireRoot(t)
	state, rt := t.TempDir(), t.TempDir()
	t.Cleanup(func() {
		ents, _ := os.ReadDir(rt)
		for _, e := range ents {
			if err := unmountAll(filepath.Join(rt, e.Name())); err != nil {
				t.Error(err)
			}
		}
	})
	p := &Plugin{Log: logging.New(io.Discard), Runtime: fakeRuntime{nriVersion, 2 * time.Second}}
	cfg := fmt.Sprintf("vmAnnotation: true\nstateDir: %s\nnetnsDir: %s\nruntimeDir: %s\n", state, t.TempDir(), rt)
	if _, err := p.Configure(context.Background(), cfg, "containerd", "v2.1.5"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	store, err := netsetup.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	return p, rt, store
}

// TestCreateContainerNamespaceSupport: moving the VMM container into a netns
// vmnic owns needs an NRI v0.10+ runtime; older (or unknown) ones fail the
// container with a message that says so instead of starting the VMM in the
// host's network namespace. An adopted netns needs no move and works on any
// runtime.
func TestCreateContainerNamespaceSupport(t *testing.T) {
	for _, tc := range []struct {
		version string
		owned   bool
		err     string
	}{
		{"v0.8.0", true, "cannot move a container into a namespace"},
		{"unknown", true, "NRI v0.10 or later"},
		{"v0.9.1-0.20250219030224-e597e7849f24", true, "refusing to start the VMM in the host network namespace"},
		{"v0.10.0", true, ""},
		{"v0.12.5", true, ""},
		{"v0.8.0", false, ""},
	} {
		t.Run(fmt.Sprintf("%s/owned=%v", tc.version, tc.owned), func(t *testing.T) {
			p, rtBase, store := newPlugin(t, tc.version)
			id := "vmnn-unit"
			rec := netsetup.New(id)
			rec.NetnsPath, rec.NetnsOwned, rec.Origin = "/var/run/netns/vmnic-"+id, tc.owned, OriginNRI
			if err := store.Create(context.Background(), rec); err != nil {
				t.Fatal(err)
			}
			pod := &api.PodSandbox{Id: id, Name: "n", Namespace: "ns", Annotations: map[string]string{"vmnic.io/vm": "true"}}
			adj, _, err := p.CreateContainer(context.Background(), pod, &api.Container{Name: "vmm"})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.version) {
					t.Fatalf("err %v, want one saying %q and naming version %s", err, tc.err, tc.version)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var nets int
			for _, n := range adj.GetLinux().GetNamespaces() {
				if n.Type == "network" && n.Path == rec.NetnsPath {
					nets++
				}
			}
			if tc.owned != (nets == 1) {
				t.Errorf("owned=%v but %d network namespace adjustments", tc.owned, nets)
			}
			if fi, err := os.Stat(filepath.Join(rtBase, id)); err != nil || fi.Mode().Perm() != 0o700 {
				t.Errorf("runtime dir: %v %v", fi, err)
			}
			// The record named no runtime dir: CreateContainer records it,
			// and the record's copy the container reads is there.
			mirror := filepath.Join(rtBase, id, netsetup.MirrorDir, netsetup.MirrorFile)
			if got := envOf(adj)[EnvNetSetup]; got != mirror {
				t.Errorf("%s=%q, want %s", EnvNetSetup, got, mirror)
			}
			if data, err := os.ReadFile(mirror); err != nil || !strings.Contains(string(data), `"sandbox_id": "`+id+`"`) {
				t.Errorf("record copy %s: %v %s", mirror, err, data)
			}
		})
	}
}

// TestHandlerDeadline: handlers give up at 3/4 of the runtime's request
// timeout, and never later than MaxHandlerTime.
func TestHandlerDeadline(t *testing.T) {
	for _, tc := range []struct {
		timeout, want time.Duration
	}{
		{2 * time.Second, MaxHandlerTime},
		{400 * time.Millisecond, 300 * time.Millisecond},
		{10 * time.Second, MaxHandlerTime},
		{0, MaxHandlerTime},
	} {
		p := &Plugin{Runtime: fakeRuntime{"v0.12.5", tc.timeout}}
		if got := p.handlerTimeout(); got != tc.want {
			t.Errorf("request timeout %v: handler deadline %v, want %v", tc.timeout, got, tc.want)
		}
	}
}

func envOf(adj *api.ContainerAdjustment) map[string]string {
	env := map[string]string{}
	for _, kv := range adj.GetEnv() {
		env[kv.Key] = kv.Value
	}
	return env
}

// TestAdjustmentTun: the VMM container gets /dev/net/tun (device and
// cgroup rule) unless the VMM is handed its TAPs as fds (tapHandoff fd).
func TestAdjustmentTun(t *testing.T) {
	rec := netsetup.New("vmnn-tun")
	for _, tun := range []bool{true, false} {
		adj := AdjustmentFor("vmnn-tun", "/run/vmnic/sandboxes/vmnn-tun", rec, tun)
		var devs, rules int
		for _, d := range adj.GetLinux().GetDevices() {
			if d.Path == tunPath {
				devs++
			}
		}
		for _, r := range adj.GetLinux().GetResources().GetDevices() {
			if r.Major.GetValue() == tunMajor && r.Minor.GetValue() == tunMinor {
				rules++
			}
		}
		if want := map[bool]int{true: 1, false: 0}[tun]; devs != want || rules != want {
			t.Errorf("tun=%v: %d /dev/net/tun devices and %d cgroup rules, want %d", tun, devs, rules, want)
		}
		if len(adj.GetMounts()) != 2 || envOf(adj)[EnvSandboxID] != "vmnn-tun" {
			t.Errorf("tun=%v: the rest of the wiring changed: mounts %v env %v", tun, adj.GetMounts(), envOf(adj))
		}
	}
}
