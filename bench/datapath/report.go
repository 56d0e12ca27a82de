package datapath

import (
	"fmt"
	"strings"

	"github.com/vmnic/vmnic/bench/internal/pngplot"
)

// Markdown renders the report: the targets, then every metric per variant
// (median over rounds, min–max) with its ratio to the bridge backend.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# vmnic data-path benchmark\n\n")
	mode := "full"
	if r.Quick {
		mode = "quick (smoke run: the numbers are not meaningful)"
	}
	fmt.Fprintf(&b, "- mode: %s; %d interleaved round(s); TCP guest GSO: %v\n", mode, r.Rounds, r.GSO)
	fmt.Fprintf(&b, "- kernel %s, %d CPUs, load average %s at the start, %s at the end; took %s\n", r.Kernel, r.CPUs, r.LoadAvg[0], r.LoadAvg[1], r.Duration.Round(1e9))
	if r.Retries > 0 {
		fmt.Fprintf(&b, "- %d echo run(s) opened the guest a second time: no answer to the warm-up\n", r.Retries)
	}
	if r.Command != "" {
		fmt.Fprintf(&b, "- command: `%s`\n", r.Command)
	}
	for _, v := range r.Variants {
		if v.DataPath != "" {
			fmt.Fprintf(&b, "- %s: data path recorded `%s`", v.Name, v.DataPath)
			if v.Tweak != "" {
				fmt.Fprintf(&b, "; experiment `%s` on eth0", v.Tweak)
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\n## Targets (ratio to the bridge backend: median of the per-round ratios, min–max)\n\n")
	b.WriteString("| target | variant | want | ratio | spread | met |\n|---|---|---|---|---|---|\n")
	for _, t := range r.Targets {
		met := "missed"
		if t.Met {
			met = "met"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | ×%.2f | ×%.2f–%.2f | %s |\n", t.Name, t.Variant, t.Want, t.Ratio, t.RatioMin, t.RatioMax, met)
	}
	b.WriteString("\n## Measurements (median over rounds, min–max; ratio to bridge)\n\n")
	b.WriteString("| metric | unit |")
	for _, v := range r.Variants {
		fmt.Fprintf(&b, " %s |", v.Name)
	}
	b.WriteString("\n|---|---|")
	for range r.Variants {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, m := range r.Metrics {
		fmt.Fprintf(&b, "| %s | %s |", m.Name, m.Unit)
		for _, v := range r.Variants {
			cell := fmt.Sprintf("%s (%s–%s)", num(m.Median[v.Name]), num(m.Min[v.Name]), num(m.Max[v.Name]))
			if ratio, ok := m.Ratio[v.Name]; ok && v.Name != "bridge" {
				cell += fmt.Sprintf(" ×%.2f", ratio)
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n## Frames the TCP guest read from the TAP, host → guest (last round)\n\n")
	b.WriteString("| variant | frames | mean bytes | largest | super-frames (> MTU) | two flows, 2 queue pairs: frames per queue |\n|---|---|---|---|---|---|\n")
	for _, v := range r.Variants {
		if len(v.Rounds) == 0 {
			continue
		}
		last := v.Rounds[len(v.Rounds)-1]
		f := last.HostToVM.Frames
		mean := 0.0
		if f.RXFrames > 0 {
			mean = float64(f.RXBytes) / float64(f.RXFrames)
		}
		fmt.Fprintf(&b, "| %s | %d | %.0f | %d | %d | %v |\n", v.Name, f.RXFrames, mean, f.RXMax, f.RXSuper, last.TwoFlows2.Frames.RXPerQueue)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}
	return b.String()
}

func num(x float64) string {
	switch {
	case x >= 100:
		return fmt.Sprintf("%.0f", x)
	case x >= 10:
		return fmt.Sprintf("%.1f", x)
	default:
		return fmt.Sprintf("%.2f", x)
	}
}

// plot draws the RTT distribution at 1 outstanding per variant.
func (r *Report) plot(path string) error {
	p := &pngplot.Plot{Title: "echo RTT host -> guest -> host, 1 outstanding, all rounds", XLabel: "percentile", YLabel: "RTT (us)"}
	for i, v := range r.Variants {
		if len(v.RTT1Quantiles) == 0 {
			continue
		}
		s := pngplot.Series{Name: v.Name, Color: i}
		for k, q := range v.RTT1Quantiles {
			s.X = append(s.X, RTTQuantiles[k]*100)
			s.Y = append(s.Y, q)
		}
		p.Series = append(p.Series, s)
	}
	if len(p.Series) == 0 {
		return nil
	}
	p.XTicks = []float64{0, 25, 50, 75, 90, 99}
	return p.WriteFile(path)
}
