package hook

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/nri-hook/internal/logging"
)

// BenchmarkRunPodSandbox times the RunPodSandbox handler in-process (no NRI
// socket) for a VM pod with its own netns, with 1,000 sandboxes recorded,
// so that a CPU profile (-cpuprofile) shows the handler's own cost:
//
//	go test -run '^$' -bench RunPodSandbox -cpuprofile cpu.out ./nri-hook/internal/hook
func BenchmarkRunPodSandbox(b *testing.B) {
	testenv.RequireRoot(b)
	state, rt, nsDir := b.TempDir(), b.TempDir(), b.TempDir()
	// The runtime dirs go under /run on a node (tmpfs).
	if d, err := os.MkdirTemp("/dev/shm", "vmnb-run-"); err == nil {
		rt = d
		b.Cleanup(func() { os.RemoveAll(d) }) // after the unmounts below
	}
	b.Cleanup(func() {
		ents, _ := os.ReadDir(rt)
		for _, e := range ents {
			_ = unmountAll(filepath.Join(rt, e.Name()))
		}
	})
	p := &Plugin{Log: logging.New(io.Discard), Runtime: fakeRuntime{"v0.10.0", 2 * time.Second}}
	cfg := fmt.Sprintf("vmAnnotation: true\nstateDir: %s\nnetnsDir: %s\nruntimeDir: %s\n", state, nsDir, rt)
	if _, err := p.Configure(context.Background(), cfg, "containerd", "v2.1.5"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	store, err := netsetup.Open(state)
	if err != nil {
		b.Fatal(err)
	}
	ns, err := netns.Create(nsDir, "bench-others")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = netns.Remove(ns) })
	for i := 0; i < 1000; i++ {
		rec := netsetup.New(fmt.Sprintf("vmnb-rec-%04d", i))
		rec.NetnsPath, rec.Origin = ns, OriginNRI
		if err := store.Create(context.Background(), rec); err != nil {
			b.Fatal(err)
		}
	}
	pods := make([]*api.PodSandbox, b.N)
	for i := range pods {
		path, err := netns.Create(nsDir, fmt.Sprintf("bench-%d", i))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = netns.Remove(path) })
		id := fmt.Sprintf("vmnb-run-%d", i)
		pods[i] = &api.PodSandbox{Id: id, Name: "pod-" + id, Uid: "uid-" + id, Namespace: "vmnb",
			Annotations: map[string]string{"vmnic.io/vm": "true"},
			Linux:       &api.LinuxPodSandbox{Namespaces: []*api.LinuxNamespace{{Type: "network", Path: path}}}}
	}
	ctx := context.Background()
	b.ResetTimer()
	for _, pod := range pods {
		if err := p.RunPodSandbox(ctx, pod); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	for _, pod := range pods {
		if _, err := store.Get(pod.GetId()); err != nil {
			b.Fatalf("no record for %s after RunPodSandbox: %v", pod.GetId(), err)
		}
	}
}
