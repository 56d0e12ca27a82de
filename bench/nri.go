package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"

	"github.com/vmnic/vmnic/bench/internal/fixture"
	"github.com/vmnic/vmnic/bench/internal/stats"
	"github.com/vmnic/vmnic/netsetup"
)

// NRIResult is the NRI hook's handler latency and memory, driven by a fake
// runtime (containerd's own NRI adaptation package) over the real NRI
// socket, with the real vmnic-nri binary as an external plugin.
type NRIResult struct {
	Sandboxes int `json:"sandboxes"`
	// Handler round trips as the runtime sees them.
	RunPodSandbox    stats.Summary `json:"run_pod_sandbox"`
	CreateContainer  stats.Summary `json:"create_container"`
	StopPodSandbox   stats.Summary `json:"stop_pod_sandbox"`
	RemovePodSandbox stats.Summary `json:"remove_pod_sandbox"`
	// RunPodSandboxLast is RunPodSandbox over the last tenth of the
	// population (the most sandboxes already live).
	RunPodSandboxLast stats.Summary `json:"run_pod_sandbox_last"`
	// Memory of the vmnic-nri process (kB): after it synchronised with no
	// sandbox, and peak (VmHWM) with Sandboxes live.
	RSSIdleKB int64  `json:"rss_idle_kb"`
	HWMIdleKB int64  `json:"hwm_idle_kb"`
	RSSKB     int64  `json:"rss_kb"`
	HWMKB     int64  `json:"hwm_kb"`
	Errors    int    `json:"errors"`
	FirstErr  string `json:"first_error,omitempty"`
	// GoBench is the nri-hook's own Go benchmark output (full mode only).
	GoBench string `json:"go_bench,omitempty"`
	// StateDir says where the state dir was: under /var/lib, where the
	// product keeps it by default (netsetup.DefaultStateDir), when the
	// bench can write there; else in the bench's temp dir.
	StateDir string `json:"state_dir,omitempty"`
	// OnTmpfs is the same run with the state dir on tmpfs, which has no
	// inode allocation cost: what the handler costs without the disk.
	OnTmpfs *NRIResult `json:"on_tmpfs,omitempty"`
}

// nriStateParent is where the bench makes the state dir of the NRI run:
// the parent of the product's default state dir (/var/lib), so that the
// run measures the filesystem and directory the product writes to, and
// how it is described. On ext4 the cost of a new file depends on where
// its directory's inodes are, and this machine's /tmp and /var/lib differ
// from a fresh directory elsewhere on the same disk.
func nriStateParent(fallback string) (dir, where string, cleanup func()) {
	parent := filepath.Dir(netsetup.DefaultStateDir)
	if d, err := os.MkdirTemp(parent, "vmnic-bench-nri-"); err == nil {
		return d, "a temp dir under " + parent + " (where the default " + netsetup.DefaultStateDir + " is)", func() { os.RemoveAll(d) }
	}
	return fallback, "the bench's temp dir (" + parent + " is not writable)", func() {}
}

type quietNRILog struct{}

func (quietNRILog) Debugf(context.Context, string, ...interface{}) {}
func (quietNRILog) Infof(context.Context, string, ...interface{})  {}
func (quietNRILog) Warnf(context.Context, string, ...interface{})  {}
func (quietNRILog) Errorf(context.Context, string, ...interface{}) {}

const nriVMHandler = "vmnb-vm-handler"

// runNRI drives bin/vmnic-nri through a fake runtime: N VM pods (own netns)
// get RunPodSandbox and CreateContainer(vmm), the plugin's memory is read
// with N live, then every pod is stopped and removed.
func (e *env) runNRI(ctx context.Context) error {
	src := filepath.Join(e.cfg.BinDir, "vmnic-nri")
	bin := e.dir("vmnic-nri")
	if err := copyFile(src, bin); err != nil {
		return skipf("bin/vmnic-nri not built (%v)", err)
	}
	n := 1000
	if e.cfg.Quick {
		n = 100
	}
	nrilog.Set(quietNRILog{})
	parent, where, cleanup := nriStateParent(e.dir("nri-state"))
	defer cleanup()
	res, err := e.runNRIOnce(ctx, bin, n, filepath.Join(parent, "state"))
	if err != nil {
		return err
	}
	res.StateDir = where
	if shm := e.shmDir("nri-state"); shm != "" {
		e.logf("nri: again with the state dir on tmpfs")
		if res.OnTmpfs, err = e.runNRIOnce(ctx, bin, n, shm); err != nil {
			return err
		}
		res.OnTmpfs.StateDir = "tmpfs (" + filepath.Dir(shm) + ")"
	}
	if !e.cfg.Quick {
		res.GoBench = e.nriGoBench(ctx, parent)
	}
	e.report.NRI = res
	return nil
}

// runNRIOnce is one run of the NRI scenario with the state dir at state.
func (e *env) runNRIOnce(ctx context.Context, bin string, n int, state string) (*NRIResult, error) {

	// Unix socket paths must stay short.
	sockDir, err := os.MkdirTemp("", "vmnb-nri-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockDir)
	socket := filepath.Join(sockDir, "nri.sock")
	// Each run has its own netns and runtime dirs (the state dir is the
	// caller's).
	tag := filepath.Base(sockDir)
	nsDir, rtDir := e.dir(tag, "nri-netns"), e.dir(tag, "nri-run")
	if d := e.shmDir(tag, "nri-run"); d != "" {
		rtDir = d // the runtime dirs are under /run (tmpfs) on a node
	}
	for _, d := range []string{filepath.Join(sockDir, "plugins"), filepath.Join(sockDir, "conf.d"), nsDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	cfg := filepath.Join(sockDir, "vmnic-nri.yaml")
	conf := fmt.Sprintf("runtimeHandlers: [%s]\nvmAnnotation: true\nstateDir: %s\nnetnsDir: %s\nruntimeDir: %s\nlogFile: %s\nlogLevel: warn\n",
		nriVMHandler, state, nsDir, rtDir, e.dir(tag+"-vmnic-nri.log"))
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, err
	}

	synced := make(chan struct{}, 16)
	var started atomic.Bool
	syncFn := func(ctx context.Context, cb adaptation.SyncCB) error {
		_, err := cb(ctx, nil, nil)
		if err == nil && started.Load() {
			synced <- struct{}{}
		}
		return err
	}
	updateFn := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	r, err := adaptation.New("vmnb-fake-runtime", "v0.0.1", syncFn, updateFn,
		adaptation.WithPluginPath(filepath.Join(sockDir, "plugins")),
		adaptation.WithPluginConfigPath(filepath.Join(sockDir, "conf.d")),
		adaptation.WithSocketPath(socket))
	if err != nil {
		return nil, fmt.Errorf("fake NRI runtime: %w", err)
	}
	if err := r.Start(); err != nil {
		return nil, fmt.Errorf("fake NRI runtime: %w", err)
	}
	defer r.Stop()
	started.Store(true)

	var stderr bytes.Buffer
	cmd := exec.Command(bin, "--socket", socket, "--idx", "10", "--name", "vmnic", "--config", cfg)
	cmd.Stderr = &stderr
	// No Pdeathsig: it fires when the forking *thread* exits, and the
	// netns fixtures end threads.
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start vmnic-nri: %w", err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	select {
	case <-synced:
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("vmnic-nri did not register and synchronise within 30 s: %s", stderr.String())
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	r.BlockPluginSync().Unblock()
	res := &NRIResult{Sandboxes: n}
	res.RSSIdleKB, res.HWMIdleKB = procMem(cmd.Process.Pid)

	type pod struct {
		sb *api.PodSandbox
		ns *fixture.Netns
	}
	pods := make([]pod, 0, n)
	defer func() {
		for _, p := range pods {
			p.ns.Delete()
		}
	}()
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 10*time.Second) }
	fail := func(err error) {
		res.Errors++
		if res.FirstErr == "" {
			res.FirstErr = err.Error()
		}
	}
	var run, create, stop, remove, runLast []time.Duration
	e.logf("nri: %d VM pods", n)
	for i := 0; i < n; i++ {
		ns, err := fixture.NewNetns("nri")
		if err != nil {
			return nil, err
		}
		id := fmt.Sprintf("vmnb-nri-%04d", i)
		sb := &api.PodSandbox{Id: id, Name: "pod-" + id, Uid: "uid-" + id, Namespace: "vmnb",
			RuntimeHandler: nriVMHandler, Annotations: map[string]string{"vmnic.io/vm": "true", "vmnic.io/vmm-container": "vmm"},
			Linux: &api.LinuxPodSandbox{Namespaces: []*api.LinuxNamespace{{Type: "ipc"}, {Type: "uts"}, {Type: "network", Path: ns.Path}}}}
		pods = append(pods, pod{sb, ns})
		c, cancel := call()
		t0 := time.Now()
		err = r.RunPodSandbox(c, &api.RunPodSandboxRequest{Pod: sb})
		d := time.Since(t0)
		cancel()
		if err != nil {
			fail(fmt.Errorf("RunPodSandbox %s: %w", id, err))
			continue
		}
		run = append(run, d)
		if i >= n-n/10 {
			runLast = append(runLast, d)
		}
		ctr := &api.Container{Id: id + "-vmm", PodSandboxId: id, Name: "vmm", Args: []string{"/bin/true"}, Linux: &api.LinuxContainer{}}
		c, cancel = call()
		t0 = time.Now()
		_, err = r.CreateContainer(c, &api.CreateContainerRequest{Pod: sb, Container: ctr})
		d = time.Since(t0)
		cancel()
		if err != nil {
			fail(fmt.Errorf("CreateContainer %s: %w", id, err))
			continue
		}
		create = append(create, d)
	}
	res.RSSKB, res.HWMKB = procMem(cmd.Process.Pid)
	if res.Errors > 0 {
		logTail, _ := os.ReadFile(e.dir(tag + "-vmnic-nri.log"))
		res.FirstErr += fmt.Sprintf(" (vmnic-nri stderr: %q; log: %q)", tail(stderr.String(), 800), tail(string(logTail), 800))
	}
	if st, err := netsetup.Open(state); err == nil {
		if ids, err := st.IDs(); err == nil && len(ids) < n-res.Errors {
			fail(fmt.Errorf("only %d records for %d pods", len(ids), n))
		}
	}
	for _, p := range pods {
		c, cancel := call()
		t0 := time.Now()
		err := r.StopPodSandbox(c, &api.StopPodSandboxRequest{Pod: p.sb})
		d := time.Since(t0)
		cancel()
		if err != nil {
			fail(fmt.Errorf("StopPodSandbox %s: %w", p.sb.Id, err))
			continue
		}
		stop = append(stop, d)
		c, cancel = call()
		t0 = time.Now()
		err = r.RemovePodSandbox(c, &api.RemovePodSandboxRequest{Pod: p.sb})
		d = time.Since(t0)
		cancel()
		if err != nil {
			fail(fmt.Errorf("RemovePodSandbox %s: %w", p.sb.Id, err))
			continue
		}
		remove = append(remove, d)
	}
	res.RunPodSandbox, res.CreateContainer = stats.Summarize(run), stats.Summarize(create)
	res.StopPodSandbox, res.RemovePodSandbox = stats.Summarize(stop), stats.Summarize(remove)
	res.RunPodSandboxLast = stats.Summarize(runLast)
	e.logf("nri: RunPodSandbox p50 %s p99 %s; peak RSS %d kB", res.RunPodSandbox.Median, res.RunPodSandbox.P99, res.HWMKB)
	return res, nil
}

// procMem reads VmRSS and VmHWM (kB) of a process.
func procMem(pid int) (rss, hwm int64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm
}

// nriGoBench runs the nri-hook's own benchmark, when it has one, with its
// temp dirs (the state dir among them) in tmp, and returns its result
// lines.
func (e *env) nriGoBench(ctx context.Context, tmp string) string {
	if _, err := os.Stat(filepath.Join(e.cfg.RepoRoot, "nri-hook", "bench_test.go")); err != nil {
		return ""
	}
	bctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(bctx, "go", "test", "-count=1", "-run", "^$", "-bench", ".", "-benchtime", "300x", "./nri-hook")
	cmd.Dir = e.cfg.RepoRoot
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Benchmark") {
			lines = append(lines, strings.Join(strings.Fields(l), " "))
		}
	}
	if err != nil {
		lines = append(lines, fmt.Sprintf("(go test failed: %v)", err))
	}
	return strings.Join(lines, "\n")
}

func (r *Report) nriMarkdown(b *strings.Builder) {
	n := r.NRI
	fmt.Fprintf(b, "A fake runtime (containerd's NRI `pkg/adaptation`) drives the real `vmnic-nri` as an external plugin over the NRI socket: %d VM pods, each with its own netns, get RunPodSandbox then CreateContainer(vmm); then all are stopped and removed. The state dir is in %s; the runtime dirs on tmpfs (as /run/vmnic). Round trips as the runtime sees them (its request timeout is 2 s).\n\n", n.Sandboxes, n.StateDir)
	b.WriteString("| Event | calls | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|\n")
	row := func(name string, s stats.Summary) {
		fmt.Fprintf(b, "| %s | %d | %s | %s | %s | %s |\n", name, s.N, ms(s.Median), ms(s.P90), ms(s.P99), ms(s.Max))
	}
	row("RunPodSandbox", n.RunPodSandbox)
	row(fmt.Sprintf("RunPodSandbox, last %d (most sandboxes live)", n.RunPodSandboxLast.N), n.RunPodSandboxLast)
	row("CreateContainer (VMM container)", n.CreateContainer)
	row("StopPodSandbox", n.StopPodSandbox)
	row("RemovePodSandbox", n.RemovePodSandbox)
	if t := n.OnTmpfs; t != nil {
		row("RunPodSandbox, state dir on "+t.StateDir, t.RunPodSandbox)
		row(fmt.Sprintf("RunPodSandbox, state dir on tmpfs, last %d", t.RunPodSandboxLast.N), t.RunPodSandboxLast)
		if t.Errors > 0 {
			fmt.Fprintf(b, "\nErrors with the state dir on tmpfs: %d; first: `%s`\n", t.Errors, t.FirstErr)
		}
	}
	fmt.Fprintf(b, "\n`vmnic-nri` memory: %.1f MB RSS idle (peak %.1f MB); with %d sandboxes %.1f MB RSS, **peak RSS (VmHWM) %.1f MB**. Errors: %d.\n",
		float64(n.RSSIdleKB)/1024, float64(n.HWMIdleKB)/1024, n.Sandboxes, float64(n.RSSKB)/1024, float64(n.HWMKB)/1024, n.Errors)
	if n.FirstErr != "" {
		fmt.Fprintf(b, "\nFirst error: `%s`\n", n.FirstErr)
	}
	if n.GoBench != "" {
		fmt.Fprintf(b, "\nThe nri-hook's own benchmark (`go test -run '^$' -bench . -benchtime 300x ./nri-hook`, 1,000 records, its temp dirs where the state dir above is):\n\n```\n%s\n```\n", n.GoBench)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// nriTarget: issue 15's goal for the NRI hook on the pod-start path.
func (r *Report) nriTarget() Target {
	t := Target{Name: "NRI RunPodSandbox", Goal: "RunPodSandbox p50 ≤ 1 ms and p99 ≤ 3 ms with 1,000 sandboxes", Status: "n/a", Measured: "not measured"}
	if n := r.NRI; n != nil && n.RunPodSandbox.N > 0 {
		t.Measured = fmt.Sprintf("p50 %s ms, p99 %s ms over %d pods (up to %d sandboxes; state dir in %s)", ms(n.RunPodSandbox.Median), ms(n.RunPodSandbox.P99), n.RunPodSandbox.N, n.Sandboxes, n.StateDir)
		if t2 := n.OnTmpfs; t2 != nil && t2.RunPodSandbox.N > 0 {
			t.Measured += fmt.Sprintf("; on tmpfs p50 %s ms, p99 %s ms", ms(t2.RunPodSandbox.Median), ms(t2.RunPodSandbox.P99))
		}
		t.Status = status(n.RunPodSandbox.Median <= time.Millisecond && n.RunPodSandbox.P99 <= 3*time.Millisecond)
		if n.Sandboxes < 1000 {
			t.Measured += " (quick mode: fewer sandboxes)"
		}
	}
	return t
}
