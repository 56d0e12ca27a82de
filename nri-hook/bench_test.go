package main

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vmnic/vmnic/netsetup"
)

// BenchmarkRunPodAndCreateContainer measures, end to end through the real
// NRI socket and the real vmnic-nri binary (external mode), how long the
// plugin takes to answer RunPodSandbox (adopt the netns, write the record)
// and CreateContainer (wire the VMM container) for a VM pod, with 1,000
// other sandboxes recorded. It reports the p50 and p99 of each (µs); the
// runtime's request timeout is 2 s.
//
//	go test -run '^$' -bench RunPodAndCreateContainer -benchtime 300x ./nri-hook
func BenchmarkRunPodAndCreateContainer(b *testing.B) {
	const recorded = 1000
	e := newEnv(b)
	shared := e.fixture("bench-others")
	listed := make([]pod, 0, recorded)
	for i := 0; i < recorded; i++ {
		rec := netsetup.New(fmt.Sprintf("vmnn-rec-%04d", i))
		rec.NetnsPath, rec.Origin = shared, "nri"
		rec.PodName, rec.PodNamespace = rec.SandboxID, "ns-vmnn"
		if err := e.store.Create(context.Background(), rec); err != nil {
			b.Fatal(err)
		}
		listed = append(listed, vmPod(rec.SandboxID, shared)) // listed: Synchronize keeps them
	}
	rt := startRuntime(b, e, runtimeOptions{mode: external, pods: listed})
	ns := e.fixture("bench")

	runs := make([]time.Duration, 0, b.N)
	creates := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := vmPod(fmt.Sprintf("vmnn-bench-%d", i), ns)
		t0 := time.Now()
		if err := rt.run(p); err != nil {
			b.Fatalf("RunPodSandbox: %v", err)
		}
		t1 := time.Now()
		adj, err := rt.create(p, "vmm")
		if err != nil || adj == nil {
			b.Fatalf("CreateContainer: %v", err)
		}
		t2 := time.Now()
		runs, creates = append(runs, t1.Sub(t0)), append(creates, t2.Sub(t1))
		b.StopTimer()
		if err := rt.remove(p); err != nil {
			b.Fatalf("RemovePodSandbox: %v", err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	if ids, _ := e.store.IDs(); len(ids) != recorded {
		b.Fatalf("%d records at the end, want the %d recorded ones", len(ids), recorded)
	}
	report(b, "run", runs)
	report(b, "create", creates)
}

func report(b *testing.B, name string, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	pct := func(p float64) float64 {
		i := int(p * float64(len(d)-1))
		return float64(d[i].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(0.50), name+"-p50-us")
	b.ReportMetric(pct(0.99), name+"-p99-us")
}
