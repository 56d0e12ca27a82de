package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/bench/internal/fixture"
	"github.com/vmnic/vmnic/bench/internal/stats"
	"github.com/vmnic/vmnic/bench/internal/timedexec"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
)

// EngineResult is vmnic's own ADD and DEL work measured in-process (the
// sandbox engine the plugin drives, without exec, Go runtime start or conf
// parsing), with the state directory on the disk's filesystem (like
// /var/lib/vmnic) and on tmpfs, to show what the state writes cost.
type EngineResult struct {
	Iterations int         `json:"iterations"`
	Runs       []EngineRun `json:"runs"`
	// ProfileTop is `go tool pprof -top` of the CPU profile of the loop.
	ProfileTop  string `json:"profile_top,omitempty"`
	ProfileFile string `json:"profile_file,omitempty"`
}

// EngineRun is the engine with one state directory.
type EngineRun struct {
	Where string        `json:"where"`
	FS    string        `json:"fs"`
	Add   stats.Summary `json:"add"`
	Del   stats.Summary `json:"del"`
	// Save is one record write (netsetup.Store.Create): lock, load, save
	// (temp file, rename; fsyncs when the store is durable), unlock.
	Save   stats.Summary `json:"save"`
	Errors int           `json:"errors"`
	First  string        `json:"first_error,omitempty"`
}

// runEngine makes a veth with the bridge chain (not timed) and times the
// sandbox engine's AddNIC and DelNIC on it, round-robin over the state
// directories, under a CPU profile.
func (e *env) runEngine(ctx context.Context) error {
	iters := 60
	if e.cfg.Quick {
		iters = 6
	}
	list, err := e.confList("vmnb-eng", bridgePlugin("vmnbrb14", "10.205.14.0/24", e.dir("ipam")))
	if err != nil {
		return err
	}
	defer deleteBridge("vmnbrb14")
	type dirRun struct {
		run EngineRun
		m   *sandbox.Manager
		dir string
	}
	var runs []*dirRun
	add := func(where, dir string, durable bool) error {
		st, err := netsetup.OpenWithOptions(dir, netsetup.Options{Durable: durable})
		if err != nil {
			return err
		}
		runs = append(runs, &dirRun{run: EngineRun{Where: where, FS: fsType(dir)}, m: sandbox.New(sandbox.Config{Store: st}), dir: dir})
		return nil
	}
	if err := add("/var/lib (as /var/lib/vmnic), default store", e.stateDir("engine-state"), false); err != nil {
		return err
	}
	if err := add("/var/lib, durable store (fsync of file and directory)", e.stateDir("engine-state-durable"), true); err != nil {
		return err
	}
	if e.shm != "" {
		if err := add("/dev/shm (tmpfs), default store", filepath.Join(e.shm, "engine-state"), false); err != nil {
			return err
		}
	}

	prof := filepath.Join(e.cfg.OutDir, "engine-cpu.pprof")
	pf, err := os.Create(prof)
	if err != nil {
		return err
	}
	profiling := pprof.StartCPUProfile(pf) == nil
	var adds, dels, saves = make([][]time.Duration, len(runs)), make([][]time.Duration, len(runs)), make([][]time.Duration, len(runs))
	for it := -1; it < iters; it++ {
		for k := range runs {
			i := (k + max(it, 0)) % len(runs)
			r := runs[i]
			a, d, s, err := e.engineOnce(ctx, r.m, list, fmt.Sprintf("vmnb-eng-%d-%d", i, it+1))
			if it < 0 {
				continue
			}
			if err != nil {
				r.run.Errors++
				if r.run.First == "" {
					r.run.First = err.Error()
				}
				continue
			}
			adds[i], dels[i], saves[i] = append(adds[i], a), append(dels[i], d), append(saves[i], s)
		}
	}
	if profiling {
		pprof.StopCPUProfile()
	}
	pf.Close()
	res := &EngineResult{Iterations: iters}
	for i, r := range runs {
		r.run.Add, r.run.Del, r.run.Save = stats.Summarize(adds[i]), stats.Summarize(dels[i]), stats.Summarize(saves[i])
		res.Runs = append(res.Runs, r.run)
	}
	if profiling {
		res.ProfileFile = filepath.Base(prof)
		cmd := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=25", prof)
		cmd.Dir = e.cfg.RepoRoot
		if out, err := cmd.Output(); err == nil {
			res.ProfileTop = strings.TrimSpace(string(out))
		}
	}
	e.report.Engine = res
	return nil
}

// engineOnce: fresh netns, bridge ADD (the veth), timed AddNIC and
// DelNIC, one timed record write, bridge DEL.
func (e *env) engineOnce(ctx context.Context, m *sandbox.Manager, list *libcni.NetworkConfigList, id string) (add, del, save time.Duration, err error) {
	ns, err := fixture.NewNetns("eng")
	if err != nil {
		return 0, 0, 0, err
	}
	defer ns.Delete()
	ifs := []string{"eth0"}
	log := &timedexec.Log{}
	if _, err := e.add(ctx, list, id, ns.Path, ifs, log); err != nil {
		return 0, 0, 0, err
	}
	defer e.del(ctx, list, id, ns.Path, ifs, log)
	spec := sandbox.NICSpec{SandboxID: id, ContainerID: id, Network: list.Name, IfName: "eth0", NetnsPath: ns.Path,
		Backend: netsetup.BackendCNI, TapOwner: -1, TapGroup: -1}
	t0 := time.Now()
	if _, err := m.AddNIC(ctx, spec); err != nil {
		return 0, 0, 0, fmt.Errorf("AddNIC: %w", err)
	}
	add = time.Since(t0)
	t0 = time.Now()
	if err := m.DelNIC(ctx, sandbox.DelSpec{SandboxID: id, ContainerID: id, IfName: "eth0"}); err != nil {
		return add, 0, 0, fmt.Errorf("DelNIC: %w", err)
	}
	del = time.Since(t0)
	// One record write of a one-NIC sandbox, as AddNIC does twice.
	rec := netsetup.New(id + "-w")
	rec.NetnsPath = ns.Path
	t0 = time.Now()
	if err := m.Store.Create(ctx, rec); err != nil {
		return add, del, 0, fmt.Errorf("record write: %w", err)
	}
	save = time.Since(t0)
	if tx, err := m.Store.Lock(ctx, rec.SandboxID); err == nil {
		tx.Delete()
		tx.Unlock()
	}
	return add, del, save, nil
}

func fsType(dir string) string {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return "?"
	}
	best, typ := "", "?"
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 {
			continue
		}
		if strings.HasPrefix(dir, f[1]) && len(f[1]) > len(best) {
			best, typ = f[1], f[2]
		}
	}
	return typ
}

func (r *Report) engineMarkdown(b *strings.Builder) {
	en := r.Engine
	fmt.Fprintf(b, "vmnic's sandbox engine (`internal/sandbox`: what the plugin runs after parsing its input) called in-process, %d iterations round-robin over the state directories: AddNIC on a veth made by the bridge plugin, DelNIC, and one record write (`netsetup.Store.Create`: lock, load, temp file + rename, unlock; plus fsyncs when the store is durable). No exec, no Go runtime start, no conf parsing.\n\n", en.Iterations)
	b.WriteString("| State dir | fs | AddNIC median | AddNIC p90 | DelNIC median | DelNIC p90 | one record write median | errors |\n|---|---|---|---|---|---|---|---|\n")
	for _, run := range en.Runs {
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %d |\n", run.Where, run.FS, ms(run.Add.Median), ms(run.Add.P90), ms(run.Del.Median), ms(run.Del.P90), ms(run.Save.Median), run.Errors)
	}
	for _, run := range en.Runs {
		if run.First != "" {
			fmt.Fprintf(b, "\n%s first error: `%s`\n", run.Where, run.First)
		}
	}
	if en.ProfileTop != "" {
		fmt.Fprintf(b, "\nCPU profile of the loop (`%s`; on-CPU time only: waits in fsync and netlink do not show here):\n\n```\n%s\n```\n", en.ProfileFile, en.ProfileTop)
	}
}
