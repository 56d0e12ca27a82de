package netsetup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// This file holds the lock of the clone MAC check: restored clones of one
// snapshot share the guest's MAC, and on one L2 bridge only one of them may
// be recorded with it. The engine checks the other records and records its
// NIC under this lock, an flock on <stateDir>/clone-macs/<bridge>.lock, so
// two racing ADDs cannot both pass the check. The lock is taken only for a
// restored NIC whose veth is a bridge port, after the sandbox's own lock
// (never the other way round). Its file goes with its last holder, as the
// bridge-forward lock's does.

// CloneLock is a held clone MAC lock of one bridge.
type CloneLock struct {
	s      *Store
	bridge string
	f      *os.File
}

func (s *Store) cloneDir() string { return filepath.Join(s.dir, "clone-macs") }

func (s *Store) cloneLockPath(bridge string) string {
	return filepath.Join(s.cloneDir(), bridge+".lock")
}

// LockCloneMACs takes the clone MAC lock of host bridge, waiting until ctx
// is done.
func (s *Store) LockCloneMACs(ctx context.Context, bridge string) (*CloneLock, error) {
	if err := validBridgeName(bridge); err != nil {
		return nil, err
	}
	f, err := lockFile(ctx, s.cloneLockPath(bridge), true)
	if err != nil {
		return nil, fmt.Errorf("clone MAC lock of bridge %s: %w", bridge, err)
	}
	return &CloneLock{s: s, bridge: bridge, f: f}, nil
}

// Unlock releases the lock and removes its file (a waiter locks the file
// made anew, see lockFile) and the directory when it is empty. Unlocking
// twice, or a nil lock, does nothing.
func (l *CloneLock) Unlock() {
	if l == nil || l.f == nil {
		return
	}
	os.Remove(l.s.cloneLockPath(l.bridge))
	os.Remove(l.s.cloneDir())
	l.f.Close()
	l.f = nil
}

// pruneCloneLocks removes the clone MAC lock files a killed holder left:
// each is locked (waiting at most wait; one held longer is skipped) and
// removed by its Unlock, so a live holder is never undercut.
func (p *pruner) pruneCloneLocks() {
	ents, err := os.ReadDir(p.s.cloneDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		bridge, ok := strings.CutSuffix(e.Name(), ".lock")
		if !ok || validBridgeName(bridge) != nil || !e.Type().IsRegular() {
			continue
		}
		ctx, cancel := context.WithTimeout(p.ctx, p.wait)
		l, err := p.s.LockCloneMACs(ctx, bridge)
		cancel()
		if err != nil {
			continue // held by a live ADD (or unreadable): not a leftover now
		}
		l.Unlock()
		p.removed = append(p.removed, filepath.Join(p.s.cloneDir(), e.Name()))
	}
}
