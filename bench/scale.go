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
	// Populate is how long it took to bring the population to Live.
	Populate time.Duration `json:"populate_ns"`
}

// runScale grows a population of live vmnic sandboxes (own netns, veth on
// one bridge, TAP, record) to 10, 100 and 1,000 and, at each size, times the
// ADD and DEL of one more sandbox, alternating with the baseline chain.
func (e *env) runScale(ctx context.Context) error {
	if !e.hasVmnic {
		return skipf("the vmnic plugin is not built (bin/vmnic)")
	}
	levels, samples := []int{10, 100, 1000}, 30
	if e.cfg.Quick {
		levels, samples = []int{10, 100}, 5
	}
	const br = "vmnbrb12"
	state := e.dir("vmnic-state-scale")
	vl, err := e.confList("vmnb-scale-vmnic", bridgePlugin(br, "10.215.0.0/20", e.dir("ipam")), vmnicPlugin(state))
	if err != nil {
		return err
	}
	bl, err := e.confList("vmnb-scale-base", bridgePlugin(br, "10.215.32.0/24", e.dir("ipam")))
	if err != nil {
		return err
	}
	var pop []*fixture.Netns
	defer func() {
		for _, ns := range pop {
			ns.Delete()
		}
		deleteBridge(br)
	}()

	res := &ScaleResult{Samples: samples}
	for _, live := range levels {
		t0 := time.Now()
		var err error
		pop, err = e.populate(ctx, pop, live, vl)
		if err != nil {
			return err
		}
		lvl := ScaleLevel{Live: live, Populate: time.Since(t0)}
		e.logf("scale: %d live sandboxes (populated in %s)", live, lvl.Populate.Round(time.Millisecond))
		var add, del, badd, bdel []time.Duration
		var logs []*timedexec.Log
		var firstErr error
		for s := 0; s < samples; s++ {
			do := func(vmnic bool) error {
				list, tag := bl, "base"
				if vmnic {
					list, tag = vl, "vmnic"
				}
				o, err := e.cycle(ctx, list, "scale", fmt.Sprintf("vmnb-scale-%s-%d-%d", tag, live, s), 1)
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
				if live == levels[len(levels)-1] {
					e.vmnicCalls = append(e.vmnicCalls, vmnicCall{context: fmt.Sprintf("%d live sandboxes", live), call: c, rec: rec, hasRec: ok})
				}
			}
		}
		lvl.VmnicAdd, lvl.VmnicDel = stats.Summarize(vadd), stats.Summarize(vdel)
		lvl.VmnicAddInProc, lvl.VmnicDelInProc = stats.Summarize(vain), stats.Summarize(vdin)
		e.logf("scale %d: chain ADD %s, vmnic ADD exec %s (own %s), errors %d", live,
			lvl.Add.Median.Round(time.Microsecond), lvl.VmnicAdd.Median.Round(time.Microsecond), lvl.VmnicAddInProc.Median.Round(time.Microsecond), lvl.Errors)
		res.Levels = append(res.Levels, lvl)
	}
	e.report.Scale = res
	return nil
}

// populate adds vmnic sandboxes until there are n (4 workers; not timed).
func (e *env) populate(ctx context.Context, pop []*fixture.Netns, n int, list *libcni.NetworkConfigList) ([]*fixture.Netns, error) {
	need := n - len(pop)
	if need <= 0 {
		return pop, nil
	}
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
				if err == nil {
					_, err = e.add(ctx, list, fmt.Sprintf("vmnb-pop-%d", i), ns.Path, []string{"eth0"}, &timedexec.Log{})
				}
				mu.Lock()
				if ns != nil {
					pop = append(pop, ns)
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
