package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"time"

	"github.com/vmnic/vmnic/bench/internal/stats"
)

// ProcStartResult is what it costs to start each plugin binary at all.
type ProcStartResult struct {
	Runs     int           `json:"runs"`
	Binaries []BinaryStart `json:"binaries"`
	// Inits are the slowest package initialisers of the vmnic binary
	// (GODEBUG=inittrace=1), by median clock time.
	Inits []InitTime `json:"inits"`
	// InitTotal is the summed init clock time of the vmnic binary (median run).
	InitTotal time.Duration `json:"init_total_ns"`
}

// BinaryStart is one binary's start cost.
type BinaryStart struct {
	Name  string        `json:"name"`
	What  string        `json:"what"`
	Size  int64         `json:"size_bytes"`
	Start stats.Summary `json:"start"`
}

// InitTime is one package initialiser's cost.
type InitTime struct {
	Package string        `json:"package"`
	Clock   time.Duration `json:"clock_ns"`
	Bytes   int64         `json:"bytes"`
}

// runProcStart execs each plugin with CNI_COMMAND=VERSION (which reads its
// stdin, prints its versions and exits) many times, next to /bin/true and an
// empty Go program: the floor every exec'd plugin pays before doing anything.
func (e *env) runProcStart(ctx context.Context) error {
	runs := 60
	if e.cfg.Quick {
		runs = 10
	}
	noop, err := e.buildNoopGo(ctx)
	if err != nil {
		e.logf("empty Go program not built: %v", err)
	}
	type bin struct{ name, what, path string }
	bins := []bin{{"/bin/true", "C binary: the exec floor", "/bin/true"}}
	if noop != "" {
		bins = append(bins, bin{"empty Go program", "func main() {}: the Go runtime's start floor", noop})
	}
	for _, p := range referencePlugins {
		bins = append(bins, bin{p, "reference plugin, CNI_COMMAND=VERSION", filepath.Join(e.cniBin, p)})
	}
	if e.hasVmnic {
		bins = append(bins, bin{"vmnic", "our plugin, CNI_COMMAND=VERSION", filepath.Join(e.cniBin, "vmnic")})
	}
	if e.hasPrev {
		bins = append(bins, bin{prevVmnic, "the previous vmnic plugin, CNI_COMMAND=VERSION", filepath.Join(e.cniBin, prevVmnic)})
	}
	if e.hasPeer {
		bins = append(bins, bin{peerPlugin, "tc-redirect-tap stand-in, CNI_COMMAND=VERSION", filepath.Join(e.cniBin, peerPlugin)})
	}
	res := &ProcStartResult{Runs: runs}
	samples := make([][]time.Duration, len(bins))
	// Round-robin, as everywhere.
	for r := 0; r < runs+2; r++ {
		for i, b := range bins {
			d, err := timeExec(ctx, b.path, []string{"CNI_COMMAND=VERSION"})
			if err != nil {
				return fmt.Errorf("exec %s: %w", b.name, err)
			}
			if r >= 2 {
				samples[i] = append(samples[i], d)
			}
		}
	}
	for i, b := range bins {
		bs := BinaryStart{Name: b.name, What: b.what, Start: stats.Summarize(samples[i])}
		if fi, err := os.Stat(b.path); err == nil {
			bs.Size = fi.Size()
		}
		res.Binaries = append(res.Binaries, bs)
	}
	if e.hasVmnic {
		res.Inits, res.InitTotal = e.initTrace(ctx, filepath.Join(e.cniBin, "vmnic"), runs)
	}
	e.report.ProcStart = res
	return nil
}

func timeExec(ctx context.Context, path string, env []string) (time.Duration, error) {
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(nil)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	if err != nil {
		return d, fmt.Errorf("%w: %s", err, out.String())
	}
	return d, nil
}

// buildNoopGo builds `func main() {}` with the same toolchain.
func (e *env) buildNoopGo(ctx context.Context) (string, error) {
	dir := e.dir("noop")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module noop\n\ngo 1.21\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "noop")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v: %s", err, b)
	}
	return out, nil
}

// inittrace line: "init github.com/x/y @0.12 ms, 0.034 ms clock, 1234 bytes, 5 allocs"
var initLine = regexp.MustCompile(`^init (\S+) @[0-9.]+ ms, ([0-9.]+) ms clock, ([0-9]+) bytes`)

// initTrace runs the binary with GODEBUG=inittrace=1 and returns the
// slowest initialisers (median over runs) and the median total.
func (e *env) initTrace(ctx context.Context, path string, runs int) ([]InitTime, time.Duration) {
	clock := map[string][]time.Duration{}
	bytesBy := map[string]int64{}
	var totals []time.Duration
	for r := 0; r < runs; r++ {
		cmd := exec.CommandContext(ctx, path)
		cmd.Env = append(os.Environ(), "CNI_COMMAND=VERSION", "GODEBUG=inittrace=1")
		cmd.Stdin = bytes.NewReader(nil)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			return nil, 0
		}
		var total time.Duration
		sc := bufio.NewScanner(&stderr)
		for sc.Scan() {
			m := initLine.FindStringSubmatch(sc.Text())
			if m == nil {
				continue
			}
			ms, _ := strconv.ParseFloat(m[2], 64)
			d := time.Duration(ms * float64(time.Millisecond))
			clock[m[1]] = append(clock[m[1]], d)
			b, _ := strconv.ParseInt(m[3], 10, 64)
			bytesBy[m[1]] = b
			total += d
		}
		totals = append(totals, total)
	}
	var inits []InitTime
	for pkg, ds := range clock {
		inits = append(inits, InitTime{Package: pkg, Clock: stats.Summarize(ds).Median, Bytes: bytesBy[pkg]})
	}
	sort.Slice(inits, func(i, j int) bool { return inits[i].Clock > inits[j].Clock })
	if len(inits) > 10 {
		inits = inits[:10]
	}
	return inits, stats.Summarize(totals).Median
}
