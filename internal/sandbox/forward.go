package sandbox

import (
	"context"
	"time"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/netsetup"
)

// undoLockWait bounds how long a rollback waits for a bridge's refcount
// lock: a rollback runs even when the call's own context is done (so a
// timed-out ADD still gives back what it took), but never waits for ever.
const undoLockWait = 30 * time.Second

// forwardRules is the bridge backend's FORWARD rules (internal/hostnet)
// with their users counted in the state dir (netsetup): the rules are added
// with a bridge's first user and removed with its last.
type forwardRules struct{ store *netsetup.Store }

// Acquire records user as a user of bridge's rules, adding them for the
// first user. On error nothing is recorded.
func (r forwardRules) Acquire(ctx context.Context, bridge, user string) error {
	return r.store.AcquireBridgeForward(ctx, bridge, user, func() error { return hostnet.AddForwardRules(bridge) })
}

// Release drops user from bridge's users, removing the rules with the last.
func (r forwardRules) Release(ctx context.Context, bridge, user string) error {
	return r.store.ReleaseBridgeForward(ctx, bridge, user, func() error { return hostnet.RemoveForwardRules(bridge) })
}

// Undo is the rollback of an Acquire: Release with a context that outlives
// ctx by at most undoLockWait.
func (r forwardRules) Undo(ctx context.Context, bridge, user string) func() error {
	return func() error {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoLockWait)
		defer cancel()
		return r.Release(uctx, bridge, user)
	}
}

// Users lists the recorded users of bridge's rules.
func (r forwardRules) Users(bridge string) ([]string, error) {
	return r.store.BridgeForwardUsers(bridge)
}
