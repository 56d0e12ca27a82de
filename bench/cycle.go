package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/bench/internal/stats"
	"github.com/vmnic/vmnic/bench/internal/timedexec"
)

// CycleResult compares the ADD+DEL cycle of the variants.
type CycleResult struct {
	Iterations int             `json:"iterations"`
	Warmup     int             `json:"warmup"`
	Variants   []VariantResult `json:"variants"`
	// AddVsPeer compares vmnic's ADD exec (the plugin's own exec, as the
	// runtime sees it) with the tc-redirect-tap stand-in's, per variant.
	AddVsPeer []AddRatio `json:"add_vs_peer,omitempty"`
}

// AddRatio is one vmnic variant's ADD exec against the peer's
// (peer-tcredirect, the tc-redirect-tap stand-in) in the same run.
type AddRatio struct {
	Variant string        `json:"variant"`
	Plugin  string        `json:"plugin"`
	Add     stats.Summary `json:"add"`
	PeerAdd stats.Summary `json:"peer_add"`
	// Ratio is the median ADD exec over the peer's median ADD exec.
	Ratio float64 `json:"ratio"`
	// RatioPaired is the median over iterations of the ratio of the two
	// execs of the same iteration.
	RatioPaired float64 `json:"ratio_paired"`
}

// VariantResult is one variant's figures.
type VariantResult struct {
	Name        string        `json:"name"`
	Description string        `json:"description"`
	NICs        int           `json:"nics"`
	Baseline    string        `json:"baseline"`
	Cycle       stats.Summary `json:"cycle"`
	Add         stats.Summary `json:"add"`
	Del         stats.Summary `json:"del"`
	// Ratio is this variant's median cycle over its baseline's median cycle.
	Ratio float64 `json:"ratio"`
	// RatioPaired is the median, over iterations, of this variant's cycle
	// over the baseline's cycle of the same iteration (robust to drift).
	RatioPaired float64 `json:"ratio_paired"`
	// RatioP90 is this variant's p90 cycle over its baseline's p90 cycle.
	RatioP90   float64      `json:"ratio_p90"`
	Errors     int          `json:"errors"`
	FirstError string       `json:"first_error,omitempty"`
	Plugins    []PluginTime `json:"plugins"`
}

// PluginTime is the exec time of one plugin for one command, per call.
type PluginTime struct {
	Plugin string        `json:"plugin"`
	Cmd    string        `json:"cmd"`
	Time   stats.Summary `json:"time"`
}

type variant struct {
	name, desc, baseline string
	nics                 int
	list                 *libcni.NetworkConfigList
	needsVmnic           bool
}

func (e *env) cycleVariants() ([]*variant, error) {
	type spec struct {
		name, desc, baseline string
		nics                 int
		vmnic                bool
		plugins              func(i int) []pluginConf
	}
	br := func(i int) pluginConf {
		return bridgePlugin(fmt.Sprintf("vmnbrb%d", i), fmt.Sprintf("10.205.%d.0/24", i), e.dir("ipam"))
	}
	specs := []spec{
		{"baseline", "bridge + host-local", "baseline", 1, false, func(i int) []pluginConf { return []pluginConf{br(i)} }},
		{"tuning", "bridge + host-local + tuning (changes nothing)", "baseline", 1, false,
			func(i int) []pluginConf { return []pluginConf{br(i), tuningNoop(e.dir("tuning"))} }},
		{"vmnic", "bridge + host-local + vmnic, 1 NIC", "baseline", 1, true,
			func(i int) []pluginConf { return []pluginConf{br(i), vmnicPlugin(e.stateDir("vmnic-state"))} }},
		{"vmnic-fsync", "bridge + host-local + vmnic, 1 NIC, `\"fsync\": true` (durable records)", "baseline", 1, true,
			func(i int) []pluginConf {
				p := vmnicPlugin(e.stateDir("vmnic-state"))
				p["fsync"] = true
				return []pluginConf{br(i), p}
			}},
		{"vmnic-tmpfs", "bridge + host-local + vmnic, 1 NIC, `stateDir` on tmpfs (as under /run on a node)", "baseline", 1, true,
			func(i int) []pluginConf { return []pluginConf{br(i), vmnicPlugin(e.shmDir("vmnic-state"))} }},
		{"baseline-4nic", "bridge + host-local, 4 NICs in one sandbox", "baseline-4nic", 4, false,
			func(i int) []pluginConf { return []pluginConf{br(i)} }},
		{"vmnic-4nic", "bridge + host-local + vmnic, 4 NICs in one sandbox", "baseline-4nic", 4, true,
			func(i int) []pluginConf { return []pluginConf{br(i), vmnicPlugin(e.stateDir("vmnic-state"))} }},
		{"vmnic-prev", "bridge + host-local + the previous vmnic plugin (`vmnic-prev` in the bin dir), 1 NIC", "baseline", 1, true,
			func(i int) []pluginConf {
				p := vmnicPlugin(e.stateDir("vmnic-prev-state"))
				p["type"] = prevVmnic
				return []pluginConf{br(i), p}
			}},
		{peerVariant, "bridge + host-local + peer-tcredirect (tc-redirect-tap's ADD, bench/cmd/peer-tcredirect)", "baseline", 1, false,
			func(i int) []pluginConf { return []pluginConf{br(i), {"type": peerPlugin}} }},
		{"tap", "reference tap plugin + host-local", "baseline", 1, false,
			func(i int) []pluginConf {
				return []pluginConf{tapPlugin(fmt.Sprintf("10.205.%d.0/24", i), e.dir("ipam"))}
			}},
	}
	var out []*variant
	for i, s := range specs {
		if s.vmnic && !e.hasVmnic || s.name == "vmnic-tmpfs" && e.shm == "" ||
			s.name == "vmnic-prev" && !e.hasPrev || s.name == peerVariant && !e.hasPeer {
			continue
		}
		list, err := e.confList("vmnb-"+s.name, s.plugins(i)...)
		if err != nil {
			return nil, err
		}
		out = append(out, &variant{name: s.name, desc: s.desc, baseline: s.baseline, nics: s.nics, list: list, needsVmnic: s.vmnic})
	}
	return out, nil
}

// runCycle measures the ADD+DEL cycle of every variant, round-robin: in
// iteration i the variants run in an order rotated by i, so drift and
// position effects hit all of them alike.
func (e *env) runCycle(ctx context.Context) error {
	iters, warm := 100, 3
	if e.cfg.Quick {
		iters, warm = 8, 1
	}
	if e.cfg.Iterations > 0 {
		iters = e.cfg.Iterations
	}
	vars, err := e.cycleVariants()
	if err != nil {
		return err
	}
	defer e.deleteBridges(len(vars) + 1)

	type sample struct {
		cycle, add, del time.Duration
		calls           []timedexec.Call
	}
	samples := make(map[string][]sample)
	errs := make(map[string][]error)
	e.logf("cycle: %d variants x %d iterations (+%d warm-up)", len(vars), iters, warm)
	for it := -warm; it < iters; it++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		for k := range vars {
			v := vars[(k+max(it, 0))%len(vars)]
			id := fmt.Sprintf("vmnb-cyc-%s-%d", v.name, it+warm)
			o, err := e.cycle(ctx, v.list, "cyc", id, v.nics)
			if err != nil {
				return err
			}
			if it < 0 {
				continue
			}
			if oerr := o.err(); oerr != nil {
				errs[v.name] = append(errs[v.name], oerr)
				continue
			}
			samples[v.name] = append(samples[v.name], sample{o.Add + o.Del, o.Add, o.Del, o.Log.Calls()})
		}
		if it >= 0 && (it+1)%20 == 0 {
			e.logf("cycle: %d/%d iterations", it+1, iters)
		}
	}

	res := &CycleResult{Iterations: iters, Warmup: warm}
	medians := map[string]stats.Summary{}
	for _, v := range vars {
		var cyc, add, del []time.Duration
		per := map[string][]time.Duration{}
		var order []string
		for _, s := range samples[v.name] {
			cyc, add, del = append(cyc, s.cycle), append(add, s.add), append(del, s.del)
			for _, c := range s.calls {
				k := c.Plugin + " " + c.Cmd
				if _, ok := per[k]; !ok {
					order = append(order, k)
				}
				per[k] = append(per[k], c.Duration())
			}
		}
		vr := VariantResult{Name: v.name, Description: v.desc, NICs: v.nics, Baseline: v.baseline,
			Cycle: stats.Summarize(cyc), Add: stats.Summarize(add), Del: stats.Summarize(del), Errors: len(errs[v.name])}
		if len(errs[v.name]) > 0 {
			vr.FirstError = errs[v.name][0].Error()
		}
		for _, k := range order {
			var plugin, cmd string
			fmt.Sscan(k, &plugin, &cmd)
			vr.Plugins = append(vr.Plugins, PluginTime{Plugin: plugin, Cmd: cmd, Time: stats.Summarize(per[k])})
		}
		medians[v.name] = vr.Cycle
		res.Variants = append(res.Variants, vr)
	}
	// Ratios, including the paired per-iteration ratio.
	for i := range res.Variants {
		vr := &res.Variants[i]
		base := medians[vr.Baseline]
		vr.Ratio = stats.Ratio(vr.Cycle.Median, base.Median)
		vr.RatioP90 = stats.Ratio(vr.Cycle.P90, base.P90)
		bs, vs := samples[vr.Baseline], samples[vr.Name]
		var rs []float64
		for j := 0; j < len(bs) && j < len(vs); j++ {
			rs = append(rs, stats.Ratio(vs[j].cycle, bs[j].cycle))
		}
		vr.RatioPaired = stats.MedianFloat(rs)
	}
	res.AddVsPeer = addVsPeer(vars, func(name string) [][]timedexec.Call {
		var out [][]timedexec.Call
		for _, s := range samples[name] {
			out = append(out, s.calls)
		}
		return out
	})
	e.report.Cycle = res

	// The vmnic execs of this section feed the per-step table.
	ix := e.loadSteps()
	contexts := map[string]string{"vmnic": "no VMM (cycle section)", "vmnic-4nic": "no VMM (cycle section)",
		"vmnic-fsync": "no VMM, fsync on (cycle section)", "vmnic-tmpfs": "no VMM, state on tmpfs (cycle section)"}
	for _, name := range []string{"vmnic", "vmnic-4nic", "vmnic-fsync", "vmnic-tmpfs"} {
		for _, s := range samples[name] {
			for _, c := range s.calls {
				if c.Plugin != "vmnic" {
					continue
				}
				rec, ok := ix.find(c)
				e.vmnicCalls = append(e.vmnicCalls, vmnicCall{context: contexts[name], call: c, rec: rec, hasRec: ok})
			}
		}
	}
	return nil
}

// deleteBridges removes vmnbrb0 .. vmnbrb<n-1>.
func (e *env) deleteBridges(n int) {
	for i := 0; i < n; i++ {
		_ = deleteBridge(fmt.Sprintf("vmnbrb%d", i))
	}
}

// The tc-redirect-tap stand-in and the previous vmnic plugin, as variant
// and plugin names.
const (
	peerVariant = "peer-tcredirect"
	peerPlugin  = "peer-tcredirect"
	prevVmnic   = "vmnic-prev"
)

// addVsPeer compares the ADD exec of each vmnic variant's vmnic plugin with
// the peer's ADD exec: medians, and the median of the per-iteration ratios
// (the i-th successful cycle of each). calls gives a variant's successful
// cycles' plugin execs.
func addVsPeer(vars []*variant, calls func(name string) [][]timedexec.Call) []AddRatio {
	addOf := func(cycles [][]timedexec.Call, plugin string) []time.Duration {
		var out []time.Duration
		for _, cs := range cycles {
			var d time.Duration
			for _, c := range cs {
				if c.Plugin == plugin && c.Cmd == "ADD" {
					d += c.Duration()
				}
			}
			out = append(out, d)
		}
		return out
	}
	peer := addOf(calls(peerVariant), peerPlugin)
	if len(peer) == 0 {
		return nil
	}
	var out []AddRatio
	for _, v := range vars {
		plugin := "vmnic"
		if v.name == "vmnic-prev" {
			plugin = prevVmnic
		}
		if !v.needsVmnic || v.nics != 1 {
			continue
		}
		add := addOf(calls(v.name), plugin)
		if len(add) == 0 {
			continue
		}
		var rs []float64
		for j := 0; j < len(add) && j < len(peer); j++ {
			rs = append(rs, stats.Ratio(add[j], peer[j]))
		}
		a, p := stats.Summarize(add), stats.Summarize(peer)
		out = append(out, AddRatio{Variant: v.name, Plugin: plugin, Add: a, PeerAdd: p,
			Ratio: stats.Ratio(a.Median, p.Median), RatioPaired: stats.MedianFloat(rs)})
	}
	return out
}
