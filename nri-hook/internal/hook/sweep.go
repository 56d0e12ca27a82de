package hook

import (
	"context"
	"errors"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
)

// The sweep tears down VM pods that went without an event. Synchronize
// reconciles only when the plugin (re)connects, and a runtime may never
// tell the plugin that a pod went: containerd 2.x forgets the NRI state of
// the pods that existed before it restarted (its NRI layer restores
// container states only) and sends no StopPodSandbox/RemovePodSandbox for
// them. So every SweepInterval the plugin looks at the records it made
// (origin "nri") and tears down those whose sandbox is gone:
//   - a pod on the runtime's netns: the netns path is gone or is no longer
//     the recorded namespace (dev/inode);
//   - a host-network pod (vmnic owns its netns): the pod process the runtime
//     reported at RunPodSandbox has exited (pid and start time, so a reused
//     pid is not taken for it). The pid is judged only from the pid
//     namespace it was recorded in: after a redeploy into another one (a
//     DaemonSet without hostPID) a missing /proc/<pid> says nothing. Without
//     a recorded pid (and namespace) such a pod is left to Synchronize; a
//     record from before pid namespaces were recorded gets its namespace
//     once the sweep sees that very process (pid, start time and cgroup).
//
// It also removes runtime dirs (and their mounts) no record names, once a
// dir was seen so in two sweeps in a row: a prepare makes the dir just
// before the record.
//
// A live sandbox costs one stat of its record file and one stat of its
// netns (or one read of /proc/<pid>/stat) per sweep: records are read again
// only when their file changed.

// SweepTimeout bounds the teardowns of one sweep.
const SweepTimeout = 2 * time.Minute

// sweepMaxBackoff bounds the wait before a failed teardown is tried again.
const sweepMaxBackoff = 10 * time.Minute

type sweeper struct {
	start sync.Once
	wake  chan struct{}
	stop  chan struct{}
	done  chan struct{}
	close sync.Once

	mu    sync.Mutex // one sweep at a time; guards cache and strays
	cache map[string]*sweepEntry
	// strays are the runtime dirs without a record the last sweep saw,
	// with when they were first seen so.
	strays map[string]time.Time
}

// recordStamp identifies one version of a record file (every save is an
// atomic rename, so a new inode and times).
type recordStamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

// sweepEntry is what the sweep knows about one record.
type sweepEntry struct {
	stamp recordStamp
	watch bool // a record of the hook the sweep can judge

	owned     bool
	netnsPath string
	netnsID   *netsetup.NetnsID
	pid       int
	pidStart  uint64
	pidNS     netsetup.NetnsID
	// legacyPid: a pod process recorded without its pid namespace.
	legacyPid bool

	failures int
	retryAt  time.Time
}

func sweepEntryFor(rec *netsetup.NetSetup) *sweepEntry {
	e := &sweepEntry{}
	if rec.Origin != OriginNRI {
		return e // vmnicctl's and the CNI plugin's records are not the hook's to remove
	}
	if rec.NetnsOwned {
		e.owned, e.pid, e.pidStart = true, rec.PodPID, rec.PodPIDStart
		hasPid := rec.PodPID > 0 && rec.PodPIDStart > 0
		if rec.PodPIDNS != nil {
			e.pidNS = *rec.PodPIDNS
		}
		e.watch = hasPid && rec.PodPIDNS != nil
		e.legacyPid = hasPid && rec.PodPIDNS == nil
		return e
	}
	path := rec.ResolvedNetnsPath()
	if path == "" || rec.ResolvedNetBackend() != netsetup.BackendCNI {
		return e
	}
	e.netnsPath, e.netnsID, e.watch = path, rec.NetnsID, true
	return e
}

// gone says whether the entry's sandbox is gone, and why.
func (e *sweepEntry) gone() (bool, string) {
	if !e.watch {
		return false, ""
	}
	if e.owned {
		return processGone(e.pid, e.pidStart, e.pidNS)
	}
	var st unix.Stat_t
	if err := unix.Stat(e.netnsPath, &st); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return true, "its netns " + e.netnsPath + " is gone"
		}
		return false, "" // cannot tell: leave it
	}
	if e.netnsID != nil && uint64(st.Dev) == e.netnsID.Dev && st.Ino == e.netnsID.Ino {
		return false, ""
	}
	// Not the recorded namespace by a plain stat: look closer.
	id, err := netsetup.IdentifyNetns(e.netnsPath)
	if err != nil {
		return true, "its netns " + e.netnsPath + " is no longer a network namespace"
	}
	if e.netnsID != nil && id != *e.netnsID {
		return true, "its netns path " + e.netnsPath + " names another namespace now"
	}
	return false, ""
}

func stampOf(path string) (recordStamp, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return recordStamp{}, err
	}
	return recordStamp{dev: uint64(st.Dev), ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, nil
}

// startSweeper starts the sweep loop (once); later calls make it pick up a
// changed interval.
func (p *Plugin) startSweeper() {
	s := &p.sweep
	s.start.Do(func() {
		s.wake = make(chan struct{}, 1)
		s.stop = make(chan struct{})
		s.done = make(chan struct{})
		go p.sweepLoop()
	})
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Close stops the sweep loop and frees the spare record files.
func (p *Plugin) Close() {
	s := &p.sweep
	started := false
	s.start.Do(func() {}) // never start it after Close
	s.close.Do(func() {
		if s.stop != nil {
			close(s.stop)
			started = true
		}
	})
	if started {
		<-s.done
	}
	p.mu.Lock()
	release := p.releaseSpares
	p.releaseSpares = nil
	p.mu.Unlock()
	if release != nil {
		release()
	}
}

func (p *Plugin) sweepInterval() time.Duration {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.cfg == nil {
		return 0
	}
	return p.cfg.Sweep()
}

func (p *Plugin) sweepLoop() {
	s := &p.sweep
	defer close(s.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-s.done:
		}
	}()
	for {
		var tick <-chan time.Time
		var timer *time.Timer
		if d := p.sweepInterval(); d > 0 {
			timer = time.NewTimer(d)
			tick = timer.C
		}
		select {
		case <-s.stop:
			if timer != nil {
				timer.Stop()
			}
			return
		case <-s.wake: // reconfigured: start over with the current interval
			if timer != nil {
				timer.Stop()
			}
			continue
		case <-tick:
		}
		sctx, scancel := context.WithTimeout(ctx, SweepTimeout)
		p.sweepOnce(sctx)
		scancel()
	}
}

type goneSandbox struct{ id, why string }

// sweepOnce checks every record of the hook once and tears down those whose
// sandbox is gone. It returns how many it tore down.
func (p *Plugin) sweepOnce(ctx context.Context) int {
	st, err := p.state()
	if err != nil {
		return 0
	}
	// A reconcile under way does the same work: leave this round to it.
	if !p.reconcileMu.TryLock() {
		return 0
	}
	defer p.reconcileMu.Unlock()
	s := &p.sweep
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cache == nil {
		s.cache = map[string]*sweepEntry{}
	}
	log := p.logger()
	ids, err := st.mgr.Store.IDs()
	if err != nil {
		log.Warn("sweep: cannot list records", "error", err)
		return 0
	}
	now := time.Now()
	seen := make(map[string]bool, len(ids))
	watched := 0
	var gone []goneSandbox
	for _, id := range ids {
		seen[id] = true
		stamp, err := stampOf(st.mgr.Store.Path(id))
		if err != nil {
			delete(s.cache, id)
			continue
		}
		e := s.cache[id]
		if e == nil || e.stamp != stamp {
			rec, err := st.mgr.Store.Get(id)
			if err != nil {
				delete(s.cache, id) // removed meanwhile, or unreadable (left to an operator)
				continue
			}
			fresh := sweepEntryFor(rec)
			fresh.stamp = stamp
			if e != nil {
				fresh.failures, fresh.retryAt = e.failures, e.retryAt
			}
			e = fresh
			s.cache[id] = e
		}
		if e.legacyPid {
			p.recordPidNamespace(ctx, st, id, e)
		}
		if !e.watch {
			continue
		}
		watched++
		if now.Before(e.retryAt) {
			continue
		}
		if g, why := e.gone(); g {
			gone = append(gone, goneSandbox{id, why})
		}
	}
	for id := range s.cache {
		if !seen[id] {
			delete(s.cache, id)
		}
	}
	p.sweepStrays(ctx, st, seen)
	torn := 0
	for _, g := range gone {
		if ctx.Err() != nil {
			break
		}
		if p.sweepTeardown(ctx, st, g.id, g.why) {
			torn++
		}
	}
	log.Debug("sweep", "records", len(ids), "watched", watched, "gone", len(gone), "tornDown", torn)
	return torn
}

// sweepTeardown tears down sandbox id after judging it again from its
// record as it is now.
func (p *Plugin) sweepTeardown(ctx context.Context, st state, id, why string) bool {
	s := &p.sweep
	log := p.logger()
	rec, err := st.mgr.Store.Get(id)
	if err != nil {
		delete(s.cache, id)
		return false
	}
	g, now := sweepEntryFor(rec).gone()
	if !g {
		return false
	}
	why = now
	log.Info("sweep: tearing down a VM pod that went without an event", "sandbox", id,
		"pod", rec.PodNamespace+"/"+rec.PodName, "why", why)
	if err := st.mgr.Teardown(ctx, id, sandbox.TeardownOptions{}); err != nil {
		if e := s.cache[id]; e != nil {
			e.failures++
			e.retryAt = time.Now().Add(min(p.sweepInterval()<<min(e.failures, 8), sweepMaxBackoff))
		}
		log.Error("sweep: teardown failed", "sandbox", id, "error", timeoutHint(err))
		return false
	}
	if err := p.removeLeftovers(ctx, st, id); err != nil {
		log.Warn("sweep: leftovers", "sandbox", id, "error", err)
	}
	delete(s.cache, id)
	return true
}

// recordPidNamespace completes a record whose pod process was recorded
// without its pid namespace, when this plugin sees that very process: same
// pid and start time, in a cgroup of the sandbox. Until then the sweep does
// not judge the pod by its pid.
func (p *Plugin) recordPidNamespace(ctx context.Context, st state, id string, e *sweepEntry) {
	proc, _ := podProcess(uint32(e.pid), id)
	if proc.pid != e.pid || proc.start != e.pidStart {
		return
	}
	rec, err := st.mgr.Store.Update(ctx, id, func(r *netsetup.NetSetup) error {
		if r.PodPID != proc.pid || r.PodPIDStart != proc.start || r.PodPIDNS != nil {
			return errStale
		}
		r.PodPIDNS = &proc.ns
		return nil
	})
	if err != nil {
		return
	}
	p.logger().Info("sweep: recorded the pid namespace of a pod process", "sandbox", id, "pid", proc.pid, "pidns", proc.ns.String())
	fresh := sweepEntryFor(rec)
	if stamp, err := stampOf(st.mgr.Store.Path(id)); err == nil {
		fresh.stamp = stamp
	}
	*e = *fresh
}

var errStale = errors.New("record changed")

// strayAge is how long a runtime dir must have been without a record
// before the sweep removes it.
const strayAge = 10 * time.Second

// sweepStrays removes the runtime dirs that no record names and that
// earlier sweeps, at least strayAge ago, found so too (a prepare makes its
// dir just before its record: one sighting is not enough).
func (p *Plugin) sweepStrays(ctx context.Context, st state, recorded map[string]bool) {
	s := &p.sweep
	ents, err := os.ReadDir(st.cfg.RuntimeDir)
	if err != nil {
		return
	}
	now := time.Now()
	next := map[string]time.Time{}
	for _, ent := range ents {
		id := ent.Name()
		if !ent.IsDir() || recorded[id] || netsetup.ValidateSandboxID(id) != nil {
			continue
		}
		first, seen := s.strays[id]
		if !seen {
			first = now
		}
		if !seen || now.Sub(first) < strayAge {
			next[id] = first
			continue
		}
		if err := p.removeOrphanRuntimeDir(ctx, st, id); err != nil {
			p.logger().Warn("sweep: remove a runtime dir without a record", "sandbox", id, "error", err)
			next[id] = first
		}
	}
	s.strays = next
}
