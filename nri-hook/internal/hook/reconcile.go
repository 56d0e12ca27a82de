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
//   - a listed VM pod without a record (its RunPodSandbox was missed) is
//     prepared.
//
// The plan is made here; the work runs until the handler's deadline and
// then goes on in the background, so that a slow teardown never makes the
// runtime drop the plugin.
func (p *Plugin) Synchronize(ctx context.Context, pods []*api.PodSandbox, _ []*api.Container) ([]*api.ContainerUpdate, error) {
	st, err := p.state()
	if err != nil {
		return nil, err
	}
	plan, err := p.plan(ctx, st, pods)
	if err != nil {
		// Never fail the registration for this: the plugin is still useful.
		p.logger().Error("reconcile: cannot plan", "err", err)
		return nil, nil
	}
	p.logger().Info("synchronize", "pods", len(pods), "teardown", len(plan.teardown),
		"prepare", len(plan.prepare), "orphanNetns", len(plan.orphans))
	if plan.empty() {
		return nil, nil
	}
	hctx, cancel := p.handlerContext(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.reconcileMu.Lock()
		defer p.reconcileMu.Unlock()
		wctx, cancel := context.WithTimeout(context.Background(), ReconcileTimeout)
		defer cancel()
		p.execute(wctx, st, plan)
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
	live := make(map[string]*api.PodSandbox, len(pods))
	for _, pod := range pods {
		live[pod.GetId()] = pod
	}
	recs, err := st.mgr.Store.List()
	if err != nil {
		// Unreadable records are left for an operator (vmnicctl show/gc).
		p.logger().Warn("reconcile: some records cannot be read", "err", err)
	}
	recorded := make(map[string]bool, len(recs))
	for _, rec := range recs {
		recorded[rec.SandboxID] = true
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
		if !recorded[pod.GetId()] && st.cfg.IsVMPod(pod.GetRuntimeHandler(), pod.GetAnnotations()) &&
			netsetup.ValidateSandboxID(pod.GetId()) == nil {
			plan.prepare = append(plan.prepare, pod)
		}
	}
	if ents, err := os.ReadDir(st.cfg.RuntimeDir); err == nil {
		for _, e := range ents {
			id := e.Name()
			if e.IsDir() && live[id] == nil && !recorded[id] && netsetup.ValidateSandboxID(id) == nil {
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

func (p *Plugin) execute(ctx context.Context, st state, plan reconcilePlan) {
	log := p.logger()
	for _, id := range plan.teardown {
		if err := st.mgr.Teardown(ctx, id, sandbox.TeardownOptions{}); err != nil {
			log.Error("reconcile: teardown failed", "sandbox", id, "err", err)
			continue
		}
		if err := p.removeLeftovers(ctx, st, id); err != nil {
			log.Warn("reconcile: leftovers", "sandbox", id, "err", err)
		}
		log.Info("reconcile: torn down a sandbox the runtime no longer has", "sandbox", id)
	}
	for _, pod := range plan.prepare {
		if _, err := p.prepare(ctx, st, pod); err != nil {
			log.Error("reconcile: prepare failed", "pod", podRef(pod), "err", err)
			continue
		}
		log.Info("reconcile: prepared a VM pod whose RunPodSandbox was missed", "pod", podRef(pod))
	}
	for _, id := range plan.runtimeDirs {
		if err := p.removeOrphanRuntimeDir(ctx, st, id); err != nil {
			log.Error("reconcile: remove orphan runtime dir failed", "sandbox", id, "err", err)
		}
	}
	for _, path := range plan.orphans {
		if err := p.removeOrphan(ctx, st, path); err != nil {
			log.Error("reconcile: remove orphan netns failed", "netns", path, "err", err)
			continue
		}
	}
}

// removeOrphanRuntimeDir removes the runtime dir of a sandbox that has no
// record, under the sandbox's lock.
func (p *Plugin) removeOrphanRuntimeDir(ctx context.Context, st state, id string) error {
	tx, err := st.mgr.Store.Lock(ctx, id)
	if err != nil {
		return err
	}
	defer tx.Unlock()
	if _, err := tx.Load(); err == nil {
		return nil // recorded meanwhile
	} else if !errors.Is(err, netsetup.ErrNotFound) {
		return err
	}
	_ = tx.Delete() // no record: this only drops the lock file at Unlock
	if err := os.RemoveAll(st.cfg.SandboxRuntimeDir(id)); err != nil {
		return err
	}
	p.logger().Info("reconcile: removed the runtime dir of a sandbox without a record", "sandbox", id)
	return nil
}

// removeOrphan removes an owned netns with no record, under the sandbox's
// lock and after checking again that no record names it.
func (p *Plugin) removeOrphan(ctx context.Context, st state, path string) error {
	id := strings.TrimPrefix(filepath.Base(path), sandbox.OwnedNetnsPrefix)
	if netsetup.ValidateSandboxID(id) == nil {
		tx, err := st.mgr.Store.Lock(ctx, id)
		if err != nil {
			return err
		}
		defer tx.Unlock()
		if _, err := tx.Load(); err == nil {
			return nil // recorded meanwhile
		} else if !errors.Is(err, netsetup.ErrNotFound) {
			return err
		}
		_ = tx.Delete() // no record: this only drops the lock file at Unlock
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
