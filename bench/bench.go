// Package bench measures what vmnic costs at pod start and NIC hot-plug,
// side by side with the reference CNI plugins, and writes a report
// (Markdown + JSON) and PNG plots. `make bench` runs it through
// cmd/vmnic-bench; BENCH_QUICK=1 makes a smoke run of a minute or two.
//
// Every measurement runs against the real thing: fresh network namespaces,
// the reference plugins and the vmnic plugin exec'd by libcni exactly as a
// runtime does, real QEMU, the Cloud Hypervisor and Firecracker simulators.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/bench/internal/fixture"
	"github.com/vmnic/vmnic/bench/internal/timedexec"
	"github.com/vmnic/vmnic/internal/steptime"
)

// Config says what to run and where things are.
type Config struct {
	// Quick is the smoke mode: few iterations, small populations.
	Quick bool
	// OutDir receives report.md, report.json and the PNG plots.
	OutDir string
	// RepoRoot is the vmnic checkout (for nri-hook benchmarks and binaries).
	RepoRoot string
	// CNIBinDir holds the reference plugins (bridge, host-local, tuning, tap).
	CNIBinDir string
	// BinDir holds our binaries (vmnic, vmnicctl, vmnic-nri).
	BinDir string
	// RefVmnic, when set, is a second vmnic plugin binary (e.g. a build of
	// an earlier commit), measured as the variant "vmnic-prev" interleaved
	// with the others, for a before/after ratio from one run (without it, a
	// vmnic-prev in BinDir is used when there is one).
	RefVmnic string
	// Sections to run; empty means all (see SectionNames).
	Sections []string
	// Iterations of the cycle comparison; 0 picks the mode's default.
	Iterations int
	// PluginEnv is added to every plugin's environment (experiments, e.g.
	// GOMAXPROCS=1); the report lists it.
	PluginEnv []string
	// Command is the command line, for the report.
	Command string
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

// Section names.
const (
	SecProcStart   = "process-start"
	SecCycle       = "cycle"
	SecSteps       = "steps"
	SecEngine      = "engine"
	SecConcurrency = "concurrency"
	SecScale       = "scale"
	SecHotplug     = "hotplug"
	SecNRI         = "nri"
	SecTeardown    = "teardown"
)

// SectionNames lists every section.
var SectionNames = []string{SecProcStart, SecCycle, SecSteps, SecEngine, SecConcurrency, SecScale, SecHotplug, SecNRI, SecTeardown}

// env is one run's shared state.
type env struct {
	cfg      Config
	tmp      string // private temp dir, removed at the end
	state    string // private dir under /var/lib for vmnic's state dirs (tmp when there is none)
	shm      string // private dir on tmpfs (/dev/shm), "" when there is none
	cniBin   string // private copy of the plugin binaries
	cni      *libcni.CNIConfig
	exec     *timedexec.Exec
	stepFile string
	hasVmnic bool
	hasPrev  bool // the bin dir has vmnic-prev (the plugin before a change)
	hasPeer  bool // peer-tcredirect was built
	report   *Report

	// vmnicCalls are the vmnic execs the sections saw, for the steps table.
	vmnicCalls []vmnicCall
}

func (e *env) logf(format string, args ...any) {
	if e.cfg.Log != nil {
		fmt.Fprintf(e.cfg.Log, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
}

func (e *env) want(section string) bool {
	if len(e.cfg.Sections) == 0 {
		return true
	}
	for _, s := range e.cfg.Sections {
		if s == section {
			return true
		}
	}
	return false
}

// referencePlugins are the reference CNI plugins the benchmark execs.
var referencePlugins = []string{"bridge", "host-local", "tuning", "tap"}

// Run runs the benchmark and writes the report into cfg.OutDir.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the benchmark needs root (network namespaces, links, tc)")
	}
	if cfg.OutDir == "" {
		return nil, errors.New("no output directory")
	}
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("output dir: %w", err)
	}
	tmp, err := os.MkdirTemp("", "vmnic-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	e := &env{cfg: cfg, tmp: tmp, state: tmp, cniBin: filepath.Join(tmp, "cni")}
	// vmnic's state goes where the product keeps it by default
	// (/var/lib/vmnic): the benchmark measures the default. On this
	// machine's disk a file created in the crowded /tmp costs several times
	// one created under /var/lib (docs/performance.md); the tmpfs variants
	// use /dev/shm.
	if st, err := os.MkdirTemp("/var/lib", "vmnic-bench."); err == nil {
		e.state = st
		defer os.RemoveAll(st)
	}
	// The VMM simulators' sockets are in tmp: let the plugin (which
	// inherits this through libcni) dial them.
	os.Setenv("VMNIC_VMM_SOCKET_DIRS", tmp)
	if shm, err := os.MkdirTemp("/dev/shm", "vmnb-bench-"); err == nil {
		e.shm = shm
		defer os.RemoveAll(shm)
	}
	e.report = &Report{Quick: cfg.Quick, Command: cfg.Command, PluginEnv: cfg.PluginEnv, Started: time.Now(), Machine: describeMachine(), Skipped: map[string]string{}}
	if n, err := fixture.CleanupStale(); err != nil {
		return nil, fmt.Errorf("remove leftovers of an earlier run: %w", err)
	} else if n > 0 {
		e.logf("removed %d leftover namespaces/bridges of an earlier run", n)
	}
	defer fixture.CleanupStale()

	if err := e.installPlugins(); err != nil {
		return nil, err
	}
	e.buildPeer(ctx)
	e.stepFile = filepath.Join(tmp, "steps.jsonl")
	e.exec = &timedexec.Exec{Env: append([]string{steptime.EnvVar + "=" + e.stepFile}, cfg.PluginEnv...)}
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{e.cniBin}, filepath.Join(tmp, "cni-cache"), e.exec)

	type section struct {
		name string
		run  func(context.Context) error
	}
	sections := []section{
		// Scale last among the measurements (it leaves a thousand netns for
		// the kernel to free); steps last of all (it summarises the others).
		{SecProcStart, e.runProcStart},
		{SecCycle, e.runCycle},
		{SecEngine, e.runEngine},
		{SecConcurrency, e.runConcurrency},
		{SecHotplug, e.runHotplug},
		{SecNRI, e.runNRI},
		{SecTeardown, e.runTeardown},
		{SecScale, e.runScale},
		{SecSteps, e.runSteps},
	}
	for _, s := range sections {
		if !e.want(s.name) {
			e.report.Skipped[s.name] = "not selected"
			continue
		}
		if err := ctx.Err(); err != nil {
			return e.report, err
		}
		e.logf("section %s", s.name)
		t0 := time.Now()
		err := s.run(ctx)
		var skip *skipError
		switch {
		case errors.As(err, &skip):
			e.report.Skipped[s.name] = skip.reason
			e.logf("section %s skipped: %s", s.name, skip.reason)
		case err != nil:
			e.report.Errors = append(e.report.Errors, fmt.Sprintf("%s: %v", s.name, err))
			e.logf("section %s failed: %v", s.name, err)
		default:
			e.logf("section %s done in %s", s.name, time.Since(t0).Round(time.Millisecond))
		}
	}
	e.report.Duration = time.Since(e.report.Started)
	e.report.Machine.LoadEnd = loadAvg()
	e.report.evaluateTargets()
	if err := e.report.write(cfg.OutDir); err != nil {
		return e.report, err
	}
	return e.report, nil
}

// skipError marks a section that could not run here (a missing binary, a
// package not written yet); the report says why.
type skipError struct{ reason string }

func (s *skipError) Error() string { return "skipped: " + s.reason }

func skipf(format string, args ...any) error { return &skipError{fmt.Sprintf(format, args...)} }

// installPlugins copies the plugin binaries into a private directory, so a
// rebuild elsewhere during the run can't change what is measured.
func (e *env) installPlugins() error {
	if err := os.MkdirAll(e.cniBin, 0o755); err != nil {
		return err
	}
	for _, p := range referencePlugins {
		if err := copyFile(filepath.Join(e.cfg.CNIBinDir, p), filepath.Join(e.cniBin, p)); err != nil {
			return fmt.Errorf("reference plugin %s (run `make tools`): %w", p, err)
		}
	}
	src := filepath.Join(e.cfg.BinDir, "vmnic")
	if err := copyFile(src, filepath.Join(e.cniBin, "vmnic")); err != nil {
		e.logf("vmnic plugin not available (%v): the vmnic variants are skipped", err)
		return nil
	}
	e.hasVmnic = true
	// The previous plugin (a before/after run): -ref-vmnic, else vmnic-prev
	// in the bin dir when it has one.
	prev := filepath.Join(e.cfg.BinDir, prevVmnic)
	if e.cfg.RefVmnic != "" {
		prev = e.cfg.RefVmnic
	}
	if err := copyFile(prev, filepath.Join(e.cniBin, prevVmnic)); err == nil {
		e.hasPrev = true
	} else if e.cfg.RefVmnic != "" {
		return fmt.Errorf("reference vmnic plugin (-ref-vmnic): %w", err)
	}
	return nil
}

// buildPeer builds the tc-redirect-tap stand-in (bench/cmd/peer-tcredirect)
// into the private plugin dir; without it the peer variant is skipped.
func (e *env) buildPeer(ctx context.Context) {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", filepath.Join(e.cniBin, peerPlugin), "./cmd/peer-tcredirect")
	cmd.Dir = filepath.Join(e.cfg.RepoRoot, "bench")
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod -buildvcs=false", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		e.logf("peer-tcredirect not built (%v: %s): its variant is skipped", err, b)
		return
	}
	e.hasPeer = true
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// Machine describes where the numbers were taken.
type Machine struct {
	CPU       string `json:"cpu"`
	CPUs      int    `json:"cpus"`
	MemTotal  string `json:"mem_total"`
	Kernel    string `json:"kernel"`
	OS        string `json:"os"`
	Go        string `json:"go"`
	LoadStart string `json:"load_start"`
	LoadEnd   string `json:"load_end"`
}

func describeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadStart: loadAvg()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
				m.MemTotal = strings.TrimSpace(v)
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	return m
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
