// Package hook is the vmnic NRI plugin's logic: the handlers the NRI stub
// calls for pod and container events. VM pods (selected by runtime handler;
// by annotation only when the configuration opts in) always end with a
// sandbox netns and a NetSetup record; the VMM container gets /dev/net/tun
// (unless its VMM is handed its TAPs as fds: config.InjectTunFor), its record, a size-bounded directory (a tmpfs of its own) for the VMM's API
// socket and, for a netns vmnic owns, the move into that netns. All other
// pods are left alone.
package hook

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"

	"github.com/vmnic/vmnic/internal/failpoint"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/nri-hook/internal/config"
	"github.com/vmnic/vmnic/nri-hook/internal/logging"
)

// OriginNRI marks records whose lifecycle the NRI hook manages.
const OriginNRI = "nri"

// MaxHandlerTime bounds every handler, far below the runtime's default 2 s
// request timeout (a plugin that times out is dropped by the runtime and
// the pod goes on without it).
const MaxHandlerTime = 1500 * time.Millisecond

// Events is the subscription returned from Configure. It names only events
// every NRI runtime since v0.2 knows: a runtime with NRI < v0.10
// (containerd ≤ 2.1, CRI-O ≤ 1.33) refuses a plugin that subscribes to a
// newer one. Synchronize is part of the handshake, not an event.
// StopContainer and PostStartContainer (the VMM container stopping and
// running again: quiesce and resume, vmmstate.go) are such old events.
var Events = func() api.EventMask {
	var m api.EventMask
	m.Set(api.Event_RUN_POD_SANDBOX, api.Event_STOP_POD_SANDBOX,
		api.Event_REMOVE_POD_SANDBOX, api.Event_CREATE_CONTAINER,
		api.Event_POST_START_CONTAINER, api.Event_STOP_CONTAINER)
	return m
}()

// The NRI stub finds the handlers by type assertion: a method whose
// signature drifts from the interface would silently stop being called.
var (
	_ stub.ConfigureInterface          = (*Plugin)(nil)
	_ stub.SynchronizeInterface        = (*Plugin)(nil)
	_ stub.RunPodInterface             = (*Plugin)(nil)
	_ stub.StopPodInterface            = (*Plugin)(nil)
	_ stub.RemovePodInterface          = (*Plugin)(nil)
	_ stub.CreateContainerInterface    = (*Plugin)(nil)
	_ stub.StopContainerInterface      = (*Plugin)(nil)
	_ stub.PostStartContainerInterface = (*Plugin)(nil)
)

// Runtime is what the plugin learns from the NRI stub about the runtime.
type Runtime interface {
	RuntimeNRIVersion() string
	RequestTimeout() time.Duration
}

// Plugin implements the NRI stub's handler interfaces.
type Plugin struct {
	// Base is the configuration used when the runtime passes none (an
	// external plugin's --config file).
	Base *config.Config
	Log  *logging.Log
	// Runtime is set once the stub exists.
	Runtime Runtime

	mu             sync.RWMutex
	cfg            *config.Config
	mgr            *sandbox.Manager
	runtimeName    string
	runtimeVersion string
	// releaseSpares frees the store's spare record files (Close, or a
	// new configuration's store).
	releaseSpares func()

	reconcileMu sync.Mutex
	// events logs pod events so that a background reconcile never acts
	// on a plan an event made stale.
	events eventLog

	sweep sweeper
}

// spareRecords is how many record files the plugin keeps made ahead for
// new VM pods: a burst of pod starts larger than this makes the rest
// inline, as without spares.
const spareRecords = 16

type state struct {
	cfg *config.Config
	mgr *sandbox.Manager
}

func (p *Plugin) state() (state, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.cfg == nil || p.mgr == nil {
		return state{}, errors.New("vmnic: plugin not configured yet")
	}
	return state{p.cfg, p.mgr}, nil
}

func (p *Plugin) logger() *slog.Logger { return p.Log.Logger }

// Configure applies the configuration (the runtime's config string for a
// pre-installed plugin; else the --config file) and subscribes to the
// plugin's events.
func (p *Plugin) Configure(ctx context.Context, cfgText, runtime, version string) (api.EventMask, error) {
	cfg := p.Base
	if len(cfgText) > 0 {
		c, err := config.Parse([]byte(cfgText))
		if err != nil {
			return 0, fmt.Errorf("vmnic: %w", err)
		}
		cfg = c
	}
	if cfg == nil {
		cfg = config.Default()
	}
	if err := cfg.Validate(); err != nil {
		return 0, fmt.Errorf("vmnic: %w", err)
	}
	level, _ := cfg.Level()
	if err := p.Log.Configure(cfg.LogFile, level); err != nil {
		return 0, fmt.Errorf("vmnic: %w", err)
	}
	store, err := netsetup.Open(cfg.StateDir)
	if err != nil {
		return 0, fmt.Errorf("vmnic: %w", err)
	}
	if err := os.MkdirAll(cfg.RuntimeDir, 0o755); err != nil {
		return 0, fmt.Errorf("vmnic: runtime dir: %w", err)
	}
	mgr := sandbox.New(sandbox.Config{Store: store, NetnsDir: cfg.NetnsDir, Logger: p.logger(),
		VMMSocketDirs: sandbox.SocketDirs(cfg.RuntimeDir)})
	// A new VM pod's record then finds its file made (off RunPodSandbox's
	// path): see netsetup.Store.KeepSpareRecords.
	release := store.KeepSpareRecords(spareRecords)

	p.mu.Lock()
	old := p.releaseSpares
	p.cfg, p.mgr, p.runtimeName, p.runtimeVersion, p.releaseSpares = cfg, mgr, runtime, version, release
	p.mu.Unlock()
	if old != nil {
		old()
	}
	p.startSweeper()

	p.logger().Info("configured", "runtime", runtime, "runtimeVersion", version,
		"runtimeNRI", p.runtimeNRIVersion(), "events", Events.PrettyString(),
		"stateDir", cfg.StateDir, "netnsDir", cfg.NetnsDir, "runtimeDir", cfg.RuntimeDir,
		"runtimeHandlers", cfg.RuntimeHandlers, "vmAnnotation", *cfg.VMAnnotation,
		"runtimeDirSize", cfg.RuntimeDirSize.String(), "sweepInterval", cfg.Sweep())
	if *cfg.VMAnnotation {
		p.logger().Warn("vmAnnotation is on: any pod annotated " + config.AnnotationVM + `: "true" is a VM pod, ` +
			"and its containers get /dev/net/tun and a read-write host directory (runtimeDirSize each)")
	}
	if !atLeast(p.runtimeNRIVersion(), 0, 10) {
		p.logger().Warn("this runtime's NRI cannot move a container into a namespace: "+
			"the VMM containers of host-network VM pods will be refused (needs NRI v0.10+: containerd 2.2+, CRI-O 1.34+)",
			"runtime", runtime, "runtimeVersion", version, "runtimeNRI", p.runtimeNRIVersion())
	}
	return Events, nil
}

// runtimeDesc names the runtime for messages: "containerd v2.1.5".
func (p *Plugin) runtimeDesc() string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return strings.TrimSpace(p.runtimeName + " " + p.runtimeVersion)
}

func (p *Plugin) runtimeNRIVersion() string {
	if p.Runtime == nil {
		return "unknown"
	}
	return p.Runtime.RuntimeNRIVersion()
}

// handlerContext bounds a handler: at most MaxHandlerTime, and at most
// three quarters of the runtime's request timeout.
func (p *Plugin) handlerContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, p.handlerTimeout())
}

func (p *Plugin) handlerTimeout() time.Duration {
	d := MaxHandlerTime
	if p.Runtime != nil {
		if rt := p.Runtime.RequestTimeout() * 3 / 4; rt > 0 && rt < d {
			d = rt
		}
	}
	return d
}

// netnsPath is the pod's network namespace path; "" for a host-network pod.
func netnsPath(pod *api.PodSandbox) string {
	for _, ns := range pod.GetLinux().GetNamespaces() {
		if ns.GetType() == "network" {
			return ns.GetPath()
		}
	}
	return ""
}

func podRef(pod *api.PodSandbox) string {
	return fmt.Sprintf("%s/%s (sandbox %s)", pod.GetNamespace(), pod.GetName(), pod.GetId())
}

// RunPodSandbox gives a VM pod its sandbox netns and NetSetup record: it
// adopts the runtime's netns, or creates and owns one for a host-network
// pod. NICs the CNI plugin already recorded are kept.
func (p *Plugin) RunPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	st, err := p.state()
	if err != nil {
		return err
	}
	if !st.cfg.IsVMPod(pod.GetRuntimeHandler(), pod.GetAnnotations()) {
		return nil
	}
	defer p.events.begin(pod.GetId(), eventLive)()
	ctx, cancel := p.handlerContext(ctx)
	defer cancel()
	start := time.Now()
	rec, err := p.prepare(ctx, st, pod)
	if err != nil {
		p.logger().Error("RunPodSandbox failed", "pod", podRef(pod), "error", err)
		return err
	}
	p.logger().Info("VM pod prepared", "pod", podRef(pod), "netns", rec.NetnsPath,
		"owned", rec.NetnsOwned, "nics", len(rec.NetworkConfigs), "took", time.Since(start))
	return nil
}

// prepare adopts or creates the pod's netns and writes its record, marked
// as managed by the NRI hook.
func (p *Plugin) prepare(ctx context.Context, st state, pod *api.PodSandbox) (*netsetup.NetSetup, error) {
	id := pod.GetId()
	if err := netsetup.ValidateSandboxID(id); err != nil {
		return nil, fmt.Errorf("vmnic: VM pod %s: %w", podRef(pod), err)
	}
	nsPath := netnsPath(pod)
	if nsPath == "" && len(pod.GetIps()) > 0 {
		// containerd lists a pod without its netns once the netns path is
		// gone; a host-network pod has no IPs of its own.
		return nil, fmt.Errorf("vmnic: VM pod %s has IPs (%s) but no network namespace: its network namespace is gone; "+
			"refusing to make a new one for it", podRef(pod), strings.Join(pod.GetIps(), ", "))
	}
	rtDir := st.cfg.SandboxRuntimeDir(id)
	if err := ensureRuntimeDir(rtDir, st.cfg.RuntimeDirBytes()); err != nil {
		return nil, fmt.Errorf("vmnic: VM pod %s: %w", podRef(pod), err)
	}
	if err := failpoint.Inject("nri-runtime-dir"); err != nil {
		removeEmptyRuntimeDir(rtDir)
		return nil, fmt.Errorf("vmnic: VM pod %s: %w", podRef(pod), err)
	}
	// The pod process tells the sweep when a host-network pod (whose netns
	// vmnic owns, so no runtime netns can vanish) went without an event;
	// it is recorded with the record itself.
	proc, why := podProcess(pod.GetPid(), id)
	rec, err := st.mgr.Prepare(ctx, id, sandbox.PrepareOptions{
		NetnsPath:    nsPath,
		PodName:      pod.GetName(),
		PodNamespace: pod.GetNamespace(),
		PodUID:       pod.GetUid(),
		RuntimeDir:   rtDir,
		Origin:       OriginNRI,
		PodPID:       proc.pid,
		PodPIDStart:  proc.start,
		PodPIDNS:     proc.ns,
	})
	if err != nil {
		removeEmptyRuntimeDir(rtDir)
		what := "adopt the pod's network namespace " + nsPath
		if nsPath == "" {
			what = "create a network namespace for the host-network pod"
		}
		return nil, fmt.Errorf("vmnic: VM pod %s: cannot %s: %w", podRef(pod), what, timeoutHint(err))
	}
	if err := failpoint.Inject("nri-prepared"); err != nil {
		return nil, fmt.Errorf("vmnic: VM pod %s: %w", podRef(pod), err)
	}
	if proc.pid == 0 && rec.NetnsOwned {
		p.logger().Warn("host-network VM pod: its pod process is unknown, so its removal is noticed only at the next Synchronize if the runtime sends no RemovePodSandbox",
			"pod", podRef(pod), "why", why)
	}
	if rec.Origin != OriginNRI || rec.CreatedBy != "" || (proc.pid != 0 && !sameProc(rec, proc)) {
		rec, err = st.mgr.Store.Update(ctx, id, func(r *netsetup.NetSetup) error {
			r.Origin, r.CreatedBy = OriginNRI, ""
			if proc.pid != 0 {
				r.PodPID, r.PodPIDStart, r.PodPIDNS = proc.pid, proc.start, &proc.ns
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("vmnic: VM pod %s: mark record: %w", podRef(pod), timeoutHint(err))
		}
	}
	return rec, nil
}

// sameProc says whether rec records proc as its pod process.
func sameProc(rec *netsetup.NetSetup, proc podProc) bool {
	return rec.PodPID == proc.pid && rec.PodPIDStart == proc.start && rec.PodPIDNS != nil && *rec.PodPIDNS == proc.ns
}

// timeoutHint says why a deadline hit, in words an operator can act on.
func timeoutHint(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w (gave up before the runtime's request timeout: the sandbox's record may be locked by another vmnic process)", err)
	}
	return err
}

// managed says whether the plugin acts on this pod's stop and removal: a
// VM pod, or a pod whose record the hook made.
func managed(st state, pod *api.PodSandbox) (*netsetup.NetSetup, bool, error) {
	rec, err := st.mgr.Store.Get(pod.GetId())
	if errors.Is(err, netsetup.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		if st.cfg.IsVMPod(pod.GetRuntimeHandler(), pod.GetAnnotations()) {
			return nil, true, nil // an unreadable record of a VM pod: the teardown deals with it
		}
		return nil, false, nil
	}
	return rec, rec.Origin == OriginNRI || st.cfg.IsVMPod(pod.GetRuntimeHandler(), pod.GetAnnotations()), nil
}

// StopPodSandbox removes the VM pod's NICs and keeps its record (and an
// owned netns) until RemovePodSandbox. Idempotent; a netns that is already
// gone (CRI-O removes it before this event) is fine.
func (p *Plugin) StopPodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return p.teardown(ctx, pod, "StopPodSandbox", sandbox.TeardownOptions{KeepNetns: true})
}

// RemovePodSandbox removes everything: NICs, record, an owned netns and the
// runtime directory. Idempotent.
func (p *Plugin) RemovePodSandbox(ctx context.Context, pod *api.PodSandbox) error {
	return p.teardown(ctx, pod, "RemovePodSandbox", sandbox.TeardownOptions{})
}

func (p *Plugin) teardown(ctx context.Context, pod *api.PodSandbox, event string, o sandbox.TeardownOptions) error {
	st, err := p.state()
	if err != nil {
		return err
	}
	if netsetup.ValidateSandboxID(pod.GetId()) != nil {
		return nil // no record or netns can exist under such an id
	}
	defer p.events.begin(pod.GetId(), eventGone)()
	_, ok, _ := managed(st, pod)
	vmPod := st.cfg.IsVMPod(pod.GetRuntimeHandler(), pod.GetAnnotations())
	if !ok && !vmPod {
		return nil
	}
	ctx, cancel := p.handlerContext(ctx)
	defer cancel()
	id := pod.GetId()
	if ok {
		if err := st.mgr.Teardown(ctx, id, o); err != nil {
			err = fmt.Errorf("vmnic: %s of VM pod %s: %w", event, podRef(pod), timeoutHint(err))
			p.logger().Error("teardown failed", "event", event, "pod", podRef(pod), "error", err)
			return err
		}
	}
	if !o.KeepNetns {
		if err := failpoint.Inject("nri-torn-down"); err != nil {
			return fmt.Errorf("vmnic: %s of VM pod %s: %w", event, podRef(pod), err)
		}
		if err := p.removeLeftovers(ctx, st, id); err != nil {
			return fmt.Errorf("vmnic: %s of VM pod %s: %w", event, podRef(pod), err)
		}
	}
	p.logger().Info("VM pod torn down", "event", event, "pod", podRef(pod), "keepNetns", o.KeepNetns)
	return nil
}

// removeLeftovers removes what a sandbox without a record may have left:
// its runtime directory and an owned netns (a crash between creating the
// netns and writing the record). It runs only for a pod the runtime is
// done with (Stop/Remove, or gone at a reconcile or sweep), after its
// teardown.
//
// An unreadable record is record recovery's (issue 11, issue 16 item 9):
// the Load moves it to the quarantine (never deletes it) and rebuilds it
// from the host. A rebuilt record is not a leftover, so its netns stays.
// When nothing was rebuilt, the owned path still goes unless it is a
// network namespace: a namespace at the owned path is what the rebuild
// finds, so its absence from a rebuild means the rebuild failed, and the
// netns stays for the next recovery.
func (p *Plugin) removeLeftovers(ctx context.Context, st state, id string) error {
	if err := netsetup.ValidateSandboxID(id); err != nil {
		return err
	}
	if err := removeRuntimeDir(st.cfg.SandboxRuntimeDir(id)); err != nil {
		return err
	}
	path := ownedNetnsPath(st.cfg, id)
	if _, err := os.Lstat(path); err != nil {
		return nil
	}
	tx, err := st.mgr.Store.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer tx.Unlock()
	if _, err := tx.Load(); !errors.Is(err, netsetup.ErrNotFound) {
		if err != nil {
			// An unreadable record is record recovery's: never removed here.
			p.logger().Warn("leftovers: leaving the netns of an unreadable record to record recovery", "sandbox", id, "err", err)
		}
		return nil // recorded (again): not a leftover
	}
	if r := tx.Recovery(); r != nil {
		if _, err := netsetup.IdentifyNetns(path); err == nil {
			p.logger().Warn("leftovers: the record was quarantined and not rebuilt; leaving its owned netns to record recovery", "sandbox", id, "netns", path, "quarantined", r.Quarantined)
			return nil
		}
	}
	if err := st.mgr.RemoveNetns(path); err != nil {
		return fmt.Errorf("remove owned netns: %w", err)
	}
	return nil
}

// ownedNetnsPath is where the hook creates a host-network VM pod's netns.
func ownedNetnsPath(cfg *config.Config, id string) string {
	return filepath.Join(cfg.NetnsDir, sandbox.OwnedNetnsPrefix+id)
}
