package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/bench/internal/fixture"
	"github.com/vmnic/vmnic/bench/internal/stats"
	"github.com/vmnic/vmnic/bench/internal/timedexec"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
)

// TeardownResult is the removal of a whole sandbox (vmnicctl teardown, NRI
// RemovePodSandbox) with 1 and with 4 NICs, timed in-process on the
// sandbox engine, and, for comparison, the 4 NICs removed one CNI DEL
// each (one device deletion, and its RCU wait, per NIC: what a teardown
// cost before the TAPs went in one batch).
type TeardownResult struct {
	Iterations int               `json:"iterations"`
	Variants   []TeardownVariant `json:"variants"`
	// Ratio is the 4-NIC teardown's median over the 1-NIC one's.
	Ratio float64 `json:"ratio_4_to_1"`
	// RatioEach is the 4 DELs' median over the 1-NIC teardown's.
	RatioEach float64 `json:"ratio_4_each_to_1"`
}

// TeardownVariant is one way of removing a sandbox's NICs.
type TeardownVariant struct {
	Name   string        `json:"name"`
	NICs   int           `json:"nics"`
	Time   stats.Summary `json:"time"`
	Errors int           `json:"errors"`
	First  string        `json:"first_error,omitempty"`
}

const (
	tdOne     = "teardown, 1 NIC"
	tdFour    = "teardown, 4 NICs (one batch)"
	tdFourDel = "4 NICs, one DelNIC each, then teardown"
)

// runTeardown: each sample is a fresh netns with N veths from the bridge
// chain (not timed), a prepared sandbox adopting it and N NICs added with
// the engine (not timed); then the timed removal. The variants take turns,
// in an order rotated each iteration.
func (e *env) runTeardown(ctx context.Context) error {
	iters := 30
	if e.cfg.Quick {
		iters = 3
	}
	list, err := e.confList("vmnb-td", bridgePlugin("vmnbrb15", "10.205.15.0/24", e.dir("ipam")))
	if err != nil {
		return err
	}
	defer deleteBridge("vmnbrb15")
	st, err := netsetup.Open(e.stateDir("teardown-state"))
	if err != nil {
		return err
	}
	m := sandbox.New(sandbox.Config{Store: st})
	vs := []*TeardownVariant{{Name: tdOne, NICs: 1}, {Name: tdFour, NICs: 4}, {Name: tdFourDel, NICs: 4}}
	samples := make([][]time.Duration, len(vs))
	for it := -1; it < iters; it++ {
		for k := range vs {
			i := (k + max(it, 0)) % len(vs)
			v := vs[i]
			d, err := e.teardownOnce(ctx, m, list, fmt.Sprintf("vmnb-td-%d-%d", i, it+1), v.NICs, v.Name == tdFourDel)
			if it < 0 {
				continue
			}
			if err != nil {
				v.Errors++
				if v.First == "" {
					v.First = err.Error()
				}
				continue
			}
			samples[i] = append(samples[i], d)
		}
	}
	res := &TeardownResult{Iterations: iters}
	for i, v := range vs {
		v.Time = stats.Summarize(samples[i])
		res.Variants = append(res.Variants, *v)
	}
	res.Ratio = stats.Ratio(res.Variants[1].Time.Median, res.Variants[0].Time.Median)
	res.RatioEach = stats.Ratio(res.Variants[2].Time.Median, res.Variants[0].Time.Median)
	e.logf("teardown: 1 NIC %s ms, 4 NICs %s ms (×%.2f), 4 DELs %s ms (×%.2f)", ms(res.Variants[0].Time.Median),
		ms(res.Variants[1].Time.Median), res.Ratio, ms(res.Variants[2].Time.Median), res.RatioEach)
	e.report.Teardown = res
	return nil
}

// teardownOnce sets up a sandbox of nics NICs and times its removal:
// Teardown, or (each) one DelNIC per NIC and then Teardown.
func (e *env) teardownOnce(ctx context.Context, m *sandbox.Manager, list *libcni.NetworkConfigList, id string, nics int, each bool) (time.Duration, error) {
	ns, err := fixture.NewNetns("td")
	if err != nil {
		return 0, err
	}
	defer ns.Delete()
	ifs := ifnames(nics)
	log := &timedexec.Log{}
	if _, err := e.add(ctx, list, id, ns.Path, ifs, log); err != nil {
		return 0, err
	}
	defer e.del(ctx, list, id, ns.Path, ifs, log)
	if _, err := m.Prepare(ctx, id, sandbox.PrepareOptions{NetnsPath: ns.Path}); err != nil {
		return 0, fmt.Errorf("prepare: %w", err)
	}
	defer m.Teardown(context.WithoutCancel(ctx), id, sandbox.TeardownOptions{})
	for _, ifn := range ifs {
		spec := sandbox.NICSpec{SandboxID: id, ContainerID: id, Network: list.Name, IfName: ifn, NetnsPath: ns.Path,
			Backend: netsetup.BackendCNI, TapOwner: -1, TapGroup: -1}
		if _, err := m.AddNIC(ctx, spec); err != nil {
			return 0, fmt.Errorf("AddNIC %s: %w", ifn, err)
		}
	}
	t0 := time.Now()
	if each {
		for i := len(ifs) - 1; i >= 0; i-- {
			if err := m.DelNIC(ctx, sandbox.DelSpec{SandboxID: id, ContainerID: id, IfName: ifs[i]}); err != nil {
				return 0, fmt.Errorf("DelNIC %s: %w", ifs[i], err)
			}
		}
	}
	if err := m.Teardown(ctx, id, sandbox.TeardownOptions{}); err != nil {
		return 0, fmt.Errorf("teardown: %w", err)
	}
	return time.Since(t0), nil
}

func (r *Report) teardownMarkdown(b *strings.Builder) {
	t := r.Teardown
	fmt.Fprintf(b, "A whole sandbox removed (`vmnicctl teardown`, NRI RemovePodSandbox: `sandbox.Manager.Teardown`), in-process, %d samples per variant, interleaved. Each sample: a fresh netns, N veths from the bridge chain, a prepared sandbox adopting the netns (so the netns stays, as a runtime's does) and N NICs (cni backend), none of it timed; then the removal. A sandbox's TAPs share a link group and go in one RTM_DELLINK; the last row removes the 4 NICs one CNI DEL each (one device deletion per NIC, as a teardown did before).\n\n", t.Iterations)
	b.WriteString("| Removal | NICs | median | p90 | max | ratio to 1 NIC | errors |\n|---|---|---|---|---|---|---|\n")
	for _, v := range t.Variants {
		ratio := "1"
		switch v.Name {
		case tdFour:
			ratio = fmt.Sprintf("%.2f", t.Ratio)
		case tdFourDel:
			ratio = fmt.Sprintf("%.2f", t.RatioEach)
		}
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s | %s | %d |\n", v.Name, v.NICs, ms(v.Time.Median), ms(v.Time.P90), ms(v.Time.Max), ratio, v.Errors)
	}
	for _, v := range t.Variants {
		if v.First != "" {
			fmt.Fprintf(b, "\n%s first error: `%s`\n", v.Name, v.First)
		}
	}
}

// teardownTarget: issue 15's multi-NIC teardown goal.
func (r *Report) teardownTarget() Target {
	t := Target{Name: "multi-NIC teardown", Goal: "teardown of a 4-NIC sandbox ≤ 1.5× a 1-NIC sandbox's (median)", Status: "n/a", Measured: "not measured"}
	if td := r.Teardown; td != nil && td.Ratio > 0 {
		t.Measured = fmt.Sprintf("4 NICs %s ms / 1 NIC %s ms = %.2f (4 NICs one DEL each: %.2f)",
			ms(td.Variants[1].Time.Median), ms(td.Variants[0].Time.Median), td.Ratio, td.RatioEach)
		t.Status = status(td.Ratio <= 1.5)
	}
	return t
}
