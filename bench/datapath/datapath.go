// Package datapath measures how fast a vmnic NIC carries traffic: vmnic's
// cni backend with each data path (tc u32 + mirred, cls_bpf redirect) next
// to vmnic's bridge backend (the TAP is a host-bridge port: no veth and no
// tc hop, the limit for a TAP-attached VM), in one interleaved run with the
// same guests:
//
//   - the ARP/ICMP guest stand-in (internal/testkit/tapguest) on the TAP fd
//     answers the host's echo requests: packet rate with 1 and 64
//     outstanding, RTT median and p99;
//   - gVisor's netstack on the TAP fd with a virtio-net header and GSO
//     (see netstack.go) serves TCP: throughput host → guest and guest →
//     host, CPU time per GB, the sizes of the frames the guest reads from
//     the TAP (do GSO super-frames cross the redirect?), and two flows over
//     a TAP with 1 and with 2 queue pairs.
//
// The host side runs in the calling process's netns; its links carry the
// prefix vmndp, the pods' netns are mounted in the run's temp dir, the
// subnets are 10.211.0.0/16. Run it as root, one run at a time.
package datapath

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/internal/testkit/tapguest"
	"github.com/vmnic/vmnic/netsetup"
)

// Config says what to run.
type Config struct {
	// Quick is the smoke mode: one short round, tiny transfers.
	Quick bool
	// Rounds of the interleaved measurements (0: 5, quick 1).
	Rounds int
	// PingDuration of each echo run (0: 2 s, quick 200 ms).
	PingDuration time.Duration
	// TCPBytes per transfer (0: 256 MiB, quick 4 MiB).
	TCPBytes int64
	// NoGSO opens the TCP guest's TAP without offloads (the kernel then
	// segments before the TAP).
	NoGSO bool
	// OutDir, when set, receives datapath.md, datapath.json and the plot.
	OutDir string
	// Command is the command line, for the report.
	Command string
	// Variants, when set, are the names of the variants to run (the
	// bridge backend is always run: the ratios are to it).
	Variants []string
	// Experiments adds the experimental variants (experiment.go).
	Experiments bool
	// EchoOnly skips the TCP steps.
	EchoOnly bool
	// Log receives progress lines; nil discards them.
	Log io.Writer
}

func (c *Config) defaults() {
	if c.Rounds == 0 {
		c.Rounds = 5
		if c.Quick {
			c.Rounds = 1
		}
	}
	if c.PingDuration == 0 {
		c.PingDuration = 2 * time.Second
		if c.Quick {
			c.PingDuration = 200 * time.Millisecond
		}
	}
	if c.TCPBytes == 0 {
		c.TCPBytes = 256 << 20
		if c.Quick {
			c.TCPBytes = 4 << 20
		}
	}
}

// TCPResult is one TCP transfer (or two concurrent flows).
type TCPResult struct {
	Flows       int     `json:"flows"`
	Bytes       int64   `json:"bytes"`
	Seconds     float64 `json:"seconds"`
	Gbps        float64 `json:"gbit_per_s"`
	ProcCPUPerG float64 `json:"process_cpu_s_per_gb"` // this process's user+sys CPU seconds per GB
	HostCPUPerG float64 `json:"machine_cpu_s_per_gb"` // all CPUs' busy seconds (/proc/stat) per GB
	Frames      FrameStats
}

// Round is one variant's measurements in one round.
type Round struct {
	Ping1     PingResult `json:"ping_1"`
	Ping64    PingResult `json:"ping_64"`
	HostToVM  TCPResult  `json:"tcp_host_to_guest"`
	VMToHost  TCPResult  `json:"tcp_guest_to_host"`
	TwoFlows1 TCPResult  `json:"two_flows_1_queue"`
	TwoFlows2 TCPResult  `json:"two_flows_2_queues"`
}

// VariantResult is a variant over all rounds.
type VariantResult struct {
	Name     string  `json:"name"`
	DataPath string  `json:"datapath,omitempty"`
	Tweak    Tweak   `json:"experiment,omitempty"`
	Rounds   []Round `json:"rounds"`
	// RTT1Quantiles are the RTT quantiles (µs) at 1 outstanding over all
	// rounds' samples, at RTTQuantiles (for the plot).
	RTT1Quantiles []float64 `json:"rtt1_quantiles_us"`
	rtt1          []time.Duration
}

// Metric is one number per variant: its median over rounds and spread,
// and its ratio to the bridge backend (per round, then median and spread).
type Metric struct {
	Name         string             `json:"name"`
	Unit         string             `json:"unit"`
	HigherBetter bool               `json:"higher_is_better"`
	Median       map[string]float64 `json:"median"`
	Min          map[string]float64 `json:"min"`
	Max          map[string]float64 `json:"max"`
	Ratio        map[string]float64 `json:"ratio_vs_bridge"`
	RatioMin     map[string]float64 `json:"ratio_min"`
	RatioMax     map[string]float64 `json:"ratio_max"`
}

// Target is one of the targets.
type Target struct {
	Name     string  `json:"name"`
	Want     string  `json:"want"`
	Variant  string  `json:"variant"`
	Ratio    float64 `json:"ratio"`
	RatioMin float64 `json:"ratio_min"`
	RatioMax float64 `json:"ratio_max"`
	Met      bool    `json:"met"`
}

// Report is a run.
type Report struct {
	Quick    bool            `json:"quick"`
	Command  string          `json:"command,omitempty"`
	Started  time.Time       `json:"started"`
	Duration time.Duration   `json:"duration_ns"`
	Kernel   string          `json:"kernel"`
	CPUs     int             `json:"cpus"`
	LoadAvg  [2]string       `json:"loadavg_start_end"`
	Rounds   int             `json:"rounds"`
	GSO      bool            `json:"gso"`
	Variants []VariantResult `json:"variants"`
	Metrics  []Metric        `json:"metrics"`
	Targets  []Target        `json:"targets"`
	Notes    []string        `json:"notes,omitempty"`
	// Retries counts echo runs whose guest was opened a second time
	// because it did not answer the warm-up.
	Retries int `json:"retries"`
}

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, "%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
	}
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// Run sets the variants up, measures them interleaved and tears them down.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the data-path benchmark needs root (netns, links, tc, BPF)")
	}
	cfg.defaults()
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	rep := &Report{Quick: cfg.Quick, Command: cfg.Command, Started: time.Now(), Kernel: unix.ByteSliceToString(uts.Release[:]),
		CPUs: runtime.NumCPU(), Rounds: cfg.Rounds, GSO: !cfg.NoGSO}
	rep.LoadAvg[0] = loadAvg()
	if n := cleanupStale(); n > 0 {
		cfg.logf("removed %d leftover links of an earlier run", n)
	}
	state, err := os.MkdirTemp("", "vmnic-dp-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(state)
	st, err := netsetup.Open(state)
	if err != nil {
		return nil, err
	}
	netnsDir := filepath.Join(state, "netns")
	m := sandbox.New(sandbox.Config{Store: st, NetnsDir: netnsDir})

	all := defaultVariants()
	if cfg.Experiments {
		all = append(all, experimentVariants()...)
	}
	variants, err := selectVariants(all, cfg.Variants)
	if err != nil {
		return nil, err
	}
	var nics, mqNICs []*nic
	defer func() {
		for _, n := range append(nics, mqNICs...) {
			if err := n.teardown(context.WithoutCancel(ctx), m); err != nil {
				cfg.logf("teardown %s: %v", n.v.Name, err)
			}
		}
		cleanupStale()
	}()
	for i, v := range variants {
		n, err := setupNIC(ctx, m, netnsDir, v, i)
		if err != nil {
			return rep, err
		}
		nics = append(nics, n)
		mq := v
		mq.Queues = 2
		n2, err := setupNIC(ctx, m, netnsDir, mq, 100+i)
		if err != nil {
			return rep, err
		}
		mqNICs = append(mqNICs, n2)
		rep.Variants = append(rep.Variants, VariantResult{Name: v.Name, DataPath: n.dataPath, Tweak: v.Tweak, Rounds: make([]Round, cfg.Rounds)})
		cfg.logf("variant %s: TAP %s (data path %q)", v.Name, n.tap, n.dataPath)
	}

	retry := func(n *nic) func(error) {
		return func(err error) {
			rep.Retries++
			cfg.logf("%s: guest opened again: %v", n.v.Name, err)
		}
	}
	type step struct {
		name string
		run  func(n, mq *nic, r *Round) error
	}
	steps := []step{
		{"echo, 1 outstanding", func(n, _ *nic, r *Round) (err error) {
			var rtts []time.Duration
			r.Ping1, rtts, err = pingGuest(n, 1, cfg.PingDuration, retry(n))
			rep.variant(n.v.Name).rtt1 = append(rep.variant(n.v.Name).rtt1, rtts...)
			return err
		}},
		{"echo, 64 outstanding", func(n, _ *nic, r *Round) (err error) {
			r.Ping64, _, err = pingGuest(n, 64, cfg.PingDuration, retry(n))
			return err
		}},
		{"TCP host → guest", func(n, _ *nic, r *Round) (err error) {
			r.HostToVM, err = tcpRun(n, 1, 1, true, cfg.TCPBytes, !cfg.NoGSO)
			return err
		}},
		{"TCP guest → host", func(n, _ *nic, r *Round) (err error) {
			r.VMToHost, err = tcpRun(n, 1, 1, false, cfg.TCPBytes, !cfg.NoGSO)
			return err
		}},
		{"two TCP flows host → guest, 1 queue pair", func(n, _ *nic, r *Round) (err error) {
			r.TwoFlows1, err = tcpRun(n, 1, 2, true, cfg.TCPBytes/2, !cfg.NoGSO)
			return err
		}},
		{"two TCP flows host → guest, 2 queue pairs", func(_, mq *nic, r *Round) (err error) {
			r.TwoFlows2, err = tcpRun(mq, 2, 2, true, cfg.TCPBytes/2, !cfg.NoGSO)
			return err
		}},
	}
	if cfg.EchoOnly {
		steps = steps[:2] // the two echo steps
	}
	for round := 0; round < cfg.Rounds; round++ {
		for _, s := range steps {
			// Interleaved: every variant runs each step before the next
			// step, in an order rotated every round.
			for k := range nics {
				i := (k + round) % len(nics)
				if err := ctx.Err(); err != nil {
					return rep, err
				}
				if err := s.run(nics[i], mqNICs[i], &rep.Variants[i].Rounds[round]); err != nil {
					return rep, fmt.Errorf("round %d, %s, %s: %w", round+1, s.name, nics[i].v.Name, err)
				}
			}
		}
		cfg.logf("round %d of %d done", round+1, cfg.Rounds)
	}
	for i := range rep.Variants {
		rep.Variants[i].RTT1Quantiles = quantilesUs(rep.Variants[i].rtt1, RTTQuantiles)
	}
	rep.summarize()
	rep.LoadAvg[1] = loadAvg()
	rep.Duration = time.Since(rep.Started)
	if cfg.OutDir != "" {
		if err := rep.write(cfg.OutDir); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

func (r *Report) variant(name string) *VariantResult {
	for i := range r.Variants {
		if r.Variants[i].Name == name {
			return &r.Variants[i]
		}
	}
	return nil
}

// pingGuest opens the ARP/ICMP stand-in on n's TAP and pings it from the
// host with window outstanding for d. A guest that does not answer the
// warm-up (the host resolves it with ARP) is opened again once; retried
// counts that.
func pingGuest(n *nic, window int, d time.Duration, retry func(error)) (PingResult, []time.Duration, error) {
	var werr error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 {
			retry(werr)
			time.Sleep(200 * time.Millisecond)
		}
		res, rtts, err := pingOnce(n, window, d)
		if err == nil || !errors.Is(err, errWarmup) {
			return res, rtts, err
		}
		werr = err
	}
	return PingResult{}, nil, werr
}

var errWarmup = errors.New("warm-up")

func pingOnce(n *nic, window int, d time.Duration) (PingResult, []time.Duration, error) {
	g, err := tapguest.Open(tapguest.Config{Tap: n.tap, MAC: n.mac, IP: n.ip, Gateway: n.gateway, Opener: n.opener(false)})
	if err != nil {
		return PingResult{}, nil, err
	}
	defer g.Close()
	p, err := newPinger(n.ip.Addr(), pingID()+uint16(n.idx))
	if err != nil {
		return PingResult{}, nil, err
	}
	defer p.Close()
	if _, _, err := p.run(1, 0, 3); err != nil {
		return PingResult{}, nil, fmt.Errorf("%w: %v (guest %+v)", errWarmup, err, g.Stats())
	}
	proc0, _ := cpuTimes()
	res, rtts, err := p.runSamples(window, d)
	if err != nil {
		return res, rtts, fmt.Errorf("%w (guest %+v)", err, g.Stats())
	}
	if proc1, _ := cpuTimes(); res.Received > 0 {
		res.ProcCPUUsPerEcho = (proc1 - proc0) * 1e6 / float64(res.Received)
	}
	return res, rtts, nil
}

// RTTQuantiles are the quantiles of the RTT plot: 0 to 0.95 in steps of
// 0.05, then 0.99 (the maximum is left out: one outlier would flatten the
// curve).
var RTTQuantiles = func() []float64 {
	var q []float64
	for k := 0; k <= 19; k++ {
		q = append(q, float64(k)/20)
	}
	return append(q, 0.99)
}()

func quantilesUs(s []time.Duration, qs []float64) []float64 {
	if len(s) == 0 {
		return nil
	}
	s = append([]time.Duration(nil), s...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var out []float64
	for _, q := range qs {
		i := int(math.Round(q * float64(len(s)-1)))
		out = append(out, float64(s[i].Nanoseconds())/1e3)
	}
	return out
}

// cpuTimes is this process's CPU seconds and all CPUs' busy seconds.
func cpuTimes() (proc, machine float64) {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
		proc = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return proc, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy float64
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest, guest_nice are in user already
			break
		}
		busy += x
	}
	return proc, busy / 100 // USER_HZ
}

// tcpRun starts the netstack guest on n's TAP with queues queue pairs and
// moves total bytes over flows concurrent TCP connections, host → guest
// (toGuest) or guest → host.
func tcpRun(n *nic, queues, flows int, toGuest bool, total int64, gso bool) (TCPResult, error) {
	g, err := openTCPGuest(n.opener(queues > 1), queues, n.mtu, n.mac, n.ip, gso)
	if err != nil {
		return TCPResult{}, err
	}
	defer g.Close()
	addr := net.JoinHostPort(n.ip.Addr().String(), strconv.Itoa(guestTCPPort))
	per := total / int64(flows)
	conns := make([]net.Conn, flows)
	for i := range conns {
		var c net.Conn
		var err error
		for try := 0; try < 50; try++ { // the guest's ARP answer may lag its start
			c, err = net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return TCPResult{}, fmt.Errorf("dial guest %s: %w", addr, err)
		}
		defer c.Close()
		conns[i] = c
	}
	p0, m0 := cpuTimes()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, flows)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if toGuest {
				errs[i] = sendToGuest(c, per)
			} else {
				errs[i] = receiveFromGuest(c, per)
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	p1, m1 := cpuTimes()
	if err := errors.Join(errs...); err != nil {
		return TCPResult{}, err
	}
	if err := g.Err(); err != nil {
		return TCPResult{}, fmt.Errorf("guest: %w", err)
	}
	bytes := per * int64(flows)
	gb := float64(bytes) / 1e9
	return TCPResult{Flows: flows, Bytes: bytes, Seconds: secs, Gbps: float64(bytes) * 8 / secs / 1e9,
		ProcCPUPerG: (p1 - p0) / gb, HostCPUPerG: (m1 - m0) / gb, Frames: g.ep.stats()}, nil
}

var hostChunk = make([]byte, 256<<10)

func sendToGuest(c net.Conn, n int64) error {
	if _, err := c.Write([]byte{cmdReceive}); err != nil {
		return err
	}
	for left := n; left > 0; {
		b := hostChunk
		if int64(len(b)) > left {
			b = b[:left]
		}
		m, err := c.Write(b)
		if err != nil {
			return fmt.Errorf("send to guest: %w", err)
		}
		left -= int64(m)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	var b [8]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return fmt.Errorf("guest's byte count: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(b[:])); got != n {
		return fmt.Errorf("guest received %d bytes, %d sent", got, n)
	}
	return nil
}

func receiveFromGuest(c net.Conn, n int64) error {
	var b [9]byte
	b[0] = cmdSend
	binary.BigEndian.PutUint64(b[1:], uint64(n))
	if _, err := c.Write(b[:]); err != nil {
		return err
	}
	got, err := io.Copy(io.Discard, c)
	if err != nil {
		return fmt.Errorf("receive from guest: %w", err)
	}
	if got != n {
		return fmt.Errorf("received %d bytes from the guest, want %d", got, n)
	}
	return nil
}

// summarize fills Metrics and Targets.
func (r *Report) summarize() {
	type def struct {
		name, unit string
		higher     bool
		get        func(Round) float64
	}
	defs := []def{
		{"echo rate, 64 outstanding", "k packets/s", true, func(x Round) float64 { return x.Ping64.Rate / 1e3 }},
		{"echo rate, 1 outstanding", "k packets/s", true, func(x Round) float64 { return x.Ping1.Rate / 1e3 }},
		{"CPU per echo, 64 outstanding (process)", "µs", false, func(x Round) float64 { return x.Ping64.ProcCPUUsPerEcho }},
		{"RTT median, 1 outstanding", "µs", false, func(x Round) float64 { return x.Ping1.RTTMedianUs }},
		{"RTT p99, 1 outstanding", "µs", false, func(x Round) float64 { return x.Ping1.RTTP99Us }},
		{"RTT min, 1 outstanding", "µs", false, func(x Round) float64 { return x.Ping1.RTTMinUs }},
		{"TCP host → guest", "Gbit/s", true, func(x Round) float64 { return x.HostToVM.Gbps }},
		{"TCP guest → host", "Gbit/s", true, func(x Round) float64 { return x.VMToHost.Gbps }},
		{"CPU per GB host → guest (process)", "CPU s/GB", false, func(x Round) float64 { return x.HostToVM.ProcCPUPerG }},
		{"CPU per GB guest → host (process)", "CPU s/GB", false, func(x Round) float64 { return x.VMToHost.ProcCPUPerG }},
		{"CPU per GB host → guest (machine)", "CPU s/GB", false, func(x Round) float64 { return x.HostToVM.HostCPUPerG }},
		{"CPU per GB guest → host (machine)", "CPU s/GB", false, func(x Round) float64 { return x.VMToHost.HostCPUPerG }},
		{"mean frame read from the TAP, host → guest", "bytes", true, func(x Round) float64 {
			if x.HostToVM.Frames.RXFrames == 0 {
				return 0
			}
			return float64(x.HostToVM.Frames.RXBytes) / float64(x.HostToVM.Frames.RXFrames)
		}},
		{"largest frame read from the TAP, host → guest", "bytes", true, func(x Round) float64 { return float64(x.HostToVM.Frames.RXMax) }},
		{"two flows, 1 queue pair", "Gbit/s", true, func(x Round) float64 { return x.TwoFlows1.Gbps }},
		{"two flows, 2 queue pairs", "Gbit/s", true, func(x Round) float64 { return x.TwoFlows2.Gbps }},
	}
	bridge := r.variant("bridge")
	for _, d := range defs {
		m := Metric{Name: d.name, Unit: d.unit, HigherBetter: d.higher, Median: map[string]float64{}, Min: map[string]float64{}, Max: map[string]float64{},
			Ratio: map[string]float64{}, RatioMin: map[string]float64{}, RatioMax: map[string]float64{}}
		for _, v := range r.Variants {
			var xs, ratios []float64
			for i, rd := range v.Rounds {
				x := d.get(rd)
				xs = append(xs, x)
				if bridge != nil {
					if b := d.get(bridge.Rounds[i]); b != 0 {
						ratios = append(ratios, x/b)
					}
				}
			}
			m.Median[v.Name], m.Min[v.Name], m.Max[v.Name] = median(xs), minOf(xs), maxOf(xs)
			if len(ratios) > 0 {
				m.Ratio[v.Name], m.RatioMin[v.Name], m.RatioMax[v.Name] = median(ratios), minOf(ratios), maxOf(ratios)
			}
		}
		r.Metrics = append(r.Metrics, m)
	}
	for _, t := range []struct {
		metric, want string
		atLeast      bool
		bound        float64
	}{
		{"echo rate, 64 outstanding", "≥ 0.95× bridge", true, 0.95},
		{"TCP host → guest", "≥ 0.95× bridge", true, 0.95},
		{"TCP guest → host", "≥ 0.95× bridge", true, 0.95},
		{"RTT median, 1 outstanding", "≤ 1.3× bridge", false, 1.3},
	} {
		m := r.metric(t.metric)
		for _, v := range []string{"cni-bpf", "cni-u32"} {
			ratio, ok := m.Ratio[v]
			if !ok {
				continue
			}
			met := ratio >= t.bound
			if !t.atLeast {
				met = ratio <= t.bound
			}
			r.Targets = append(r.Targets, Target{Name: t.metric, Want: t.want, Variant: v, Ratio: ratio, RatioMin: m.RatioMin[v], RatioMax: m.RatioMax[v], Met: met})
		}
	}
}

func (r *Report) metric(name string) Metric {
	for _, m := range r.Metrics {
		if m.Name == name {
			return m
		}
	}
	return Metric{}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minOf(xs []float64) float64 {
	m := math.Inf(1)
	for _, x := range xs {
		m = math.Min(m, x)
	}
	return m
}

func maxOf(xs []float64) float64 {
	m := math.Inf(-1)
	for _, x := range xs {
		m = math.Max(m, x)
	}
	return m
}

func (r *Report) write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	j, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "datapath.json"), j, 0o644); err != nil {
		return err
	}
	if err := r.plot(filepath.Join(dir, "datapath-rtt.png")); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "datapath.md"), []byte(r.Markdown()), 0o644)
}

// selectVariants keeps the variants named in names (all when names is
// empty), and the bridge backend always; a name that is not in all is an
// error.
func selectVariants(all []Variant, names []string) ([]Variant, error) {
	if len(names) == 0 {
		return all, nil
	}
	want := map[string]bool{"bridge": true}
	for _, n := range names {
		want[strings.TrimSpace(n)] = true
	}
	var out []Variant
	for _, v := range all {
		if want[v.Name] {
			out = append(out, v)
			delete(want, v.Name)
		}
	}
	for n := range want {
		var known []string
		for _, v := range all {
			known = append(known, v.Name)
		}
		return nil, fmt.Errorf("unknown variant %q (this run has %s)", n, strings.Join(known, ", "))
	}
	return out, nil
}
