package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/vmnic/vmnic/bench/internal/stats"
	"github.com/vmnic/vmnic/bench/internal/timedexec"
	"github.com/vmnic/vmnic/internal/steptime"
)

// vmnicCall is one exec of the vmnic plugin and, when the plugin recorded
// them (VMNIC_STEP_TIMES), its step times.
type vmnicCall struct {
	context string
	call    timedexec.Call
	rec     steptime.Record
	hasRec  bool
}

// StepsResult breaks vmnic's calls down into steps.
type StepsResult struct {
	Contexts []StepContext `json:"contexts"`
}

// StepContext is vmnic's calls of one command in one situation.
type StepContext struct {
	Context string `json:"context"`
	Cmd     string `json:"cmd"`
	Calls   int    `json:"calls"`
	// Recorded is how many calls wrote step times.
	Recorded int `json:"recorded"`
	// Exec is the whole exec, fork to wait, as the runtime sees it.
	Exec stats.Summary `json:"exec"`
	// ProcStart is from before fork to the plugin's first step timer.
	ProcStart stats.Summary `json:"proc_start"`
	// InProc is the plugin's own work: first timer to the last.
	InProc stats.Summary `json:"in_proc"`
	// Exit is from the last timer until the runtime's wait returned.
	Exit  stats.Summary `json:"exit"`
	Steps []StepTime    `json:"steps"`
}

// StepTime is one step's time over the calls (calls that lack the step
// count as zero).
type StepTime struct {
	Name string        `json:"name"`
	Time stats.Summary `json:"time"`
	// Share is the step's mean time over the mean in-process time.
	Share float64 `json:"share"`
}

// runSteps summarises the vmnic calls the other sections collected.
func (e *env) runSteps(context.Context) error {
	if !e.hasVmnic {
		return skipf("the vmnic plugin is not built (bin/vmnic)")
	}
	if len(e.vmnicCalls) == 0 {
		return skipf("no section that runs vmnic was selected")
	}
	type key struct{ ctx, cmd string }
	groups := map[key][]vmnicCall{}
	var order []key
	for _, c := range e.vmnicCalls {
		k := key{c.context, c.call.Cmd}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], c)
	}
	res := &StepsResult{}
	for _, k := range order {
		calls := groups[k]
		sc := StepContext{Context: k.ctx, Cmd: k.cmd, Calls: len(calls)}
		var exec, start, inproc, exit []time.Duration
		stepDur := map[string][]time.Duration{}
		var names []string
		for _, c := range calls {
			exec = append(exec, c.call.Duration())
			if !c.hasRec {
				continue
			}
			sc.Recorded++
			start = append(start, time.Duration(c.rec.StartUnix-c.call.Start.UnixNano()))
			inproc = append(inproc, time.Duration(c.rec.TotalNS))
			exit = append(exit, time.Duration(c.call.End.UnixNano()-c.rec.EndUnix))
			per := map[string]time.Duration{}
			for _, s := range c.rec.Steps {
				if _, ok := stepDur[s.Name]; !ok {
					stepDur[s.Name] = nil
					names = append(names, s.Name)
				}
				per[s.Name] += time.Duration(s.NS)
			}
			for _, n := range names {
				stepDur[n] = append(stepDur[n], per[n])
			}
		}
		sc.Exec, sc.ProcStart, sc.InProc, sc.Exit = stats.Summarize(exec), stats.Summarize(start), stats.Summarize(inproc), stats.Summarize(exit)
		for _, n := range names {
			d := stepDur[n]
			// Calls recorded before the step first appeared count as zero.
			for len(d) < sc.Recorded {
				d = append([]time.Duration{0}, d...)
			}
			st := StepTime{Name: n, Time: stats.Summarize(d)}
			st.Share = stats.Ratio(st.Time.Mean, sc.InProc.Mean)
			sc.Steps = append(sc.Steps, st)
		}
		res.Contexts = append(res.Contexts, sc)
	}
	e.report.Steps = res
	return nil
}

func (r *Report) stepsMarkdown(b *strings.Builder) {
	s := r.Steps
	b.WriteString("Every vmnic exec the other sections made, by situation. Process start = fork to the plugin's first step timer (exec, Go runtime and package init, skel reading env and stdin); in-process = first to last timer; exit = last timer to the runtime's wait returning.\n\n")
	b.WriteString("| Situation | cmd | calls | exec median | exec p90 | process start | in-process median | in-process p90 | exit |\n|---|---|---|---|---|---|---|---|---|\n")
	opt := func(c StepContext, d time.Duration) string {
		if c.Recorded == 0 {
			return "—"
		}
		return ms(d)
	}
	for _, c := range s.Contexts {
		fmt.Fprintf(b, "| %s | %s | %d | %s | %s | %s | %s | %s | %s |\n", c.Context, c.Cmd, c.Calls, ms(c.Exec.Median), ms(c.Exec.P90),
			opt(c, c.ProcStart.Median), opt(c, c.InProc.Median), opt(c, c.InProc.P90), opt(c, c.Exit.Median))
	}
	for _, cmd := range []string{"ADD", "DEL"} {
		var cols []StepContext
		var names []string
		seen := map[string]bool{}
		for _, c := range s.Contexts {
			if c.Cmd != cmd || c.Recorded == 0 {
				continue
			}
			cols = append(cols, c)
			for _, st := range c.Steps {
				if !seen[st.Name] {
					seen[st.Name] = true
					names = append(names, st.Name)
				}
			}
		}
		if len(cols) == 0 {
			continue
		}
		fmt.Fprintf(b, "\nSteps of %s, median ms (share of the mean in-process time):\n\n| step |", cmd)
		for _, c := range cols {
			fmt.Fprintf(b, " %s |", c.Context)
		}
		b.WriteString("\n|---|")
		for range cols {
			b.WriteString("---|")
		}
		b.WriteString("\n")
		for _, n := range names {
			fmt.Fprintf(b, "| %s |", n)
			for _, c := range cols {
				cell := "—"
				for _, st := range c.Steps {
					if st.Name == n {
						cell = fmt.Sprintf("%s (%.0f%%)", ms(st.Time.Median), 100*st.Share)
					}
				}
				fmt.Fprintf(b, " %s |", cell)
			}
			b.WriteString("\n")
		}
	}
	if len(s.Contexts) > 0 && s.Contexts[0].Recorded == 0 {
		b.WriteString("\nThe vmnic plugin wrote no step times (it does not call internal/steptime yet).\n")
	}
}
