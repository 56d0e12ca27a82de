package hook

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/nri/pkg/api"

	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
)

// ReconcileTimeout bounds the reconcile work started by one Synchronize.
const ReconcileTimeout = 2 * time.Minute

// Synchronize reconciles the records with the runtime's list of pods after
// every (re)connect, so that events missed while the plugin was away do not
// leak netns, TAPs or records:
//   - a record the hook made whose sandbox the runtime no longer lists is
//     torn down;
//   - a record of any origin whose sandbox the runtime does not list and
//     whose netns is gone is torn down (nothing can use it any more);
//     records of VMs that vmnicctl prepared outside any runtime, with a live
//     netns, are left alone;
//   - an owned vmnic-* netns that no record names is removed;
//   - a listed VM pod that is running and has no record of the hook (its
//     RunPodSandbox was missed) is prepared, and a record its CNI ADD made
//     is adopted. A listed pod that is not running is not: containerd
//     keeps listing stopped sandboxes, without their netns once it is gone
//     and with pid 0 (see running).
//
// The plan is made here; the work runs until the handler's deadline and
// then goes on in the background, so that a slow teardown never makes the
// runtime drop the plugin. Pod events that arrive meanwhile win over the
// plan (see eventLog).
func (p *Plugin) Synchronize(ctx context.Context, pods []*api.PodSandbox, _ []*api.Container) ([]*api.ContainerUpdate, error) {
	st, err := p.state()
	if err != nil {
		return nil, err
	}
	seq := p.events.startPlan()
	plan, err := p.plan(ctx, st, pods)
	if err != nil {
		p.events.endPlan()
		// Never fail the registration for this: the plugin is still useful.
		p.logger().Error("reconcile: cannot plan", "error", err)
		return nil, nil
	}
	p.logger().Info("synchronize", "pods", len(pods), "teardown", len(plan.teardown),
		"prepare", len(plan.prepare), "orphanNetns", len(plan.orphans), "orphanRuntimeDirs", len(plan.runtimeDirs))
	if plan.empty() {
		p.events.endPlan()
		p.logger().Info("reconcile: done")
		return nil, nil
	}
	hctx, cancel := p.handlerContext(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer p.events.endPlan()
		p.reconcileMu.Lock()
		defer p.reconcileMu.Unlock()
		wctx, cancel := context.WithTimeout(context.Background(), ReconcileTimeout)
		defer cancel()
		p.execute(wctx, st, plan, seq)
		p.logger().Info("reconcile: done")
	}()
	select {
	case <-done:
	case <-hctx.Done():
		p.logger().Info("reconcile continues in the background")
	}
	return nil, nil
}

type reconcilePlan struct {
	teardown []string
	prepare  []*api.PodSandbox
	orphans  []string
	// runtimeDirs: per-sandbox runtime dirs of sandboxes neither listed
	// nor recorded (a crash between making the dir and the record).
	runtimeDirs []string
}

func (r reconcilePlan) empty() bool {
	return len(r.teardown) == 0 && len(r.prepare) == 0 && len(r.orphans) == 0 && len(r.runtimeDirs) == 0
}

func (p *Plugin) plan(ctx context.Context, st state, pods []*api.PodSandbox) (reconcilePlan, error) {
	var plan reconcilePlan
	log := p.logger()
	live := make(map[string]*api.PodSandbox, len(pods))
	for _, pod := range pods {
		live[pod.GetId()] = pod
	}
	recs, err := st.mgr.Store.List()
	if err != nil {
		// Unreadable records are left for an operator (vmnicctl show/gc).
		log.Warn("reconcile: some records cannot be read", "error", err)
	}
	recorded := make(map[string]*netsetup.NetSetup, len(recs))
	for _, rec := range recs {
		recorded[rec.SandboxID] = rec
		if _, ok := live[rec.SandboxID]; ok {
			continue
		}
		switch {
		case rec.Origin == OriginNRI:
			plan.teardown = append(plan.teardown, rec.SandboxID)
		case rec.Quarantined != "" && rec.Origin == "" && hasRuntimeDir(st, rec.SandboxID):
			// Rebuilt from the host after its record was quarantined: the
			// origin went with the record, the hook's runtime dir tells it.
			plan.teardown = append(plan.teardown, rec.SandboxID)
		case netnsGone(rec):
			plan.teardown = append(plan.teardown, rec.SandboxID)
		}
	}
	for _, pod := range pods {
		id := pod.GetId()
		if !st.cfg.IsVMPod(pod.GetRuntimeHandler(), pod.GetAnnotations()) || netsetup.ValidateSandboxID(id) != nil {
			continue
		}
		if rec := recorded[id]; rec != nil && rec.Origin == OriginNRI {
			continue
		}
		if ok, why := running(pod); !ok {
			log.Info("reconcile: not preparing a VM pod that is not running", "pod", podRef(pod), "why", why)
			continue
		}
		plan.prepare = append(plan.prepare, pod)
	}
	if ents, err := os.ReadDir(st.cfg.RuntimeDir); err == nil {
		for _, e := range ents {
			id := e.Name()
			if e.IsDir() && live[id] == nil && recorded[id] == nil && netsetup.ValidateSandboxID(id) == nil {
				plan.runtimeDirs = append(plan.runtimeDirs, id)
			}
		}
	}
	orphans, err := st.mgr.OrphanNetns(ctx)
	if err != nil {
		return plan, fmt.Errorf("list orphan netns: %w", err)
	}
	plan.orphans = orphans
	return plan, nil
}

// running says whether a listed pod is running, so that Synchronize may
// prepare it. The NRI pod carries no state, so this is read from what
// containerd fills in (internal/cri/nri/nri_api_linux.go):
//   - a pod with a network namespace path is running: containerd drops
//     the namespace from the NRI pod once its path is gone
//     (GetLinuxNamespaces), and removes it when the pod stops;
//   - a pod without one is either a host-network pod or one whose netns
//     is gone. It had a CNI netns when it has IPs (a host-network pod has
//     none of its own): never make an owned netns for it. Otherwise it is
//     a running host-network pod only when its pod process is there: a
//     stopped sandbox has pid 0 (internal/cri/server/events.go,
//     handleSandboxExit), the process must be the sandbox's (podProcess)
//     and, as a host-network pod's, be in the host's network namespace.
//
// A pod this cannot prove running is left alone; if it is a live VM pod
// after all, its VMM container is prepared at CreateContainer.
func running(pod *api.PodSandbox) (bool, string) {
	if path := netnsPath(pod); path != "" {
		if _, err := netsetup.IdentifyNetns(path); err != nil {
			return false, err.Error()
		}
		return true, ""
	}
	if ips := pod.GetIps(); len(ips) > 0 {
		return false, "its network namespace is gone (it has IPs: not a host-network pod)"
	}
	if pod.GetPid() == 0 {
		return false, "no network namespace and no pod process (a stopped pod)"
	}
	proc, why := podProcess(pod.GetPid(), pod.GetId())
	if proc.pid == 0 {
		return false, why
	}
	same, err := inOwnNetns(proc.pid)
	if err != nil {
		return false, err.Error()
	}
	if !same {
		return false, fmt.Sprintf("pod process %d is not in the host network namespace: not a host-network pod, and its netns is gone", proc.pid)
	}
	return true, ""
}

// netnsGone says whether a record's netns no longer exists. Records without
// a netns (bridge backend) never qualify.
func netnsGone(rec *netsetup.NetSetup) bool {
	if rec.ResolvedNetBackend() != netsetup.BackendCNI {
		return false
	}
	path := rec.ResolvedNetnsPath()
	if path == "" {
		return false
	}
	id, err := netsetup.IdentifyNetns(path)
	if err != nil {
		// Missing, or a mount point whose namespace was unmounted.
		return true
	}
	return rec.NetnsID != nil && *rec.NetnsID != id
}

// execute carries out a plan made at event-log point seq. Prepares go
// first (each is quick, and a live pod should not wait behind teardowns
// that take up to a VMM's eject timeout each), teardowns last. An event for
// a sandbox that overlapped or followed the plan wins: a pod stopped or
// removed meanwhile is not prepared (or its fresh record is torn down again
// when the event came while the prepare ran), and a record whose sandbox
// ran or got a container meanwhile is not torn down.
func (p *Plugin) execute(ctx context.Context, st state, plan reconcilePlan, seq uint64) {
	log := p.logger()
	for _, pod := range plan.prepare {
		id := pod.GetId()
		if p.events.newer(id, eventGone, seq) || p.events.newer(id, eventLive, seq) {
			log.Info("reconcile: not preparing a VM pod: an event for it came after the plan", "pod", podRef(pod))
			continue
		}
		if _, err := p.prepare(ctx, st, pod); err != nil {
			log.Error("reconcile: prepare failed", "pod", podRef(pod), "error", err)
			continue
		}
		if p.events.newer(id, eventGone, seq) {
			// The pod was stopped or removed while it was being prepared:
			// its handler may have found nothing to remove.
			log.Info("reconcile: the VM pod was stopped or removed while it was prepared: tearing it down again", "pod", podRef(pod))
			if err := st.mgr.Teardown(ctx, id, sandbox.TeardownOptions{}); err != nil {
				log.Error("reconcile: teardown failed", "sandbox", id, "error", err)
			} else if err := p.removeLeftovers(ctx, st, id); err != nil {
				log.Warn("reconcile: leftovers", "sandbox", id, "error", err)
			}
			continue
		}
		log.Info("reconcile: prepared a VM pod whose RunPodSandbox was missed", "pod", podRef(pod))
	}
	for _, id := range plan.runtimeDirs {
		if err := p.removeOrphanRuntimeDir(ctx, st, id); err != nil {
			log.Error("reconcile: remove orphan runtime dir failed", "sandbox", id, "error", err)
		}
	}
	for _, path := range plan.orphans {
		if err := p.removeOrphan(ctx, st, path); err != nil {
			log.Error("reconcile: remove orphan netns failed", "netns", path, "error", err)
			continue
		}
	}
	for _, id := range plan.teardown {
		if p.events.newer(id, eventLive, seq) {
			log.Info("reconcile: not tearing down a sandbox: the runtime sent an event for it after the plan", "sandbox", id)
			continue
		}
		if err := st.mgr.Teardown(ctx, id, sandbox.TeardownOptions{}); err != nil {
			log.Error("reconcile: teardown failed", "sandbox", id, "error", err)
			continue
		}
		if err := p.removeLeftovers(ctx, st, id); err != nil {
			log.Warn("reconcile: leftovers", "sandbox", id, "error", err)
		}
		log.Info("reconcile: torn down a sandbox the runtime no longer has", "sandbox", id)
	}
}

// lockUnrecorded takes sandbox id's lock when the sandbox has no record
// (recorded: it has one, meanwhile; no lock is held then, nor on an error).
// The caller unlocks tx.
func lockUnrecorded(ctx context.Context, st state, id string) (tx *netsetup.Tx, recorded bool, err error) {
	tx, err = st.mgr.Store.Lock(ctx, id)
	if err != nil {
		return nil, false, err
	}
	if _, err := tx.Load(); err == nil {
		tx.Unlock()
		return nil, true, nil
	} else if !errors.Is(err, netsetup.ErrNotFound) {
		tx.Unlock()
		return nil, false, err
	}
	return tx, false, nil
}

// removeOrphanRuntimeDir removes the runtime dir of a sandbox that has no
// record, under the sandbox's lock.
func (p *Plugin) removeOrphanRuntimeDir(ctx context.Context, st state, id string) error {
	tx, recorded, err := lockUnrecorded(ctx, st, id)
	if err != nil || recorded {
		return err
	}
	defer tx.Unlock()
	if err := removeRuntimeDir(st.cfg.SandboxRuntimeDir(id)); err != nil {
		return err
	}
	p.logger().Info("removed the runtime dir of a sandbox without a record", "sandbox", id)
	return nil
}

// removeOrphan removes an owned netns with no record, under the sandbox's
// lock and after checking again that no record names it.
func (p *Plugin) removeOrphan(ctx context.Context, st state, path string) error {
	id := strings.TrimPrefix(filepath.Base(path), sandbox.OwnedNetnsPrefix)
	if netsetup.ValidateSandboxID(id) == nil {
		tx, recorded, err := lockUnrecorded(ctx, st, id)
		if err != nil || recorded {
			return err
		}
		defer tx.Unlock()
	}
	if err := st.mgr.RemoveNetns(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	p.logger().Info("reconcile: removed an owned netns no record names", "netns", path)
	return nil
}

// hasRuntimeDir says whether the hook made a runtime dir for sandbox id.
func hasRuntimeDir(st state, id string) bool {
	fi, err := os.Lstat(st.cfg.SandboxRuntimeDir(id))
	return err == nil && fi.IsDir()
}
