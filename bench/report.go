package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmnic/vmnic/bench/internal/pngplot"
	"github.com/vmnic/vmnic/bench/internal/stats"
)

// Report is everything one run measured.
type Report struct {
	Quick       bool               `json:"quick"`
	Command     string             `json:"command"`
	PluginEnv   []string           `json:"plugin_env,omitempty"`
	Started     time.Time          `json:"started"`
	Duration    time.Duration      `json:"duration_ns"`
	Machine     Machine            `json:"machine"`
	Targets     []Target           `json:"targets"`
	ProcStart   *ProcStartResult   `json:"process_start,omitempty"`
	Cycle       *CycleResult       `json:"cycle,omitempty"`
	Steps       *StepsResult       `json:"steps,omitempty"`
	Engine      *EngineResult      `json:"engine,omitempty"`
	Concurrency *ConcurrencyResult `json:"concurrency,omitempty"`
	Scale       *ScaleResult       `json:"scale,omitempty"`
	Hotplug     *HotplugResult     `json:"hotplug,omitempty"`
	NRI         *NRIResult         `json:"nri,omitempty"`
	Teardown    *TeardownResult    `json:"teardown,omitempty"`
	Skipped     map[string]string  `json:"skipped,omitempty"`
	Errors      []string           `json:"errors,omitempty"`
	Plots       []string           `json:"plots,omitempty"`
}

// Target is one of the goals and how this run did.
type Target struct {
	Name     string `json:"name"`
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	// Status is "met", "missed" or "n/a" (not measured in this run).
	Status string `json:"status"`
}

// Plot file names (in the output directory).
const (
	PlotScale       = "latency-vs-live-sandboxes.png"
	PlotConcurrency = "latency-vs-concurrency.png"
)

// Section headings of report.md, in order; the test checks them.
var Headings = []string{
	"## Machine", "## Targets", "## Process start", "## ADD+DEL cycle", "## Steps inside vmnic", "## Engine in-process",
	"## Concurrent ADDs", "## Live sandboxes", "## Hot-plug", "## NRI hook", "## Sandbox teardown",
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e6) }

func (r *Report) evaluateTargets() {
	var ts []Target
	// 1. vmnic chain / baseline.
	t := Target{Name: "cycle ratio", Goal: "vmnic chain / baseline ≤ 1.15 (ADD+DEL, median)", Status: "n/a", Measured: "not measured"}
	if v := r.variant("vmnic"); v != nil && v.Cycle.N > 0 {
		t.Measured = fmt.Sprintf("%.3f (paired %.3f; tuning floor %.3f)", v.Ratio, v.RatioPaired, r.ratioOf("tuning"))
		t.Status = status(v.Ratio <= 1.15)
	}
	ts = append(ts, t)
	// 2. vmnic's own ADD median.
	t = Target{Name: "vmnic ADD", Goal: "vmnic's own ADD median ≤ 3 ms, not counting process start", Status: "n/a", Measured: "not measured"}
	if sc := r.stepContext("no VMM (cycle section)", "ADD"); sc != nil {
		if sc.Recorded > 0 {
			t.Measured = fmt.Sprintf("%s ms in-process (exec %s ms, process start %s ms)", ms(sc.InProc.Median), ms(sc.Exec.Median), ms(sc.ProcStart.Median))
			t.Status = status(sc.InProc.Median <= 3*time.Millisecond)
			if tm := r.stepContext("no VMM, state on tmpfs (cycle section)", "ADD"); tm != nil && tm.Recorded > 0 {
				t.Measured += fmt.Sprintf("; with the state dir on tmpfs %s ms", ms(tm.InProc.Median))
			}
		} else if floor := r.goFloor(); floor > 0 {
			own := sc.Exec.Median - floor
			t.Measured = fmt.Sprintf("≈ %s ms (exec %s ms minus the empty Go program's %s ms; the plugin writes no step times)", ms(own), ms(sc.Exec.Median), ms(floor))
			t.Status = status(own <= 3*time.Millisecond)
		}
	}
	ts = append(ts, t)
	// 2b. vmnic's ADD exec against tc-redirect-tap's (the stand-in).
	t = Target{Name: "ADD vs tc-redirect-tap", Goal: "vmnic's ADD exec ≤ peer-tcredirect's (median, same run)", Status: "n/a", Measured: "not measured"}
	if c := r.Cycle; c != nil {
		for _, a := range c.AddVsPeer {
			if a.Variant == "vmnic" {
				t.Measured = fmt.Sprintf("%s ms vs %s ms: ratio %.3f (paired %.3f)", ms(a.Add.Median), ms(a.PeerAdd.Median), a.Ratio, a.RatioPaired)
				t.Status = status(a.Ratio <= 1)
			}
		}
	}
	ts = append(ts, t)
	// 3. 1,000th sandbox vs 10th.
	t = Target{Name: "scale", Goal: "vmnic ADD with 1,000 live sandboxes = with 10 ± 20%", Status: "n/a", Measured: "not measured"}
	if r.Scale != nil {
		if big, small, ok := r.Scale.compare(); ok {
			ref := func(get func(ScaleLevel) time.Duration) time.Duration {
				var sum time.Duration
				for _, l := range small {
					sum += get(l)
				}
				return sum / time.Duration(len(small))
			}
			exec := func(l ScaleLevel) time.Duration { return l.VmnicAdd.Median }
			inproc := func(l ScaleLevel) time.Duration { return l.VmnicAddInProc.Median }
			ratio := stats.Ratio(big.VmnicAdd.Median, ref(exec))
			t.Measured = fmt.Sprintf("exec %s ms at %d vs %s ms at %d (mean of %d runs at %d: before growing and after shrinking back): ratio %.3f",
				ms(big.VmnicAdd.Median), big.Live, ms(ref(exec)), small[0].Live, len(small), small[0].Live, ratio)
			if big.VmnicAddInProc.N > 0 && small[0].VmnicAddInProc.N > 0 {
				t.Measured += fmt.Sprintf("; in-process %s vs %s ms: ratio %.3f", ms(big.VmnicAddInProc.Median), ms(ref(inproc)),
					stats.Ratio(big.VmnicAddInProc.Median, ref(inproc)))
			}
			t.Status = status(ratio >= 0.8 && ratio <= 1.2)
			if big.Live < 1000 {
				t.Measured += fmt.Sprintf(" (quick mode: largest population %d)", big.Live)
			}
		}
	}
	ts = append(ts, t)
	// 4. 64 concurrent ADDs.
	t = Target{Name: "concurrency", Goal: "no error at 64 concurrent ADDs (vmnic chain)", Status: "n/a", Measured: "not measured"}
	if r.Concurrency != nil {
		for _, l := range r.Concurrency.Levels {
			if l.Chain == "vmnic" && l.Concurrency == 64 {
				t.Measured = fmt.Sprintf("%d ADD errors, %d DEL errors in %d ADDs", l.AddErrors, l.DelErrors, l.Add.N+l.AddErrors)
				t.Status = status(l.AddErrors == 0 && l.DelErrors == 0)
			}
		}
	}
	ts = append(ts, t)
	ts = append(ts, r.nriTarget(), r.teardownTarget())
	r.Targets = ts
}

func status(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}

func (r *Report) variant(name string) *VariantResult {
	if r.Cycle == nil {
		return nil
	}
	for i := range r.Cycle.Variants {
		if r.Cycle.Variants[i].Name == name {
			return &r.Cycle.Variants[i]
		}
	}
	return nil
}

func (r *Report) ratioOf(name string) float64 {
	if v := r.variant(name); v != nil {
		return v.Ratio
	}
	return 0
}

func (r *Report) stepContext(ctx, cmd string) *StepContext {
	if r.Steps == nil {
		return nil
	}
	for i := range r.Steps.Contexts {
		if c := &r.Steps.Contexts[i]; c.Context == ctx && c.Cmd == cmd {
			return c
		}
	}
	return nil
}

func (r *Report) goFloor() time.Duration {
	if r.ProcStart == nil {
		return 0
	}
	for _, b := range r.ProcStart.Binaries {
		if b.Name == "empty Go program" {
			return b.Start.Median
		}
	}
	return 0
}

func (r *Report) write(dir string) error {
	if err := r.plot(dir); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.json"), append(data, '\n'), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.md"), []byte(r.Markdown()), 0o644)
}

func (r *Report) plot(dir string) error {
	r.Plots = nil
	if r.Scale != nil && len(r.Scale.Levels) > 0 {
		var xs, add, addP90, del, vadd, vin, badd []float64
		var bx, bvadd, bvin []float64
		for _, l := range r.Scale.Levels {
			if l.Phase != "grow" {
				bx = append(bx, float64(l.Live))
				bvadd = append(bvadd, float64(l.VmnicAdd.Median)/1e6)
				bvin = append(bvin, float64(l.VmnicAddInProc.Median)/1e6)
				continue
			}
			xs = append(xs, float64(l.Live))
			add = append(add, float64(l.Add.Median)/1e6)
			addP90 = append(addP90, float64(l.Add.P90)/1e6)
			del = append(del, float64(l.Del.Median)/1e6)
			vadd = append(vadd, float64(l.VmnicAdd.Median)/1e6)
			vin = append(vin, float64(l.VmnicAddInProc.Median)/1e6)
			badd = append(badd, float64(l.BaseAdd.Median)/1e6)
		}
		p := pngplot.Plot{Title: "ADD/DEL latency against live sandboxes (median)", XLabel: "live sandboxes (log scale)", YLabel: "ms", LogX: true,
			Series: []pngplot.Series{
				{Name: "vmnic chain ADD", X: xs, Y: add, Color: 0},
				{Name: "vmnic chain ADD p90", X: xs, Y: addP90, Color: 0, Dashed: true},
				{Name: "vmnic chain DEL", X: xs, Y: del, Color: 1},
				{Name: "baseline chain ADD", X: xs, Y: badd, Color: 2},
				{Name: "vmnic plugin ADD exec", X: xs, Y: vadd, Color: 3},
			}}
		if len(bx) > 0 {
			p.Series = append(p.Series, pngplot.Series{Name: "vmnic plugin ADD exec, after shrinking back", X: bx, Y: bvadd, Color: 3, Dashed: true})
		}
		if r.Scale.Levels[0].VmnicAddInProc.N > 0 {
			p.Series = append(p.Series, pngplot.Series{Name: "vmnic ADD in-process", X: xs, Y: vin, Color: 4})
			if len(bx) > 0 {
				p.Series = append(p.Series, pngplot.Series{Name: "vmnic ADD in-process, after shrinking back", X: bx, Y: bvin, Color: 4, Dashed: true})
			}
		}
		if err := p.WriteFile(filepath.Join(dir, PlotScale)); err != nil {
			return err
		}
		r.Plots = append(r.Plots, PlotScale)
	}
	if r.Concurrency != nil && len(r.Concurrency.Levels) > 0 {
		by := map[string][][2]float64{}
		var names []string
		add := func(name string, x float64, d time.Duration) {
			if d == 0 {
				return
			}
			if _, ok := by[name]; !ok {
				names = append(names, name)
			}
			by[name] = append(by[name], [2]float64{x, float64(d) / 1e6})
		}
		for _, l := range r.Concurrency.Levels {
			x := float64(l.Concurrency)
			add(l.Chain+" chain ADD median", x, l.Add.Median)
			add(l.Chain+" chain ADD p90", x, l.Add.P90)
			if l.Chain == "vmnic" {
				add("vmnic plugin ADD exec median", x, l.VmnicAdd.Median)
				add("vmnic ADD in-process median", x, l.VmnicAddInProc.Median)
			}
		}
		p := pngplot.Plot{Title: "ADD latency against concurrent ADDs", XLabel: "concurrent ADDs (separate sandboxes, log scale)", YLabel: "ms", LogX: true}
		colors := map[string]int{"baseline": 2, "vmnic": 0}
		for i, n := range names {
			s := pngplot.Series{Name: n}
			for _, pt := range by[n] {
				s.X, s.Y = append(s.X, pt[0]), append(s.Y, pt[1])
			}
			s.Color = 3 + i
			for prefix, c := range colors {
				if strings.HasPrefix(n, prefix+" chain") {
					s.Color = c
				}
			}
			s.Dashed = strings.HasSuffix(n, "p90")
			p.Series = append(p.Series, s)
		}
		if err := p.WriteFile(filepath.Join(dir, PlotConcurrency)); err != nil {
			return err
		}
		r.Plots = append(r.Plots, PlotConcurrency)
	}
	return nil
}

// Markdown renders the report.
func (r *Report) Markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	mode := "full"
	if r.Quick {
		mode = "quick (BENCH_QUICK=1)"
	}
	w("# vmnic benchmark\n\n")
	w("Mode: %s. Started %s, took %s. Command: `%s`.\n\n", mode, r.Started.Format(time.RFC3339), r.Duration.Round(time.Second), r.Command)
	w("Times are in milliseconds. \"exec\" is a plugin's whole exec as a runtime sees it (fork to wait); \"in-process\" is the plugin's own work between its first and last step timer (VMNIC_STEP_TIMES).\n\n")
	if len(r.PluginEnv) > 0 {
		w("**Experiment:** every plugin ran with `%s` added to its environment.\n\n", strings.Join(r.PluginEnv, " "))
	}
	for _, e := range r.Errors {
		w("**Error:** %s\n\n", e)
	}

	m := r.Machine
	w("## Machine\n\n")
	w("| | |\n|---|---|\n| CPU | %s (%d CPUs) |\n| Memory | %s |\n| Kernel | %s |\n| OS | %s |\n| Go | %s |\n| Load average at start | %s |\n| Load average at end | %s |\n\n",
		m.CPU, m.CPUs, m.MemTotal, m.Kernel, m.OS, m.Go, m.LoadStart, m.LoadEnd)

	w("## Targets\n\n| Target | Goal | Measured | Status |\n|---|---|---|---|\n")
	for _, t := range r.Targets {
		w("| %s | %s | %s | %s |\n", t.Name, t.Goal, t.Measured, t.Status)
	}
	w("\n")

	w("## Process start\n\n")
	if p := r.ProcStart; p != nil {
		w("Each binary exec'd %d times round-robin with `CNI_COMMAND=VERSION` (reads stdin, prints its versions, exits).\n\n", p.Runs)
		w("| Binary | What | Size (MB) | median | p90 |\n|---|---|---|---|---|\n")
		for _, bs := range p.Binaries {
			w("| %s | %s | %.1f | %s | %s |\n", bs.Name, bs.What, float64(bs.Size)/1e6, ms(bs.Start.Median), ms(bs.Start.P90))
		}
		if len(p.Inits) > 0 {
			w("\nSlowest package initialisers of `vmnic` (GODEBUG=inittrace=1, median of %d runs; all inits together: %s ms):\n\n| Package | clock (ms) | bytes |\n|---|---|---|\n", p.Runs, ms(p.InitTotal))
			for _, in := range p.Inits {
				w("| %s | %.3f | %d |\n", in.Package, float64(in.Clock)/1e6, in.Bytes)
			}
		}
	} else {
		r.skipped(&b, SecProcStart)
	}
	w("\n")

	w("## ADD+DEL cycle\n\n")
	if c := r.Cycle; c != nil {
		w("%d iterations (+%d warm-up); in each iteration every variant runs once, in an order rotated by one per iteration. Each cycle: a fresh netns (not timed), ADD of every NIC then DEL in reverse through libcni, which execs the plugins as a runtime does.\n\n", c.Iterations, c.Warmup)
		w("| Variant | Chain | NICs | cycle median | cycle p90 | ADD median | DEL median | ratio (median) | ratio (paired) | ratio (p90) | errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, v := range c.Variants {
			w("| %s | %s | %d | %s | %s | %s | %s | %.3f × %s | %.3f | %.3f | %d |\n", v.Name, v.Description, v.NICs,
				ms(v.Cycle.Median), ms(v.Cycle.P90), ms(v.Add.Median), ms(v.Del.Median), v.Ratio, v.Baseline, v.RatioPaired, v.RatioP90, v.Errors)
		}
		w("\nPer plugin exec (median / p90, per call):\n\n| Variant | Plugin | Command | calls | median | p90 |\n|---|---|---|---|---|---|\n")
		for _, v := range c.Variants {
			for _, p := range v.Plugins {
				w("| %s | %s | %s | %d | %s | %s |\n", v.Name, p.Plugin, p.Cmd, p.Time.N, ms(p.Time.Median), ms(p.Time.P90))
			}
		}
		if len(c.AddVsPeer) > 0 {
			w("\nvmnic's ADD exec against the tc-redirect-tap stand-in's (`peer-tcredirect`: one TAP with the veth's MTU, ingress qdiscs, u32 match-all mirred redirect both ways, no state file), same run:\n\n| Variant | plugin ADD median | peer ADD median | ratio (median) | ratio (paired) |\n|---|---|---|---|---|\n")
			for _, a := range c.AddVsPeer {
				w("| %s | %s | %s | %.3f | %.3f |\n", a.Variant, ms(a.Add.Median), ms(a.PeerAdd.Median), a.Ratio, a.RatioPaired)
			}
		}
		for _, v := range c.Variants {
			if v.FirstError != "" {
				w("\n%s first error: `%s`\n", v.Name, v.FirstError)
			}
		}
	} else {
		r.skipped(&b, SecCycle)
	}
	w("\n")

	w("## Steps inside vmnic\n\n")
	if s := r.Steps; s != nil {
		r.stepsMarkdown(&b)
	} else {
		r.skipped(&b, SecSteps)
	}
	w("\n")

	w("## Engine in-process\n\n")
	if en := r.Engine; en != nil {
		r.engineMarkdown(&b)
	} else {
		r.skipped(&b, SecEngine)
	}
	w("\n")

	w("## Concurrent ADDs\n\n")
	if c := r.Concurrency; c != nil {
		w("N fresh sandboxes; N ADDs released at the same instant, then N DELs. Latency is per ADD.\n\n")
		w("| Chain | concurrent | ADDs | ADD median | ADD p90 | ADD max | vmnic exec median | vmnic in-process median | round wall | ADD errors | DEL errors |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, l := range c.Levels {
			w("| %s | %d | %d | %s | %s | %s | %s | %s | %s | %d | %d |\n", l.Chain, l.Concurrency, l.Add.N+l.AddErrors,
				ms(l.Add.Median), ms(l.Add.P90), ms(l.Add.Max), ms(l.VmnicAdd.Median), ms(l.VmnicAddInProc.Median), ms(l.Wall), l.AddErrors, l.DelErrors)
		}
		for _, l := range c.Levels {
			if l.FirstError != "" {
				w("\n%s x%d first error: `%s`\n", l.Chain, l.Concurrency, l.FirstError)
			}
		}
		w("\n![ADD latency against concurrency](%s)\n", PlotConcurrency)
	} else {
		r.skipped(&b, SecConcurrency)
	}
	w("\n")

	w("## Live sandboxes\n\n")
	if s := r.Scale; s != nil {
		w("A population of live vmnic sandboxes (own netns, veth on one bridge, TAP, record) is grown, then deleted back down (CNI DEL of each); at each size %d more sandboxes are added and deleted one at a time, alternating with the baseline chain on the same bridge. The last row, back at the smallest size, tells drift (other load on the machine) apart from an effect of the population.\n\n", s.Samples)
		w("| live | phase | chain ADD median | chain ADD p90 | chain DEL median | baseline ADD median | vmnic ADD exec | vmnic ADD in-process | vmnic DEL exec | vmnic DEL in-process | errors | resize (s) | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, l := range s.Levels {
			w("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %.1f | %s |\n", l.Live, l.Phase, ms(l.Add.Median), ms(l.Add.P90), ms(l.Del.Median), ms(l.BaseAdd.Median),
				ms(l.VmnicAdd.Median), ms(l.VmnicAddInProc.Median), ms(l.VmnicDel.Median), ms(l.VmnicDelInProc.Median), l.Errors, l.Resize.Seconds(), l.Load)
		}
		for _, l := range s.Levels {
			if l.FirstError != "" {
				w("\n%d live (%s) first error: `%s`\n", l.Live, l.Phase, l.FirstError)
			}
		}
		w("\n![latency against live sandboxes](%s)\n", PlotScale)
	} else {
		r.skipped(&b, SecScale)
	}
	w("\n")

	w("## Hot-plug\n\n")
	if h := r.Hotplug; h != nil {
		r.hotplugMarkdown(&b)
	} else {
		r.skipped(&b, SecHotplug)
	}
	w("\n")

	w("## NRI hook\n\n")
	if n := r.NRI; n != nil {
		r.nriMarkdown(&b)
	} else {
		r.skipped(&b, SecNRI)
	}
	w("\n")

	w("## Sandbox teardown\n\n")
	if t := r.Teardown; t != nil {
		r.teardownMarkdown(&b)
	} else {
		r.skipped(&b, SecTeardown)
	}
	w("\n")
	return b.String()
}

func (r *Report) skipped(b *strings.Builder, section string) {
	reason := r.Skipped[section]
	if reason == "" {
		reason = "failed (see errors above)"
	}
	fmt.Fprintf(b, "_Skipped: %s._\n", reason)
}

// compare returns the largest population's level and the levels at the
// smallest population (before growing and after shrinking back).
func (s *ScaleResult) compare() (big ScaleLevel, small []ScaleLevel, ok bool) {
	if len(s.Levels) < 2 {
		return big, nil, false
	}
	lo, hi := s.Levels[0].Live, 0
	for _, l := range s.Levels {
		lo, hi = min(lo, l.Live), max(hi, l.Live)
	}
	for _, l := range s.Levels {
		switch {
		case l.Live == hi && l.Phase == "grow":
			big = l
		case l.Live == lo && l.VmnicAdd.N > 0:
			small = append(small, l)
		}
	}
	return big, small, big.VmnicAdd.N > 0 && len(small) > 0
}
