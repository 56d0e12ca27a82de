package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkRunPodSandbox measures the wall time of RunPodSandbox for a plain
// pod (bridge + host-local) and for a VM pod (bridge + host-local + vmnic,
// and the vmnic NRI plugin), alternating the two so that both see the same
// machine, and prints median, p90 and the VM/plain ratio.
// VMNIC_E2E_BENCH_PODS pods each way (default 20); each pod is removed
// (untimed) before the next one runs.
//
//	make e2e-bench
func BenchmarkRunPodSandbox(b *testing.B) {
	e := needVmnic(b, true, true)
	n := 20
	if v, err := strconv.Atoi(os.Getenv("VMNIC_E2E_BENCH_PODS")); err == nil && v > 0 {
		n = v
	}
	var plainIDs, vmIDs []string
	measure := func(name string, o podOpts) time.Duration {
		start := time.Now()
		p, err := e.runPod(name, o)
		d := time.Since(start)
		if err != nil {
			b.Fatalf("RunPodSandbox %s: %v", name, err)
		}
		if strings.HasPrefix(name, "bench-") {
			if o.vm {
				vmIDs = append(vmIDs, p.ID)
			} else {
				plainIDs = append(plainIDs, p.ID)
			}
		}
		// A VM pod must have been wired, else this measured nothing of vmnic
		// (an NRI plugin slower than the runtime's timeout is dropped).
		if rec := e.Record(b, p.ID); o.vm && (rec == nil || len(rec.NetworkConfigs) != 1 || rec.PodName != name) {
			b.Fatalf("VM pod %s took %s and was not wired: record %+v", name, d, rec)
		}
		ctx, cancel := opCtx()
		defer cancel()
		if err := e.removePod(ctx, p.ID); err != nil {
			b.Fatal(err)
		}
		return d
	}
	var plain, vm []time.Duration
	for range b.N {
		// Warm up: the first pods of a handler pay for loading the CNI config, the image, the plugin.
		measure("warm-plain", podOpts{})
		measure("warm-vm", podOpts{vm: true})
		for i := range n {
			plain = append(plain, measure(fmt.Sprintf("bench-plain-%d", i), podOpts{}))
			vm = append(vm, measure(fmt.Sprintf("bench-vm-%d", i), podOpts{vm: true}))
		}
	}
	pm, p90 := stats(plain)
	vmm, v90 := stats(vm)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(pm), "plain-median-ms")
	b.ReportMetric(ms(p90), "plain-p90-ms")
	b.ReportMetric(ms(vmm), "vm-median-ms")
	b.ReportMetric(ms(v90), "vm-p90-ms")
	b.ReportMetric(float64(vmm)/float64(pm), "median-ratio")
	fmt.Printf("\nRunPodSandbox wall time, %d pods each way (%s, runc %s, overlayfs):\n", len(plain), containerdVersion(e), e2eRuncVersion)
	fmt.Printf("  %-44s median %7.1f ms   p90 %7.1f ms\n", "without vmnic (bridge + host-local)", ms(pm), ms(p90))
	fmt.Printf("  %-44s median %7.1f ms   p90 %7.1f ms\n", "with vmnic (bridge + host-local + vmnic, NRI)", ms(vmm), ms(v90))
	fmt.Printf("  samples without (ms): %s\n", msList(plain))
	fmt.Printf("  samples with    (ms): %s\n", msList(vm))
	fmt.Printf("  ratio with/without: median %.2f   p90 %.2f\n", float64(vmm)/float64(pm), float64(v90)/float64(p90))
	printPhases(os.Stdout, e.Dir, plainIDs, vmIDs)
	fmt.Println()
}

// stats returns the median and the 90th percentile (nearest rank).
func stats(ds []time.Duration) (median, p90 time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0, 0
	}
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.5) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	if len(s)%2 == 1 {
		median = s[len(s)/2]
	} else {
		median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return median, rank(0.9)
}

// msList formats durations, sorted, in milliseconds.
func msList(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	var b strings.Builder
	for i, d := range s {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.0f", float64(d.Microseconds())/1000)
	}
	return b.String()
}
