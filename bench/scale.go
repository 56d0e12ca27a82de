package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/bench/internal/fixture"
	"github.com/vmnic/vmnic/bench/internal/stats"
	"github.com/vmnic/vmnic/bench/internal/timedexec"
)

// ScaleResult is ADD and DEL cost with many live sandboxes.
type ScaleResult struct {
	Samples int          `json:"samples"`
	Levels  []ScaleLevel `json:"levels"`
}

// ScaleLevel is the figures at one population.
type ScaleLevel struct {
	Live int `json:"live"`
	// Phase is "grow" on the way up and "shrink" after the population
	// was brought back down (the drift check).
	Phase string `json:"phase"`
	// Chain ADD/DEL of the vmnic chain (bridge + host-local + vmnic).
	Add stats.Summary `json:"add"`
	Del stats.Summary `json:"del"`
	// The baseline chain (bridge + host-local) on the same bridge.
	BaseAdd stats.Summary `json:"base_add"`
	BaseDel stats.Summary `json:"base_del"`
	// The vmnic plugin's exec, and its own work without process start.
	VmnicAdd       stats.Summary `json:"vmnic_add"`
	VmnicDel       stats.Summary `json:"vmnic_del"`
	VmnicAddInProc stats.Summary `json:"vmnic_add_in_proc"`
	VmnicDelInProc stats.Summary `json:"vmnic_del_in_proc"`
	Errors         int           `json:"errors"`
	FirstError     string        `json:"first_error,omitempty"`
	// Resize is how long it took to bring the population to Live (not timed
	// in the figures).
	Resize time.Duration `json:"resize_ns"`
	Load   string        `json:"load"`
}

type popEntry struct {
	ns *fixture.Netns
	id string
}

// runScale grows a population of live vmnic sandboxes (own netns, veth on
// one bridge, TAP, record) to 10, 100 and 1,000, then deletes it back down
// to 10 (CNI DEL of each); at each size it times the ADD and DEL of one
// more sandbox, alternating with the baseline chain. The second 10 tells
// drift (other load on the machine) apart from an effect of the population.
func (e *env) runScale(ctx context.Context) error {
	if !e.hasVmnic {
		return skipf("the vmnic plugin is not built (bin/vmnic)")
	}
	levels, samples, settle := []int{10, 100, 1000, 10}, 30, 3*time.Second
	if e.cfg.Quick {
		levels, samples, settle = []int{10, 100, 10}, 5, 500*time.Millisecond
	}
	const br = "vmnbrb12"
	state := e.stateDir("vmnic-state-scale")
	vl, err := e.confList("vmnb-scale-vmnic", bridgePlugin(br, "10.215.0.0/20", e.dir("ipam")), vmnicPlugin(state))
	if err != nil {
		return err
	}
	bl, err := e.confList("vmnb-scale-base", bridgePlugin(br, "10.215.32.0/24", e.dir("ipam")))
	if err != nil {
		return err
	}
	var pop []popEntry
	defer func() {
		for _, p := range pop {
			p.ns.Delete()
		}
		deleteBridge(br)
	}()

	res := &ScaleResult{Samples: samples}
	phase, peak := "grow", 0
	for _, live := range levels {
		if live < peak {
			phase = "shrink"
		}
		peak = max(peak, live)
		t0 := time.Now()
		var err error
		if live >= len(pop) {
			pop, err = e.populate(ctx, pop, live, vl)
		} else {
			pop, err = e.depopulate(ctx, pop, live, vl)
		}
		if err != nil {
			return err
		}
		resize := time.Since(t0)
		// Let the kernel finish the deferred work of the resize (freeing
		// namespaces, RCU callbacks) before measuring.
		time.Sleep(settle)
		lvl := ScaleLevel{Live: live, Phase: phase, Resize: resize, Load: loadAvg()}
		e.logf("scale: %d live sandboxes (%s in %s)", live, phase, lvl.Resize.Round(time.Millisecond))
		var add, del, badd, bdel []time.Duration
		var logs []*timedexec.Log
		var firstErr error
		for s := 0; s < samples; s++ {
			do := func(vmnic bool) error {
				list, tag := bl, "base"
				if vmnic {
					list, tag = vl, "vmnic"
				}
				o, err := e.cycle(ctx, list, "scale", fmt.Sprintf("vmnb-scale-%s-%s-%d-%d", tag, phase, live, s), 1)
				if err != nil {
					return err
				}
				if oerr := o.err(); oerr != nil {
					lvl.Errors++
					if firstErr == nil {
						firstErr = oerr
					}
					return nil
				}
				if vmnic {
					add, del = append(add, o.Add), append(del, o.Del)
					logs = append(logs, o.Log)
				} else {
					badd, bdel = append(badd, o.Add), append(bdel, o.Del)
				}
				return nil
			}
			if err := do(s%2 == 0); err != nil {
				return err
			}
			if err := do(s%2 != 0); err != nil {
				return err
			}
		}
		lvl.Add, lvl.Del, lvl.BaseAdd, lvl.BaseDel = stats.Summarize(add), stats.Summarize(del), stats.Summarize(badd), stats.Summarize(bdel)
		if firstErr != nil {
			lvl.FirstError = firstErr.Error()
		}
		ix := e.loadSteps()
		var vadd, vdel, vain, vdin []time.Duration
		for _, l := range logs {
			for _, c := range l.Calls() {
				if c.Plugin != "vmnic" {
					continue
				}
				rec, ok := ix.find(c)
				switch c.Cmd {
				case "ADD":
					vadd = append(vadd, c.Duration())
					if ok {
						vain = append(vain, time.Duration(rec.TotalNS))
					}
				case "DEL":
					vdel = append(vdel, c.Duration())
					if ok {
						vdin = append(vdin, time.Duration(rec.TotalNS))
					}
				}
				if phase == "grow" && (live == maxInt(levels) || live == levels[0]) {
					e.vmnicCalls = append(e.vmnicCalls, vmnicCall{context: fmt.Sprintf("%d live sandboxes", live), call: c, rec: rec, hasRec: ok})
				}
			}
		}
		lvl.VmnicAdd, lvl.VmnicDel = stats.Summarize(vadd), stats.Summarize(vdel)
		lvl.VmnicAddInProc, lvl.VmnicDelInProc = stats.Summarize(vain), stats.Summarize(vdin)
		e.logf("scale %d (%s): chain ADD %s, vmnic ADD exec %s (own %s), errors %d, load %s", live, phase,
			lvl.Add.Median.Round(time.Microsecond), lvl.VmnicAdd.Median.Round(time.Microsecond), lvl.VmnicAddInProc.Median.Round(time.Microsecond), lvl.Errors, lvl.Load)
		res.Levels = append(res.Levels, lvl)
	}
	e.report.Scale = res
	return nil
}

func maxInt(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// populate adds vmnic sandboxes until there are n (4 workers; not timed).
func (e *env) populate(ctx context.Context, pop []popEntry, n int, list *libcni.NetworkConfigList) ([]popEntry, error) {
	start := len(pop)
	var mu sync.Mutex
	var firstErr error
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ns, err := fixture.NewNetns("pop")
				id := fmt.Sprintf("vmnb-pop-%d-%d", time.Now().UnixNano(), i)
				if err == nil {
					_, err = e.add(ctx, list, id, ns.Path, []string{"eth0"}, &timedexec.Log{})
				}
				mu.Lock()
				if ns != nil {
					pop = append(pop, popEntry{ns, id})
				}
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	for i := start; i < n; i++ {
		mu.Lock()
		stop := firstErr != nil
		mu.Unlock()
		if stop || ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return pop, fmt.Errorf("populate %d sandboxes: %w", n, firstErr)
	}
	return pop, ctx.Err()
}

// depopulate DELs (CNI DEL, then netns removal) sandboxes until n are left.
func (e *env) depopulate(ctx context.Context, pop []popEntry, n int, list *libcni.NetworkConfigList) ([]popEntry, error) {
	gone := pop[n:]
	var mu sync.Mutex
	var firstErr error
	next := make(chan popEntry)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range next {
				_, err := e.del(ctx, list, p.id, p.ns.Path, []string{"eth0"}, &timedexec.Log{})
				if derr := p.ns.Delete(); err == nil {
					err = derr
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, p := range gone {
		next <- p
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return pop[:n], fmt.Errorf("delete sandboxes down to %d: %w", n, firstErr)
	}
	return pop[:n], ctx.Err()
}
