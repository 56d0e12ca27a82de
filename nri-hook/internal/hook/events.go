package hook

import "sync"

// The reconcile Synchronize starts goes on in the background, and pod
// events arrive meanwhile: a RemovePodSandbox that finds no record returns,
// and a prepare the reconcile planned before it would then make a record
// and netns for a removed pod. So every event is logged here by sandbox and
// kind, and the reconcile checks its plan against the log: an event that
// overlapped or followed the plan wins.
//
// containerd holds plugin synchronization while RunPodSandbox,
// StopPodSandbox and RemovePodSandbox run (BlockPluginSync in
// internal/cri/server/sandbox_{run,stop,remove}.go), so the plan sees the
// result of every event that came before it; the log also covers runtimes
// that do not (an event still running when the plan is made counts as
// newer).

// eventKind: events that make a pod live (RunPodSandbox, CreateContainer)
// or that take it away (StopPodSandbox, RemovePodSandbox).
type eventKind int

const (
	eventLive eventKind = iota
	eventGone
	eventKinds
)

type eventLog struct {
	mu          sync.Mutex
	seq         uint64 // counts finished events
	reconciling int    // reconciles under way
	ids         map[string]*sandboxEvents
}

type sandboxEvents struct {
	inflight [eventKinds]int
	ended    [eventKinds]uint64 // seq when the last event of each kind ended
}

// begin logs the start of an event for sandbox id; call the returned
// function when it is handled.
func (l *eventLog) begin(id string, k eventKind) func() {
	l.mu.Lock()
	if l.ids == nil {
		l.ids = map[string]*sandboxEvents{}
	}
	e := l.ids[id]
	if e == nil {
		e = &sandboxEvents{}
		l.ids[id] = e
	}
	e.inflight[k]++
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.seq++
		e.inflight[k]--
		e.ended[k] = l.seq
		if l.reconciling == 0 && e.idle() {
			delete(l.ids, id)
		}
	}
}

func (e *sandboxEvents) idle() bool {
	for _, n := range e.inflight {
		if n > 0 {
			return false
		}
	}
	return true
}

// startPlan marks a reconcile under way and returns the point its plan is
// made at; endPlan must follow.
func (l *eventLog) startPlan() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reconciling++
	return l.seq
}

func (l *eventLog) endPlan() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reconciling--
	if l.reconciling == 0 {
		for id, e := range l.ids {
			if e.idle() {
				delete(l.ids, id)
			}
		}
	}
}

// newer says whether an event of kind k for sandbox id was running when
// the plan made at seq was made, or came after it.
func (l *eventLog) newer(id string, k eventKind, seq uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.ids[id]
	return e != nil && (e.inflight[k] > 0 || e.ended[k] > seq)
}
