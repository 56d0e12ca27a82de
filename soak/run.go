// Package soak is vmnic's soak run: many ADD/DEL cycles, each a random
// scenario (clean, crashes at the failpoints, VMM faults, racing DELs, GC
// racing ADD, both backends, a ptp chain, quiesce/resume, snapshot →
// restore → restore-vmm), on an isolated installation
// (internal/testkit/faultenv), with the host audited against the baseline
// after every cycle (internal/testkit/hostaudit). soak/cmd/vmnic-soak is
// the program; soak/ is a Go module of its own.
package soak

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/internal/failpoint"
	"github.com/vmnic/vmnic/internal/testkit/faultenv"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
)

// Config is one soak run.
type Config struct {
	Cycles  int
	Seed    int64
	RefCNI  string        // reference CNI plugins (bridge, ptp, host-local)
	WorkDir string        // temp root ("" = os.TempDir())
	Timeout time.Duration // whole run
	Log     io.Writer     // progress (nil = none)
	// Bins, when set, are used instead of building the failpoint binaries.
	Bins *faultenv.Binaries
}

// Report is what a run did and found.
type Report struct {
	Seed     int64          `json:"seed"`
	Cycles   int            `json:"cycles"`
	Duration string         `json:"duration"`
	Kinds    map[string]int `json:"cycle_kinds"`     // cycles per scenario
	Faults   map[string]int `json:"faults_injected"` // per fault (failpoint crash, VMM fault mode, race)
	Crashes  int            `json:"plugin_crashes"`  // processes killed by an injected crash
	Failures []string       `json:"failures"`        // cycles that did not behave (wrong result, failed repair)
	Leaks    []string       `json:"leaks"`           // audit lines left after a cycle (should be empty)
	Final    map[string]int `json:"leaked_at_end"`   // per resource kind, after the run
	Audited  map[string]int `json:"audited_kinds"`   // resource kinds the audit covers, count in the baseline
	FDs      [2]int         `json:"runner_fds"`      // open fds of the runner: start, end
	Procs    int            `json:"leftover_processes"`
}

// OK reports a clean run.
func (r *Report) OK() bool {
	if len(r.Failures) > 0 || len(r.Leaks) > 0 || r.Procs > 0 || r.FDs[0] != r.FDs[1] {
		return false
	}
	for _, n := range r.Final {
		if n != 0 {
			return false
		}
	}
	return true
}

type runner struct {
	cfg    Config
	e      *faultenv.Env
	rnd    *rand.Rand
	rep    *Report
	chains map[string]*faultenv.Chain
	seq    int
	mu     sync.Mutex
}

// scenario is one kind of cycle.
type scenario struct {
	name   string
	weight int
	run    func(r *runner, ctx context.Context, sid string) error
}

var scenarios = []scenario{
	{"clean", 3, (*runner).clean},
	{"crash-add", 4, (*runner).crashAdd},
	{"crash-del", 3, (*runner).crashDel},
	{"crash-teardown", 2, (*runner).crashTeardown},
	{"vmm-fault", 4, (*runner).vmmFault},
	{"race-del", 2, (*runner).raceDel},
	{"race-gc", 2, (*runner).raceGC},
	{"bridge-backend", 2, (*runner).bridgeBackend},
	{"ptp", 1, (*runner).ptp},
	{"damage-record", 2, (*runner).damageRecord},
	{"lose-state-dir", 1, (*runner).loseStateDir},
	{"quiesce-resume", 2, (*runner).quiesce},
	{"snapshot-restore", 2, (*runner).snapshotRestore},
}

// Run builds the failpoint binaries, sets up an env and runs the cycles;
// after each one it audits the host against the baseline.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	start := time.Now()
	root, err := os.MkdirTemp(cfg.WorkDir, "vmnr-soak-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(root)
	bins := cfg.Bins
	if bins == nil {
		if bins, err = faultenv.Build(ctx, filepath.Join(root, "bin")); err != nil {
			return nil, err
		}
	}
	e, err := faultenv.NewEnv(filepath.Join(root, "env"), bins, cfg.RefCNI, int(cfg.Seed%200)+20)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	r := &runner{cfg: cfg, e: e, rnd: rand.New(rand.NewSource(cfg.Seed)), chains: map[string]*faultenv.Chain{},
		rep: &Report{Seed: cfg.Seed, Kinds: map[string]int{}, Faults: map[string]int{}}}
	fast := map[string]any{"vmmTimeout": "1s", "removeTimeout": "1s", "logLevel": "warn"}
	bridgeConf := map[string]any{"backend": "bridge", "bridge": e.Bridge}
	for k, v := range fast {
		bridgeConf[k] = v
	}
	for name, mk := range map[string]func() (*faultenv.Chain, error){
		"bridge": func() (*faultenv.Chain, error) { return e.BridgeChain("vmnr-soak", fast) },
		"brtap":  func() (*faultenv.Chain, error) { return e.BridgeChain("vmnr-soak-br", bridgeConf) },
		"ptp":    func() (*faultenv.Chain, error) { return e.PtpChain("vmnr-soak-ptp", fast) },
	} {
		c, err := mk()
		if err != nil {
			return nil, err
		}
		r.chains[name] = c
	}

	// Warm-up (the bridge gets its address, host-local its directories),
	// then the baseline the audits compare with.
	for _, name := range []string{"bridge", "brtap", "ptp"} {
		if err := r.cycle(ctx, "warmup-"+name, func(r *runner, ctx context.Context, sid string) error {
			return r.addDel(ctx, name, sid)
		}); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	runtime.GC()
	base, err := e.Audit()
	if err != nil {
		return nil, err
	}
	r.rep.Audited = map[string]int{}
	for _, k := range hostaudit.Kinds {
		if k != "fd" { // the runner's fds are counted on their own
			r.rep.Audited[k] = 0
		}
	}
	for k, n := range base.Count() {
		r.rep.Audited[k] = n
	}
	fds0, _ := hostaudit.Take(hostaudit.Scope{OwnFDs: true})
	r.rep.FDs[0] = len(fds0)

	total := 0
	for _, s := range scenarios {
		total += s.weight
	}
	for i := 0; i < cfg.Cycles; i++ {
		if ctx.Err() != nil {
			r.rep.Failures = append(r.rep.Failures, fmt.Sprintf("stopped after %d cycles: %v", i, ctx.Err()))
			break
		}
		pick := r.rnd.Intn(total)
		var s scenario
		for _, s = range scenarios {
			if pick < s.weight {
				break
			}
			pick -= s.weight
		}
		r.rep.Kinds[s.name]++
		if err := r.cycle(ctx, s.name, s.run); err != nil {
			r.rep.Failures = append(r.rep.Failures, fmt.Sprintf("cycle %d (%s): %v", i, s.name, err))
			r.logf("soak: cycle %d (%s) FAILED: %v\n", i, s.name, err)
		}
		if leak := r.settle(base); leak != "" {
			r.rep.Leaks = append(r.rep.Leaks, fmt.Sprintf("cycle %d (%s):\n%s", i, s.name, leak))
			r.logf("soak: cycle %d (%s) LEAKED:\n%s", i, s.name, leak)
			if after, err := e.Audit(); err == nil {
				base = after // count each leak once
			}
		}
		r.rep.Cycles = i + 1
		if cfg.Log != nil && (i+1)%50 == 0 {
			fmt.Fprintf(cfg.Log, "soak: %d/%d cycles, %d failures, %d leaks, %s\n", i+1, cfg.Cycles, len(r.rep.Failures), len(r.rep.Leaks), time.Since(start).Round(time.Second))
		}
	}

	final, err := e.Audit()
	if err != nil {
		return r.rep, err
	}
	orig := r.rep.Audited
	r.rep.Final = map[string]int{}
	for _, k := range hostaudit.Kinds {
		if k != "fd" {
			r.rep.Final[k] = 0
		}
	}
	for k, n := range final.Count() {
		if d := n - orig[k]; d != 0 {
			r.rep.Final[k] = d
		}
	}
	for _, l := range final {
		if strings.HasPrefix(l, "proc ") {
			r.rep.Procs++
		}
	}
	runtime.GC()
	time.Sleep(100 * time.Millisecond)
	fds1, _ := hostaudit.Take(hostaudit.Scope{OwnFDs: true})
	r.rep.FDs[1] = len(fds1)
	if len(fds1) != len(fds0) {
		r.rep.Failures = append(r.rep.Failures, "runner fds: "+fds0.Diff(fds1))
	}
	r.rep.Duration = time.Since(start).Round(time.Second).String()
	return r.rep, nil
}

// settle compares the host with base, looking again for a few seconds (the
// kernel frees a removed netns' devices asynchronously).
func (r *runner) settle(base hostaudit.Snapshot) string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		now, err := r.e.Audit()
		if err != nil {
			return "audit: " + err.Error()
		}
		d := base.Diff(now)
		if d == "" || time.Now().After(deadline) {
			return d
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (r *runner) logf(format string, args ...any) {
	if r.cfg.Log != nil {
		fmt.Fprintf(r.cfg.Log, format, args...)
	}
}

func (r *runner) cycle(ctx context.Context, name string, fn func(*runner, context.Context, string) error) error {
	r.seq++
	sid := fmt.Sprintf("%ss%d", faultenv.NetnsPrefix, r.seq)
	r.e.Track(sid, "eth0")
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	r.e.ClearFired()
	err := fn(r, cctx, sid)
	if err != nil {
		// The cycle went wrong: clean up what it may have left, so one
		// failure does not spill into the next cycles' audits.
		r.janitor(cctx, sid)
	}
	// Whatever happened, the sandbox's own netns goes (the runtime's job).
	if ns := filepath.Join(r.e.NetnsDir, sid); fileExists(ns) {
		if rerr := r.e.RemoveNetns(ns); rerr != nil && err == nil {
			err = rerr
		}
	}
	if err != nil {
		return err
	}
	return r.noRecord(sid)
}

func (r *runner) janitor(ctx context.Context, sid string) {
	for _, ns := range []string{filepath.Join(r.e.NetnsDir, sid), filepath.Join(r.e.NetnsDir, "vmnic-"+sid)} {
		if !fileExists(ns) {
			ns = ""
		}
		for _, c := range r.chains {
			c.Exec.SetEnv()
			_ = c.Del(ctx, faultenv.Attachment{ContainerID: sid, Netns: ns, IfName: "eth0", SandboxID: sid})
		}
	}
	_, _ = r.e.Vmnicctl(ctx, nil, "teardown", sid)
	_, _ = r.e.Vmnicctl(ctx, nil, "gc")
}

func (r *runner) noRecord(sid string) error {
	st, err := netsetup.Open(r.e.StateDir)
	if err != nil {
		return err
	}
	if _, err := st.Get(sid); !errors.Is(err, netsetup.ErrNotFound) {
		return fmt.Errorf("the record of %s is still there (%v)", sid, err)
	}
	return nil
}

func (r *runner) fault(name string) {
	r.mu.Lock()
	r.rep.Faults[name]++
	r.mu.Unlock()
}

func (r *runner) netns(sid string) (string, error) {
	return r.e.NewNetns(strings.TrimPrefix(sid, faultenv.NetnsPrefix))
}

func (r *runner) att(sid, ns string) faultenv.Attachment {
	return faultenv.Attachment{ContainerID: sid, Netns: ns, IfName: "eth0"}
}

// addDel is a plain ADD then DEL on chain name.
func (r *runner) addDel(ctx context.Context, chain, sid string) error {
	ns, err := r.netns(sid)
	if err != nil {
		return err
	}
	c := r.chains[chain]
	a := r.att(sid, ns)
	if _, err := c.Add(ctx, a); err != nil {
		return fmt.Errorf("ADD: %w", err)
	}
	if err := c.Check(ctx, a); err != nil {
		return fmt.Errorf("CHECK: %w", err)
	}
	if err := c.Del(ctx, a); err != nil {
		return fmt.Errorf("DEL: %w", err)
	}
	return nil
}

func (r *runner) clean(ctx context.Context, sid string) error { return r.addDel(ctx, "bridge", sid) }
func (r *runner) ptp(ctx context.Context, sid string) error   { return r.addDel(ctx, "ptp", sid) }

func (r *runner) points(op failpoint.Op, backend string, vmm bool) []string {
	var out []string
	for _, p := range failpoint.Points {
		if p.Component == failpoint.Engine && p.Op == op && (p.Backend == "" || p.Backend == backend) && (!p.VMM || vmm) {
			out = append(out, p.Name)
		}
	}
	return out
}

// crashed checks an injected crash took place at point.
func (r *runner) crashed(err error, point string) error {
	if !faultenv.IsCrash(err) {
		return fmt.Errorf("with a crash armed at %s: want the plugin killed, got %v", point, err)
	}
	if !slices.Contains(r.e.FiredNames(), point) {
		return fmt.Errorf("failpoint %s did not fire", point)
	}
	r.mu.Lock()
	r.rep.Crashes++
	r.mu.Unlock()
	r.fault("crash@" + point)
	return nil
}

// crashAdd: ADD killed at a random ADD failpoint, then DEL (or the netns
// removed and GC, then DEL).
func (r *runner) crashAdd(ctx context.Context, sid string) error {
	ns, err := r.netns(sid)
	if err != nil {
		return err
	}
	c, a := r.chains["bridge"], r.att(sid, ns)
	pts := r.points(failpoint.OpAdd, "cni", false)
	p := pts[r.rnd.Intn(len(pts))]
	c.Exec.SetEnv(r.e.Arm(p, failpoint.Action{Kind: failpoint.Crash})...)
	_, err = c.Add(ctx, a)
	c.Exec.SetEnv()
	if err := r.crashed(err, p); err != nil {
		return err
	}
	if r.rnd.Intn(3) == 0 {
		r.fault("repair-by-gc")
		if err := r.e.RemoveNetns(ns); err != nil {
			return err
		}
		if err := c.GC(ctx); err != nil {
			return fmt.Errorf("GC after a crash at %s: %w", p, err)
		}
	}
	if err := c.Del(ctx, a); err != nil {
		return fmt.Errorf("DEL after a crash at %s: %w", p, err)
	}
	return nil
}

// crashDel: DEL killed at a random removal failpoint, then DEL again.
func (r *runner) crashDel(ctx context.Context, sid string) error {
	ns, err := r.netns(sid)
	if err != nil {
		return err
	}
	c, a := r.chains["bridge"], r.att(sid, ns)
	if _, err := c.Add(ctx, a); err != nil {
		return fmt.Errorf("ADD: %w", err)
	}
	pts := r.points(failpoint.OpDel, "cni", false)
	p := pts[r.rnd.Intn(len(pts))]
	c.Exec.SetEnv(r.e.Arm(p, failpoint.Action{Kind: failpoint.Crash})...)
	err = c.Del(ctx, a)
	c.Exec.SetEnv()
	if err := r.crashed(err, p); err != nil {
		return err
	}
	if err := c.Del(ctx, a); err != nil {
		return fmt.Errorf("DEL after a crash at %s: %w", p, err)
	}
	return nil
}

// crashTeardown: a prepared sandbox (owned netns) with a NIC; vmnicctl
// teardown killed at a random teardown or removal failpoint; teardown
// again, then the chain's DEL.
func (r *runner) crashTeardown(ctx context.Context, sid string) error {
	res, err := r.e.Vmnicctl(ctx, nil, "prepare", sid)
	if err != nil {
		return err
	}
	ns := strings.TrimSpace(res.Stdout)
	c := r.chains["bridge"]
	a := faultenv.Attachment{ContainerID: sid, Netns: ns, IfName: "eth0", SandboxID: sid}
	if _, err := c.Add(ctx, a); err != nil {
		return fmt.Errorf("ADD: %w", err)
	}
	pts := append(r.points(failpoint.OpTeardown, "cni", false), r.points(failpoint.OpDel, "cni", false)...)
	p := pts[r.rnd.Intn(len(pts))]
	res, err = r.e.Vmnicctl(ctx, r.e.Arm(p, failpoint.Action{Kind: failpoint.Crash}), "teardown", sid)
	if !res.Crashed || !slices.Contains(r.e.FiredNames(), p) {
		return fmt.Errorf("teardown with a crash armed at %s: %v", p, err)
	}
	r.mu.Lock()
	r.rep.Crashes++
	r.mu.Unlock()
	r.fault("crash@" + p)
	if _, err := r.e.Vmnicctl(ctx, nil, "teardown", sid); err != nil {
		return err
	}
	if err := c.Del(ctx, a); err != nil {
		return fmt.Errorf("DEL after the teardown: %w", err)
	}
	return nil
}

// vmmFaults are the VMM misbehaviours the soak injects.
var vmmFaults = []string{"none", "delay", "never-answer", "garbage", "close-mid-call", "lose-answer", "socket-missing", "crash-vmm-added", "crash-detaching-saved", "crash-vmm-removed"}

// vmmFault: a prepared sandbox with a booted Cloud Hypervisor simulator; a
// random fault at ADD or DEL; the NIC must end attached (or the ADD
// refused and rolled back); DEL is retried once the VMM is well; the VMM
// must end with no NIC; teardown and the chain's DEL finish.
func (r *runner) vmmFault(ctx context.Context, sid string) error {
	ns, err := r.netns(sid)
	if err != nil {
		return err
	}
	short := strings.TrimPrefix(sid, faultenv.NetnsPrefix)
	sockDir := filepath.Join(r.e.RuntimeDir, short)
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return err
	}
	defer os.RemoveAll(sockDir)
	sim, err := vmmsim.StartCH(filepath.Join(sockDir, "api.sock"), vmmsim.CHConfig{NoSpec: true})
	if err != nil {
		return err
	}
	defer sim.Close()
	if _, err := r.e.Vmnicctl(ctx, nil, "prepare", sid, "--netns", ns); err != nil {
		return err
	}
	if _, err := r.e.Vmnicctl(ctx, nil, "attach-vmm", sid, "--kind", "ch", "--socket", sim.Socket()); err != nil {
		return err
	}
	c := r.chains["bridge"]
	a := faultenv.Attachment{ContainerID: sid, Netns: ns, IfName: "eth0", SandboxID: sid}
	f := vmmFaults[r.rnd.Intn(len(vmmFaults))]
	atAdd := r.rnd.Intn(2) == 0
	switch f {
	case "crash-vmm-added":
		atAdd = true
	case "crash-detaching-saved", "crash-vmm-removed":
		atAdd = false
	}
	where := "del"
	if atAdd {
		where = "add"
	}
	path := "/api/v1/vm.remove-device"
	if atAdd {
		path = "/api/v1/vm.add-net"
	}
	inject := func() {
		switch f {
		case "delay":
			sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultDelay, Delay: 200 * time.Millisecond, Path: path})
		case "never-answer":
			sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultNeverAnswer, Path: path})
		case "garbage":
			sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultGarbage, Path: path})
		case "close-mid-call":
			sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultCloseMidCall, Path: path})
		case "lose-answer":
			sim.SetFault(vmmsim.Fault{Mode: vmmsim.FaultLoseAnswer, Path: path, Times: 1})
		}
	}
	if !strings.HasPrefix(f, "crash-") { // crashes are counted as crash@<point>
		r.fault("vmm-" + f + "@" + where)
	}
	arm := func(point string) func() {
		c.Exec.SetEnv(r.e.Arm(point, failpoint.Action{Kind: failpoint.Crash})...)
		return func() { c.Exec.SetEnv() }
	}
	// ADD.
	var addErr error
	switch {
	case f == "crash-vmm-added":
		done := arm("vmm-added")
		_, addErr = c.Add(ctx, a)
		done()
		if err := r.crashed(addErr, "vmm-added"); err != nil {
			return err
		}
	case atAdd && f == "socket-missing":
		sim.Close()
		_, addErr = c.Add(ctx, a)
		if addErr == nil {
			return errors.New("ADD succeeded with the VMM socket gone")
		}
	default:
		if atAdd {
			inject()
		}
		_, addErr = c.Add(ctx, a)
		sim.ClearFault()
		failing := atAdd && f != "none" && f != "delay"
		if failing && addErr == nil {
			return fmt.Errorf("ADD succeeded with the VMM fault %s", f)
		}
		if !failing && addErr != nil {
			return fmt.Errorf("ADD: %w", addErr)
		}
		if addErr == nil {
			if n := sim.Net(); len(n) != 1 {
				return fmt.Errorf("after ADD the VMM has %d NICs", len(n))
			}
		} else if dead, _ := sim.Dead(); !dead {
			time.Sleep(20 * time.Millisecond)
			if n := sim.Net(); len(n) != 0 {
				return fmt.Errorf("a failed ADD (%s) left %d NICs in the VMM", f, len(n))
			}
		}
	}
	// DEL.
	if !atAdd && addErr == nil {
		switch f {
		case "socket-missing":
			sim.Close()
		case "crash-detaching-saved", "crash-vmm-removed":
			p := strings.TrimPrefix(f, "crash-")
			done := arm(p)
			err := c.Del(ctx, a)
			done()
			if err := r.crashed(err, p); err != nil {
				return err
			}
		default:
			inject()
			err := c.Del(ctx, a)
			sim.ClearFault()
			failing := f == "never-answer" || f == "garbage" || f == "close-mid-call"
			if failing && err == nil {
				return fmt.Errorf("DEL succeeded with the VMM fault %s", f)
			}
			if !failing && f != "lose-answer" && err != nil {
				return fmt.Errorf("DEL: %w", err)
			}
		}
	}
	for _, id := range sim.Devices() {
		sim.Eject(id)
	}
	if err := c.Del(ctx, a); err != nil {
		return fmt.Errorf("DEL once the VMM is well: %w", err)
	}
	if dead, why := sim.Dead(); dead {
		return fmt.Errorf("the VMM died: %s", why)
	}
	if n := sim.Net(); len(n) != 0 && f != "socket-missing" {
		return fmt.Errorf("after DEL the VMM still has %d NICs", len(n))
	}
	if _, err := r.e.Vmnicctl(ctx, nil, "teardown", sid); err != nil {
		return err
	}
	return nil
}

// raceDel: two DELs of one NIC at once; both succeed, nothing is left.
func (r *runner) raceDel(ctx context.Context, sid string) error {
	ns, err := r.netns(sid)
	if err != nil {
		return err
	}
	c, a := r.chains["bridge"], r.att(sid, ns)
	if _, err := c.Add(ctx, a); err != nil {
		return fmt.Errorf("ADD: %w", err)
	}
	// vmnic's DEL, twice at once (the reference bridge plugin's own DEL is
	// not safe to race, so the chain's DEL follows once).
	r.fault("racing-dels")
	vconf, err := libcni.InjectConf(c.List.Plugins[len(c.List.Plugins)-1], map[string]any{"name": c.List.Name, "cniVersion": c.List.CNIVersion})
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = c.CNI.DelNetwork(ctx, vconf, a.RuntimeConf()) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("racing vmnic DELs: %w", err)
	}
	if l, err := faultenv.LinkInNetns(ns, "tapeth0"); err != nil || l != nil {
		return fmt.Errorf("TAP left after racing DELs (%v)", err)
	}
	return c.Del(ctx, a)
}

// raceGC: ADD racing a GC that lists the attachment as valid: the NIC
// must survive and pass CHECK.
func (r *runner) raceGC(ctx context.Context, sid string) error {
	ns, err := r.netns(sid)
	if err != nil {
		return err
	}
	c, a := r.chains["bridge"], r.att(sid, ns)
	r.fault("gc-racing-add")
	var wg sync.WaitGroup
	var addErr, gcErr error
	wg.Add(2)
	go func() { defer wg.Done(); _, addErr = c.Add(ctx, a) }()
	go func() {
		defer wg.Done()
		time.Sleep(time.Duration(r.rnd.Intn(60)) * time.Millisecond)
		gcErr = c.GC(ctx, a)
	}()
	wg.Wait()
	if err := errors.Join(addErr, gcErr); err != nil {
		return err
	}
	if err := c.Check(ctx, a); err != nil {
		return fmt.Errorf("CHECK after ADD racing GC: %w", err)
	}
	return c.Del(ctx, a)
}

// bridgeBackend: vmnic's bridge backend (host TAP on the bridge, FORWARD
// rules), with a crash at a random point half the time.
func (r *runner) bridgeBackend(ctx context.Context, sid string) error {
	ns, err := r.netns(sid)
	if err != nil {
		return err
	}
	c, a := r.chains["brtap"], r.att(sid, ns)
	if r.rnd.Intn(2) == 0 {
		_, err := c.Add(ctx, a)
		if err != nil {
			return fmt.Errorf("ADD: %w", err)
		}
		return c.Del(ctx, a)
	}
	pts := append(r.points(failpoint.OpAdd, "bridge", false), r.points(failpoint.OpDel, "bridge", false)...)
	p := pts[r.rnd.Intn(len(pts))]
	pt, _ := failpoint.Lookup(p)
	if pt.Op == failpoint.OpDel {
		if _, err := c.Add(ctx, a); err != nil {
			return fmt.Errorf("ADD: %w", err)
		}
	}
	c.Exec.SetEnv(r.e.Arm(p, failpoint.Action{Kind: failpoint.Crash})...)
	if pt.Op == failpoint.OpDel {
		err = c.Del(ctx, a)
	} else {
		_, err = c.Add(ctx, a)
	}
	c.Exec.SetEnv()
	if err := r.crashed(err, p); err != nil {
		return err
	}
	return c.Del(ctx, a)
}

// Summary formats a report for people.
func (r *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vmnic soak: %d cycles in %s (seed %d)\n", r.Cycles, r.Duration, r.Seed)
	fmt.Fprintf(&b, "cycles per scenario: %s\n", kv(r.Kinds))
	fmt.Fprintf(&b, "faults injected: %d kinds, %d in all; plugin/vmnicctl processes killed: %d\n", len(r.Faults), sum(r.Faults), r.Crashes)
	fmt.Fprintf(&b, "faults per kind: %s\n", kv(r.Faults))
	fmt.Fprintf(&b, "audited resource kinds (baseline count): %s\n", kv(r.Audited))
	fmt.Fprintf(&b, "leaked at the end, per kind: %s\n", kv(r.Final))
	fmt.Fprintf(&b, "runner fds start/end: %d/%d (leaked %d); leftover processes: %d\n", r.FDs[0], r.FDs[1], r.FDs[1]-r.FDs[0], r.Procs)
	fmt.Fprintf(&b, "cycles that misbehaved: %d; cycles that leaked: %d\n", len(r.Failures), len(r.Leaks))
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "  FAIL %s\n", f)
	}
	for _, l := range r.Leaks {
		fmt.Fprintf(&b, "  LEAK %s\n", l)
	}
	if r.OK() {
		b.WriteString("result: OK (nothing leaked)\n")
	} else {
		b.WriteString("result: FAILED\n")
	}
	return b.String()
}

// JSON is the report as JSON.
func (r *Report) JSON() []byte {
	data, _ := json.MarshalIndent(r, "", "  ")
	return append(data, '\n')
}

func kv(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// recordDamage are the ways the soak makes a record unreadable (issue 11).
var recordDamage = []string{"empty", "truncate", "garbage", "future-schema", "other-id", "symlink", "directory"}

// damage makes the record of sid unreadable in the way named.
func (r *runner) damage(sid, how string) error {
	path := filepath.Join(r.e.StateDir, "sandboxes", sid+".json")
	switch how {
	case "empty":
		return os.WriteFile(path, nil, 0o600)
	case "truncate":
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		return os.Truncate(path, r.rnd.Int63n(fi.Size()-2)) // a cut before the closing brace
	case "garbage":
		return os.WriteFile(path, []byte("\x00\x01 not a record"), 0o600)
	case "future-schema":
		return os.WriteFile(path, []byte(`{"schema": 99, "sandbox_id": "`+sid+`"}`), 0o600)
	case "other-id":
		return os.WriteFile(path, []byte(`{"schema": 2, "sandbox_id": "x`+sid+`", "phase": "prepared", "network_configs": []}`), 0o600)
	case "symlink":
		target := filepath.Join(r.e.Root, "damaged-"+sid+".json")
		if err := os.Rename(path, target); err != nil {
			return err
		}
		return os.Symlink(target, path)
	case "directory":
		if err := os.Remove(path); err != nil {
			return err
		}
		return os.Mkdir(path, 0o700)
	}
	return fmt.Errorf("unknown damage %q", how)
}

// clearQuarantine checks that the quarantine holds a record and removes it
// (what an operator does once the record was looked at), and the target of
// a symlinked record.
func (r *runner) clearQuarantine(sid string) error {
	dir := filepath.Join(r.e.StateDir, "quarantine")
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) == 0 {
		return fmt.Errorf("the damaged record of %s is not in the quarantine (%v)", sid, err)
	}
	os.Remove(filepath.Join(r.e.Root, "damaged-"+sid+".json"))
	return os.RemoveAll(dir)
}

// damageRecord: a live NIC (cni or bridge backend) whose record is made
// unreadable; then DEL, or CHECK (which must fail) and DEL, or vmnicctl gc
// (which must keep the live sandbox) and DEL. The host must end clean.
func (r *runner) damageRecord(ctx context.Context, sid string) error {
	ns, err := r.netns(sid)
	if err != nil {
		return err
	}
	chain := "bridge"
	if r.rnd.Intn(3) == 0 {
		chain = "brtap"
	}
	c, a := r.chains[chain], r.att(sid, ns)
	if _, err := c.Add(ctx, a); err != nil {
		return fmt.Errorf("ADD: %w", err)
	}
	how := recordDamage[r.rnd.Intn(len(recordDamage))]
	if err := r.damage(sid, how); err != nil {
		return err
	}
	then := []string{"del", "check", "gc"}[r.rnd.Intn(3)]
	r.fault("damage-record-" + how + "-" + then)
	switch then {
	case "check":
		if err := c.Check(ctx, a); err == nil {
			return fmt.Errorf("CHECK of a sandbox whose record was %s succeeded", how)
		}
	case "gc":
		if _, err := r.e.Vmnicctl(ctx, nil, "gc"); err != nil {
			return err
		}
	}
	if err := c.Del(ctx, a); err != nil {
		return fmt.Errorf("DEL after the record was damaged (%s): %w", how, err)
	}
	return r.clearQuarantine(sid)
}

// loseStateDir: a live NIC, then the whole state dir is deleted; then DEL,
// or vmnicctl gc and DEL. The host must end clean.
func (r *runner) loseStateDir(ctx context.Context, sid string) error {
	ns, err := r.netns(sid)
	if err != nil {
		return err
	}
	chain := "bridge"
	if r.rnd.Intn(2) == 0 {
		chain = "brtap"
	}
	c, a := r.chains[chain], r.att(sid, ns)
	if _, err := c.Add(ctx, a); err != nil {
		return fmt.Errorf("ADD: %w", err)
	}
	if err := os.RemoveAll(r.e.StateDir); err != nil {
		return err
	}
	gcFirst := r.rnd.Intn(2) == 0
	r.fault(fmt.Sprintf("lose-state-dir-%s-gc-first=%v", chain, gcFirst))
	if gcFirst {
		if _, err := r.e.Vmnicctl(ctx, nil, "gc"); err != nil {
			return err
		}
	}
	if err := c.Del(ctx, a); err != nil {
		return fmt.Errorf("DEL after the state dir was lost: %w", err)
	}
	if !gcFirst {
		if _, err := r.e.Vmnicctl(ctx, nil, "gc"); err != nil {
			return err
		}
	}
	return nil
}
