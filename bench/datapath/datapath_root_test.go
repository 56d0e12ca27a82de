package datapath

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// The quick mode runs every measurement once and produces numbers for
// every variant (no timing assertions: speed is the benchmark's to report).
func TestQuickRun(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Command(t, "iptables") // the bridge backend's forward rules
	if err := hostnet.ProbeBPF(); err != nil {
		testenv.Unavailable(t, "the cni-bpf variant needs the BPF data path: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := t.TempDir()
	rep, err := Run(ctx, Config{Quick: true, OutDir: out})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Variants) != 4 {
		t.Fatalf("%d variants, want bridge, cni-u32, cni-bpf, macvtap", len(rep.Variants))
	}
	want := map[string]string{"bridge": "", "cni-u32": "u32", "cni-bpf": "bpf", "macvtap": ""}
	for _, v := range rep.Variants {
		if dp, ok := want[v.Name]; !ok || v.DataPath != dp {
			t.Errorf("variant %s recorded data path %q, want %q", v.Name, v.DataPath, dp)
		}
		if len(v.Rounds) != 1 {
			t.Fatalf("%s: %d rounds", v.Name, len(v.Rounds))
		}
		r := v.Rounds[0]
		for name, p := range map[string]PingResult{"1 outstanding": r.Ping1, "64 outstanding": r.Ping64} {
			if p.Received == 0 || p.Rate <= 0 || p.RTTMedianUs <= 0 || p.RTTP99Us < p.RTTMedianUs {
				t.Errorf("%s echo %s: %+v", v.Name, name, p)
			}
		}
		for name, x := range map[string]TCPResult{"host → guest": r.HostToVM, "guest → host": r.VMToHost, "two flows, 1 queue": r.TwoFlows1, "two flows, 2 queues": r.TwoFlows2} {
			if x.Bytes == 0 || x.Gbps <= 0 || x.Frames.RXFrames == 0 || x.Frames.TXFrames == 0 || x.ProcCPUPerG <= 0 {
				t.Errorf("%s TCP %s: %+v", v.Name, name, x)
			}
		}
		if len(r.TwoFlows2.Frames.RXPerQueue) != 2 {
			t.Errorf("%s: two-queue guest read %v per queue, want 2 queues", v.Name, r.TwoFlows2.Frames.RXPerQueue)
		}
		if len(v.RTT1Quantiles) == 0 {
			t.Errorf("%s: no RTT quantiles", v.Name)
		}
	}
	if len(rep.Metrics) == 0 || len(rep.Targets) != 8 {
		t.Errorf("%d metrics, %d targets", len(rep.Metrics), len(rep.Targets))
	}
	// Ratios to the bridge backend exist wherever the bridge's value is
	// not zero (the machine-wide CPU, counted in 10 ms ticks, can be zero
	// for a quick run's tiny transfers).
	for _, m := range rep.Metrics {
		for _, v := range []string{"cni-u32", "cni-bpf", "macvtap"} {
			if _, ok := m.Ratio[v]; !ok && m.Min["bridge"] > 0 {
				t.Errorf("metric %q has no ratio for %s", m.Name, v)
			}
		}
	}
	for _, tg := range rep.Targets {
		if tg.Ratio <= 0 {
			t.Errorf("target %s for %s: ratio %v", tg.Name, tg.Variant, tg.Ratio)
		}
	}
	for _, f := range []string{"datapath.md", "datapath.json", "datapath-rtt.png"} {
		if st, err := os.Stat(filepath.Join(out, f)); err != nil || st.Size() == 0 {
			t.Errorf("%s not written: %v", f, err)
		}
	}
}
