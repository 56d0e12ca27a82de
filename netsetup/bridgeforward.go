package netsetup

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// This file holds the bridge backend's FORWARD-rule refcount: the users of
// a host bridge's FORWARD ACCEPT rules, a set kept in
// <stateDir>/bridge-forward/<bridge>.users (one user a line, sorted) under an
// flock on <bridge>.lock. The rules themselves are the caller's (the engine
// changes them through internal/hostnet): AcquireBridgeForward runs the
// change that adds them for the first user, ReleaseBridgeForward the one
// that removes them for the last, both under the lock, so users on many
// sandboxes never race the rules. The last user's release removes both
// files and the directory when it is empty.

// maxBridgeNameLen is IFNAMSIZ-1: a bridge name is a Linux interface name.
const maxBridgeNameLen = 15

// AcquireBridgeForward records user (e.g. "<sandbox>/<ifname>") as a user
// of bridge's FORWARD rules; when it is the first, add (which makes the
// rules) runs before it is recorded. It is idempotent per user. On error
// nothing is recorded. The wait for the bridge's lock ends when ctx is done.
func (s *Store) AcquireBridgeForward(ctx context.Context, bridge, user string, add func() error) error {
	return s.updateBridgeForward(ctx, bridge, user, func(users map[string]bool) func() error {
		first := len(users) == 0
		users[user] = true
		if !first {
			return nil
		}
		return add
	})
}

// ReleaseBridgeForward drops user from bridge's users; when no user is
// left, remove (which removes the rules) runs before that is recorded.
// Releasing a user that is not recorded is not an error. The wait for the
// bridge's lock ends when ctx is done.
func (s *Store) ReleaseBridgeForward(ctx context.Context, bridge, user string, remove func() error) error {
	return s.updateBridgeForward(ctx, bridge, user, func(users map[string]bool) func() error {
		if !users[user] {
			return nil
		}
		delete(users, user)
		if len(users) > 0 {
			return nil
		}
		return remove
	})
}

// BridgeForwardUsers lists the recorded users of bridge's FORWARD rules,
// sorted.
func (s *Store) BridgeForwardUsers(bridge string) ([]string, error) {
	if err := validBridgeName(bridge); err != nil {
		return nil, err
	}
	users, err := readUsers(s.forwardUsersPath(bridge))
	if err != nil {
		return nil, err
	}
	return sortedUsers(users), nil
}

// BridgeForwardBridges lists the bridges that have recorded users of their
// FORWARD rules, sorted (none when nothing was ever recorded).
func (s *Store) BridgeForwardBridges() ([]string, error) {
	ents, err := os.ReadDir(s.forwardDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list bridge forward users: %w", err)
	}
	var out []string
	for _, e := range ents {
		if b, ok := strings.CutSuffix(e.Name(), ".users"); ok && e.Type().IsRegular() && validBridgeName(b) == nil {
			out = append(out, b)
		}
	}
	sort.Strings(out)
	return out, nil
}

func validBridgeName(bridge string) error {
	if bridge == "" || strings.ContainsAny(bridge, "/\x00") || len(bridge) > maxBridgeNameLen {
		return fmt.Errorf("bridge name %q is not valid", bridge)
	}
	return nil
}

func (s *Store) forwardUsersPath(bridge string) string {
	return filepath.Join(s.forwardDir, bridge+".users")
}

func (s *Store) forwardLockPath(bridge string) string {
	return filepath.Join(s.forwardDir, bridge+".lock")
}

// updateBridgeForward runs fn on bridge's user set under the bridge's lock;
// fn may return an action (the rule change), run before the new set is
// written. When the action fails nothing is written.
func (s *Store) updateBridgeForward(ctx context.Context, bridge, user string, fn func(map[string]bool) func() error) error {
	if err := validBridgeName(bridge); err != nil {
		return err
	}
	if user == "" || strings.TrimSpace(user) != user || strings.ContainsAny(user, "\n\x00") {
		return fmt.Errorf("forward rules of %s: user %q is not valid", bridge, user)
	}
	lock, err := lockFile(ctx, s.forwardLockPath(bridge), true)
	if err != nil {
		return fmt.Errorf("forward rules of %s: lock: %w", bridge, err)
	}
	defer lock.Close()
	path := s.forwardUsersPath(bridge)
	users, err := readUsers(path)
	if err != nil {
		return err
	}
	had := len(users)
	if action := fn(users); action != nil {
		if err := action(); err != nil {
			if had == 0 {
				s.removeForwardFiles(bridge)
			}
			return err
		}
	}
	if len(users) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("forward rules of %s: %w", bridge, err)
		}
		s.removeForwardFiles(bridge)
		return nil
	}
	var buf bytes.Buffer
	for _, u := range sortedUsers(users) {
		buf.WriteString(u)
		buf.WriteByte('\n')
	}
	if err := writeAtomicInVolatileDir(s.forwardDir, path, buf.Bytes()); err != nil {
		return fmt.Errorf("forward rules of %s: %w", bridge, err)
	}
	return nil
}

// removeForwardFiles leaves nothing of a bridge without users behind: its
// lock file (held by the caller: a waiter re-locks the new one, see
// lockFile) and the directory when it is empty.
func (s *Store) removeForwardFiles(bridge string) {
	os.Remove(s.forwardLockPath(bridge))
	os.Remove(s.forwardDir)
}

func readUsers(path string) (map[string]bool, error) {
	users := map[string]bool{}
	data, err := readNoFollow(path)
	if errors.Is(err, fs.ErrNotExist) {
		return users, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if u := strings.TrimSpace(sc.Text()); u != "" {
			users[u] = true
		}
	}
	return users, nil
}

func sortedUsers(users map[string]bool) []string {
	out := make([]string, 0, len(users))
	for u := range users {
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}
