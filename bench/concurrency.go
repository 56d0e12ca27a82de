package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/bench/internal/fixture"
	"github.com/vmnic/vmnic/bench/internal/stats"
	"github.com/vmnic/vmnic/bench/internal/timedexec"
)

// ConcurrencyResult is ADD latency with many ADDs (separate sandboxes) at once.
type ConcurrencyResult struct {
	Levels []ConcurrencyLevel `json:"levels"`
}

// ConcurrencyLevel is one chain at one concurrency.
type ConcurrencyLevel struct {
	Chain       string        `json:"chain"`
	Concurrency int           `json:"concurrency"`
	Rounds      int           `json:"rounds"`
	Add         stats.Summary `json:"add"`
	Del         stats.Summary `json:"del"`
	// VmnicAdd is the vmnic plugin's exec within the ADD (vmnic chain only).
	VmnicAdd stats.Summary `json:"vmnic_add"`
	// VmnicAddInProc is vmnic's own ADD work, without process start.
	VmnicAddInProc stats.Summary `json:"vmnic_add_in_proc"`
	// Wall is the median time for a whole round of ADDs to finish.
	Wall       time.Duration `json:"wall_ns"`
	AddErrors  int           `json:"add_errors"`
	DelErrors  int           `json:"del_errors"`
	FirstError string        `json:"first_error,omitempty"`
}

type chain struct {
	name string
	list *libcni.NetworkConfigList
}

// runConcurrency starts N ADDs in N fresh sandboxes at the same instant,
// then DELs them all at once, for N in 1, 8, 32, 64, for the baseline
// chain and the vmnic chain in alternation.
func (e *env) runConcurrency(ctx context.Context) error {
	type level struct{ n, rounds int }
	levels := []level{{1, 32}, {8, 8}, {32, 3}, {64, 2}}
	if e.cfg.Quick {
		levels = []level{{1, 3}, {8, 1}, {32, 1}, {64, 1}}
	}
	base, err := e.confList("vmnb-conc-base", bridgePlugin("vmnbrb10", "10.205.10.0/24", e.dir("ipam")))
	if err != nil {
		return err
	}
	chains := []chain{{"baseline", base}}
	if e.hasVmnic {
		vl, err := e.confList("vmnb-conc-vmnic", bridgePlugin("vmnbrb11", "10.205.11.0/24", e.dir("ipam")), vmnicPlugin(e.stateDir("vmnic-state")))
		if err != nil {
			return err
		}
		chains = append(chains, chain{"vmnic", vl})
	}
	defer deleteBridge("vmnbrb10")
	defer deleteBridge("vmnbrb11")

	// Warm up each chain (creates its bridge, loads the binaries' pages).
	for _, c := range chains {
		if _, err := e.concurrentRound(ctx, c, 2, -1); err != nil {
			return err
		}
	}
	res := &ConcurrencyResult{}
	for _, lv := range levels {
		type acc struct {
			add, del, vadd, vin []time.Duration
			walls               []time.Duration
			addErr, delErr      []error
		}
		accs := make([]acc, len(chains))
		for r := 0; r < lv.rounds; r++ {
			for k := range chains {
				ci := (k + r) % len(chains)
				c := chains[ci]
				rr, err := e.concurrentRound(ctx, c, lv.n, r)
				if err != nil {
					return err
				}
				a := &accs[ci]
				a.add = append(a.add, rr.add...)
				a.del = append(a.del, rr.del...)
				a.walls = append(a.walls, rr.wall)
				a.addErr = append(a.addErr, rr.addErr...)
				a.delErr = append(a.delErr, rr.delErr...)
				ix := e.loadSteps()
				for _, call := range rr.calls {
					if call.Plugin != "vmnic" || call.Cmd != "ADD" {
						continue
					}
					a.vadd = append(a.vadd, call.Duration())
					rec, ok := ix.find(call)
					if ok {
						a.vin = append(a.vin, time.Duration(rec.TotalNS))
					}
					if lv.n == 64 {
						e.vmnicCalls = append(e.vmnicCalls, vmnicCall{context: "64 concurrent ADDs", call: call, rec: rec, hasRec: ok})
					}
				}
			}
		}
		for ci, c := range chains {
			a := accs[ci]
			cl := ConcurrencyLevel{Chain: c.name, Concurrency: lv.n, Rounds: lv.rounds,
				Add: stats.Summarize(a.add), Del: stats.Summarize(a.del),
				VmnicAdd: stats.Summarize(a.vadd), VmnicAddInProc: stats.Summarize(a.vin),
				Wall: stats.Summarize(a.walls).Median, AddErrors: len(a.addErr), DelErrors: len(a.delErr)}
			if all := append(a.addErr, a.delErr...); len(all) > 0 {
				cl.FirstError = all[0].Error()
			}
			res.Levels = append(res.Levels, cl)
			e.logf("concurrency %s x%d: ADD median %s p90 %s, errors %d/%d", c.name, lv.n,
				cl.Add.Median.Round(time.Microsecond), cl.Add.P90.Round(time.Microsecond), cl.AddErrors, cl.DelErrors)
		}
	}
	e.report.Concurrency = res
	return nil
}

type roundResult struct {
	add, del       []time.Duration
	wall           time.Duration
	addErr, delErr []error
	calls          []timedexec.Call
}

// concurrentRound makes n netns, releases n ADDs at once, then n DELs at once.
func (e *env) concurrentRound(ctx context.Context, c chain, n, round int) (roundResult, error) {
	nss := make([]*fixture.Netns, 0, n)
	defer func() {
		for _, ns := range nss {
			ns.Delete()
		}
	}()
	for i := 0; i < n; i++ {
		ns, err := fixture.NewNetns("conc")
		if err != nil {
			return roundResult{}, err
		}
		nss = append(nss, ns)
	}
	var rr roundResult
	var mu sync.Mutex
	logs := make([]*timedexec.Log, n)
	ids := make([]string, n)
	added := make([]bool, n)
	run := func(del bool) {
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			if del && !added[i] {
				continue
			}
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				<-start
				ifs := []string{"eth0"}
				var d time.Duration
				var err error
				if del {
					d, err = e.del(ctx, c.list, ids[i], nss[i].Path, ifs, logs[i])
				} else {
					d, err = e.add(ctx, c.list, ids[i], nss[i].Path, ifs, logs[i])
				}
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil && del:
					rr.delErr = append(rr.delErr, err)
				case err != nil:
					rr.addErr = append(rr.addErr, err)
					added[i] = true // DEL what a failed ADD left behind
				case del:
					rr.del = append(rr.del, d)
				default:
					rr.add = append(rr.add, d)
					added[i] = true
				}
			}(i)
		}
		t0 := time.Now()
		close(start)
		wg.Wait()
		if !del {
			rr.wall = time.Since(t0)
		}
	}
	for i := range logs {
		logs[i] = &timedexec.Log{}
		ids[i] = fmt.Sprintf("vmnb-conc-%s-%d-%d-%d", c.name, n, round+1, i)
	}
	run(false)
	run(true)
	for _, l := range logs {
		rr.calls = append(rr.calls, l.Calls()...)
	}
	if err := ctx.Err(); err != nil {
		return rr, errors.Join(err)
	}
	return rr, nil
}
