package hostnet

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"golang.org/x/sys/unix"
)

// RuleComment marks every iptables rule vmnic adds.
const RuleComment = "vmnic"

// ForwardRules keeps the bridge backend's FORWARD ACCEPT rules
// (`-i <br> -o <br> -m comment --comment vmnic -j ACCEPT`, IPv4 and, when
// ip6tables is there, IPv6): added with a bridge's first user and removed
// with its last. Users are kept as a set in <Dir>/<bridge>.users under an
// flock, so Acquire and Release are idempotent per user.
type ForwardRules struct {
	Dir string // e.g. <stateDir>/bridge-forward
}

// ForwardRuleSpec is the rule for bridge (without table and chain).
func ForwardRuleSpec(bridge string) []string {
	return []string{"-i", bridge, "-o", bridge, "-m", "comment", "--comment", RuleComment, "-j", "ACCEPT"}
}

// Acquire records user as a user of bridge's rules and adds them when user
// is the first. On error nothing is recorded.
func (r ForwardRules) Acquire(bridge, user string) error {
	return r.update(bridge, func(users map[string]bool) (func() error, error) {
		first := len(users) == 0
		users[user] = true
		if !first {
			return nil, nil
		}
		return func() error { return setForwardRules(bridge, true) }, nil
	})
}

// Release drops user from bridge's users and removes the rules when no user
// is left. Releasing a user that is not recorded is not an error.
func (r ForwardRules) Release(bridge, user string) error {
	return r.update(bridge, func(users map[string]bool) (func() error, error) {
		if !users[user] {
			return nil, nil
		}
		delete(users, user)
		if len(users) > 0 {
			return nil, nil
		}
		return func() error { return setForwardRules(bridge, false) }, nil
	})
}

// Users lists the recorded users of bridge's rules.
func (r ForwardRules) Users(bridge string) ([]string, error) {
	users, err := readUsers(r.usersPath(bridge))
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(users))
	for u := range users {
		out = append(out, u)
	}
	sort.Strings(out)
	return out, nil
}

func (r ForwardRules) usersPath(bridge string) string {
	return filepath.Join(r.Dir, bridge+".users")
}

// update runs fn on bridge's user set under the lock; fn may return an
// action (the iptables change) run before the new set is written.
func (r ForwardRules) update(bridge string, fn func(map[string]bool) (func() error, error)) error {
	if bridge == "" || strings.ContainsAny(bridge, "/\x00") || len(bridge) > MaxIfNameLen {
		return fmt.Errorf("bridge name %q is not valid", bridge)
	}
	lock, err := r.lock(bridge)
	if err != nil {
		return err
	}
	defer lock.Close()
	path := r.usersPath(bridge)
	users, err := readUsers(path)
	if err != nil {
		return err
	}
	action, err := fn(users)
	if err != nil {
		return err
	}
	if action != nil {
		if err := action(); err != nil {
			return err
		}
	}
	if len(users) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("forward rules of %s: %w", bridge, err)
		}
		// Leave nothing behind: the lock file (a waiter re-locks the new
		// one, see lock) and the directory when it is empty.
		os.Remove(r.lockPath(bridge))
		os.Remove(r.Dir)
		return nil
	}
	var buf bytes.Buffer
	keys := make([]string, 0, len(users))
	for u := range users {
		keys = append(keys, u)
	}
	sort.Strings(keys)
	for _, u := range keys {
		buf.WriteString(u)
		buf.WriteByte('\n')
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("forward rules of %s: %w", bridge, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("forward rules of %s: %w", bridge, err)
	}
	return nil
}

func (r ForwardRules) lockPath(bridge string) string {
	return filepath.Join(r.Dir, bridge+".lock")
}

// lock takes bridge's lock, retrying when the lock file or the directory
// was removed meanwhile by the last user's release.
func (r ForwardRules) lock(bridge string) (*os.File, error) {
	p := r.lockPath(bridge)
	for attempt := 0; ; attempt++ {
		if err := os.MkdirAll(r.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("forward rules dir: %w", err)
		}
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
		if errors.Is(err, fs.ErrNotExist) && attempt < 100 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("forward rules of %s: %w", bridge, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("forward rules of %s: lock: %w", bridge, err)
		}
		var held, now unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &held); err != nil {
			f.Close()
			return nil, err
		}
		if err := unix.Lstat(p, &now); err == nil && now.Dev == held.Dev && now.Ino == held.Ino {
			return f, nil
		}
		f.Close()
	}
}

func readUsers(path string) (map[string]bool, error) {
	users := map[string]bool{}
	data, err := os.ReadFile(path)
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

// setForwardRules adds (present) or removes the rules for bridge, IPv4
// always and IPv6 when ip6tables is installed.
func setForwardRules(bridge string, present bool) error {
	spec := ForwardRuleSpec(bridge)
	var errs []error
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			if proto == iptables.ProtocolIPv6 {
				continue // no ip6tables: nothing to do for IPv6
			}
			errs = append(errs, fmt.Errorf("iptables: %w", err))
			continue
		}
		if present {
			ok, err := ipt.Exists("filter", "FORWARD", spec...)
			if err == nil && !ok {
				err = ipt.Insert("filter", "FORWARD", 1, spec...)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("add FORWARD ACCEPT rule for bridge %s (%s): %w", bridge, protoName(proto), err))
			}
		} else if err := ipt.DeleteIfExists("filter", "FORWARD", spec...); err != nil {
			errs = append(errs, fmt.Errorf("remove FORWARD ACCEPT rule for bridge %s (%s): %w", bridge, protoName(proto), err))
		}
	}
	if len(errs) > 0 && present {
		// Leave nothing half added.
		_ = setForwardRules(bridge, false)
	}
	return errors.Join(errs...)
}

func protoName(p iptables.Protocol) string {
	if p == iptables.ProtocolIPv6 {
		return "ip6tables"
	}
	return "iptables"
}
