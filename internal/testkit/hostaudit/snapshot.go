package hostaudit

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/netns"
)

// Scope says what a snapshot covers. Other programs may change the host at
// the same time, so the host part is limited to what the scope names.
type Scope struct {
	// Netns are network namespace paths: every link, qdisc and filter in
	// each. An absent one is a line of its own; one that is not a
	// namespace is an error.
	Netns []string
	// NetnsDirs hold network namespaces (bind mounts): each is listed, with
	// every link, qdisc and filter inside it, and its mount.
	NetnsDirs []string
	// HostLinks are host link names (a bridge: its ports too).
	HostLinks []string
	// HostLinkPrefixes select host links by name prefix (e.g. "vmt" TAPs).
	HostLinkPrefixes []string
	// HostSubnets select host links that hold an address in one of them
	// (the host ends of ptp veths).
	HostSubnets []netip.Prefix
	// StateDirs: every file (path, mode, content hash), records and lock
	// files by kind, and directories writable by others.
	StateDirs []string
	// RuntimeDirs: every file and directory under them (per-sandbox VMM
	// socket directories).
	RuntimeDirs []string
	// IPAMDirs are host-local dataDirs: each lease (a file named after an IP).
	IPAMDirs []string
	// IPTablesMarkers select iptables-save and ip6tables-save lines (a
	// bridge name, "vmnic", a subnet).
	IPTablesMarkers []string
	// ProcExes selects processes by executable path (leftover plugins).
	ProcExes []string
	// OwnFDs records the caller's open file descriptors.
	OwnFDs bool
	// Exact adds what holds still only over a short before/after
	// comparison, as a test's: link MAC addresses, the kernel's default
	// root qdiscs, tc filter handles and every directory under StateDirs
	// with its mode. A long run (the soak) leaves it off: a bridge's MAC
	// follows its ports, a link's default qdisc comes and goes with its up
	// state, a filter made again may get another handle, and vmnic makes
	// its state subdirectories on first use.
	Exact bool
}

// Snapshot is a sorted list of "<kind> <detail>" lines, kind one of Kinds.
type Snapshot []string

// Kinds are the resource kinds a snapshot counts, in report order.
var Kinds = []string{"netns", "mount", "link", "tap", "qdisc", "filter", "file", "dir", "lock", "record", "lease", "iptables", "proc", "fd"}

// Take lists the scope. Whatever could be listed is returned with the
// errors of what could not.
func Take(sc Scope) (Snapshot, error) {
	var out []string
	var errs []error
	add := func(lines []string, err error) {
		out = append(out, lines...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range sc.Netns {
		add(netnsPathLines(p, sc.Exact))
	}
	for _, d := range sc.NetnsDirs {
		add(netnsDirLines(d, sc.Exact))
	}
	add(mountLines(sc.NetnsDirs))
	add(hostLinkLines(sc))
	for _, d := range sc.StateDirs {
		add(stateLines(d, sc.Exact))
	}
	for _, d := range sc.RuntimeDirs {
		add(runtimeLines(d))
	}
	for _, d := range sc.IPAMDirs {
		add(leaseLines(d))
	}
	if len(sc.IPTablesMarkers) > 0 {
		add(iptablesLines(sc.IPTablesMarkers))
	}
	if len(sc.ProcExes) > 0 {
		add(procLines(sc.ProcExes))
	}
	if sc.OwnFDs {
		add(fdLines())
	}
	sort.Strings(out)
	return out, errors.Join(errs...)
}

// Diff is "" when the snapshots are equal, else the differing lines
// ("- " only before, "+ " only after).
func (s Snapshot) Diff(after Snapshot) string { return Diff(s, after) }

// Contains reports whether a line contains sub.
func (s Snapshot) Contains(sub string) bool {
	for _, l := range s {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

// Count counts lines per kind.
func (s Snapshot) Count() map[string]int {
	out := map[string]int{}
	for _, l := range s {
		kind, _, _ := strings.Cut(l, " ")
		out[kind]++
	}
	return out
}

// Leaked counts, per kind, the lines of after that s does not have.
func (s Snapshot) Leaked(after Snapshot) map[string]int {
	out := map[string]int{}
	for _, k := range Kinds {
		out[k] = 0
	}
	count := map[string]int{}
	for _, l := range s {
		count[l]++
	}
	for _, l := range after {
		if count[l] > 0 {
			count[l]--
			continue
		}
		kind, _, _ := strings.Cut(l, " ")
		out[kind]++
	}
	return out
}

// Filter keeps the lines of the given kinds.
func (s Snapshot) Filter(kinds ...string) Snapshot {
	var out Snapshot
	for _, l := range s {
		kind, _, _ := strings.Cut(l, " ")
		for _, k := range kinds {
			if kind == k {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

// netnsPathLines lists the namespace at p and what is inside it.
func netnsPathLines(p string, exact bool) ([]string, error) {
	if _, err := os.Stat(p); err != nil {
		return []string{"netns " + p + " absent"}, nil
	}
	nl, err := HandleAt(p)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", p, err)
	}
	defer nl.Close()
	return append([]string{"netns " + p}, linkLines(nl, "netns "+filepath.Base(p), all, exact)...), nil
}

// netnsDirLines lists the namespaces in dir and what is inside each; a
// file there that is no namespace is a line, not an error (a crash may
// leave one).
func netnsDirLines(dir string, exact bool) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		out = append(out, "netns "+p)
		nl, err := HandleAt(p)
		if err != nil {
			out = append(out, "netns "+p+" ("+err.Error()+")")
			continue
		}
		out = append(out, linkLines(nl, "netns "+e.Name(), all, exact)...)
		nl.Close()
	}
	return out, nil
}

func all(netlink.Link) bool { return true }

// mountLines lists the mounts under dirs (a leaked netns keeps one).
func mountLines(dirs []string) ([]string, error) {
	if len(dirs) == 0 {
		return nil, nil
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := netns.UnescapeMount(f[4])
		for _, d := range dirs {
			if strings.HasPrefix(mp, filepath.Clean(d)+"/") {
				out = append(out, "mount "+mp)
				break
			}
		}
	}
	return out, nil
}

func hostLinkLines(sc Scope) ([]string, error) {
	if len(sc.HostLinks)+len(sc.HostLinkPrefixes)+len(sc.HostSubnets) == 0 {
		return nil, nil
	}
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	keep, err := Selector(nl, HostSelection{Names: sc.HostLinks, Prefixes: sc.HostLinkPrefixes, Subnets: sc.HostSubnets})
	if err != nil {
		return nil, err
	}
	return linkLines(nl, "host", keep, sc.Exact), nil
}

// linkLines describes the links keep selects, their qdiscs and filters:
//
//	link|tap <name> type <type> up|down mtu <mtu>[ mac <mac>][ master <name>][ owner <uid> group <gid>] on <where>
//	qdisc <type> dev <name> handle <h> parent <p> on <where>
//	filter dev <name> parent <p> <type> prio <n> proto <p>[ handle <h>][ mirred <action> to <name>][ action <type>] on <where>
//
// where is "host" or "netns <name>". mac, handle and the kernel's default
// root qdiscs are there when exact.
func linkLines(nl *netlink.Handle, where string, keep func(netlink.Link) bool, exact bool) []string {
	links, err := Links(nl, keep)
	if err != nil {
		return []string{"link list error: " + err.Error() + " on " + where}
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		kind := "link"
		tun, isTun := l.Link.(*netlink.Tuntap)
		if isTun && tun.Mode == netlink.TUNTAP_MODE_TAP {
			kind = "tap"
		}
		up := "down"
		if a.Flags&net.FlagUp != 0 {
			up = "up"
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%s %s type %s %s mtu %d", kind, a.Name, l.Type(), up, a.MTU)
		if exact {
			fmt.Fprintf(&b, " mac %s", a.HardwareAddr)
		}
		if a.MasterIndex != 0 {
			fmt.Fprintf(&b, " master %s", l.Master())
		}
		if isTun {
			fmt.Fprintf(&b, " owner %d group %d", int32(tun.Owner), int32(tun.Group))
		}
		out = append(out, b.String()+" on "+where)
		for _, q := range l.Qdiscs {
			if !exact && isDefaultQdisc(q) {
				continue
			}
			out = append(out, fmt.Sprintf("qdisc %s dev %s handle %s parent %s on %s", q.Type(), a.Name,
				netlink.HandleStr(q.Attrs().Handle), netlink.HandleStr(q.Attrs().Parent), where))
		}
		for _, f := range l.Filters {
			out = append(out, fmt.Sprintf("filter dev %s parent %s %s on %s", a.Name, netlink.HandleStr(f.Parent), describeFilter(f.Filter, l.Names, exact), where))
		}
	}
	return out
}

// isDefaultQdisc: the root qdisc the kernel gives a link that is up, not
// one vmnic (or anyone) added.
func isDefaultQdisc(q netlink.Qdisc) bool {
	if q.Attrs().Parent != netlink.HANDLE_ROOT {
		return false
	}
	switch q.Type() {
	case "noqueue", "fq_codel", "pfifo_fast", "mq":
		return true
	}
	return false
}

func describeFilter(f netlink.Filter, names map[int]string, exact bool) string {
	fa := f.Attrs()
	s := fmt.Sprintf("%s prio %d proto %#x", f.Type(), fa.Priority, fa.Protocol)
	if exact {
		s += " handle " + netlink.HandleStr(fa.Handle)
	}
	if b, ok := f.(*netlink.BpfFilter); ok {
		s += fmt.Sprintf(" name %s direct-action %v", b.Name, b.DirectAction)
	}
	if u, ok := f.(*netlink.U32); ok {
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok {
				s += fmt.Sprintf(" mirred %d to %s", m.MirredAction, names[m.Ifindex])
			} else {
				s += " action " + a.Type()
			}
		}
	}
	return s
}

// sharedLockFile is the state dir's lock file (netsetup/locks.go): one
// byte-range lock per sandbox on it, so no sandbox has a lock file of its
// own (the older locks/<id>.lock files are still audited).
const sharedLockFile = "sandboxes.lock"

// stateLines lists a vmnic state directory: records, lock files and every
// other file, with their modes and content hashes, and the directories
// writable by others (exact: every directory, with its mode).
func stateLines(dir string, exact bool) ([]string, error) {
	var out []string
	err := Walk(dir, func(p string, d fs.DirEntry) error {
		rel, _ := filepath.Rel(dir, p)
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		mode := fmt.Sprintf("%04o", fi.Mode().Perm())
		switch {
		case d.IsDir():
			if fi.Mode().Perm()&0o022 != 0 {
				out = append(out, fmt.Sprintf("file %s/%s dir mode %s (writable by others)", dir, rel, mode))
			}
			if exact {
				out = append(out, fmt.Sprintf("dir %s/%s mode %s", dir, rel, mode))
			}
			return nil
		case fi.Mode()&fs.ModeSymlink != 0:
			out = append(out, fmt.Sprintf("file %s/%s symlink", dir, rel))
			return nil
		}
		kind := "file"
		switch {
		case strings.HasPrefix(rel, "sandboxes/") && strings.HasSuffix(rel, ".json"):
			kind = "record"
		case rel == sharedLockFile:
			// Made by every store open and never removed, like the
			// store's directories: listed as they are (exact only), unless
			// it is not the empty 0600 file it should be.
			if !exact && fi.Mode().IsRegular() && fi.Size() == 0 && fi.Mode().Perm() == 0o600 {
				return nil
			}
			kind = "lock"
		case strings.HasPrefix(rel, "locks/"):
			kind = "lock"
		}
		sum := " unreadable"
		if data, err := os.ReadFile(p); err == nil {
			h := sha256.Sum256(data)
			sum = " " + hex.EncodeToString(h[:8])
		} else if errors.Is(err, fs.ErrNotExist) {
			return nil // removed meanwhile
		}
		out = append(out, fmt.Sprintf("%s %s/%s mode %s%s", kind, dir, rel, mode, sum))
		return nil
	})
	return out, err
}

// runtimeLines lists every file and directory under dir.
func runtimeLines(dir string) ([]string, error) {
	var out []string
	err := Walk(dir, func(p string, d fs.DirEntry) error {
		if p == dir {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if fi.Mode()&fs.ModeSocket != 0 {
			return nil // a VMM's API socket: the VMM's, not vmnic's
		}
		kind := "file"
		if d.IsDir() {
			kind = "dir"
		}
		out = append(out, fmt.Sprintf("%s %s mode %04o", kind, p, fi.Mode().Perm()))
		return nil
	})
	return out, err
}

// leaseLines lists host-local leases: files named after an IP address
// under <dataDir>/<network>/ (last_reserved_ip.* and lock are bookkeeping).
func leaseLines(dir string) ([]string, error) {
	var out []string
	err := Walk(dir, func(p string, d fs.DirEntry) error {
		if d.IsDir() {
			return nil
		}
		if _, err := netip.ParseAddr(d.Name()); err != nil {
			return nil
		}
		data, _ := os.ReadFile(p)
		owner := strings.ReplaceAll(strings.TrimSpace(string(data)), "\n", " ")
		rel, _ := filepath.Rel(dir, p)
		out = append(out, fmt.Sprintf("lease %s/%s %s", dir, rel, owner))
		return nil
	})
	return out, err
}

// chainCounters is the "[packets:bytes]" of an iptables-save chain line.
var chainCounters = regexp.MustCompile(` \[\d+:\d+\]$`)

// iptablesLines lists the selected rules and chains; a chain's counters
// are left out (traffic changes them, not vmnic).
func iptablesLines(markers []string) ([]string, error) {
	rules, err := IPTables(markers)
	var out []string
	for _, r := range rules {
		out = append(out, "iptables "+r.Bin+" "+chainCounters.ReplaceAllString(r.Line, ""))
	}
	return out, err
}

// procLines lists processes running one of exes.
func procLines(exes []string) ([]string, error) {
	want := map[string]bool{}
	for _, e := range exes {
		want[filepath.Clean(e)] = true
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err != nil {
			continue
		}
		exe = strings.TrimSuffix(exe, " (deleted)")
		if want[exe] {
			out = append(out, fmt.Sprintf("proc %s pid %d", exe, pid))
		}
	}
	return out, nil
}

// fdLines lists the caller's open file descriptors by what they point at
// (sockets and pipes by kind only: their inode numbers change).
func fdLines() ([]string, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the fd ReadDir itself used
		}
		if i := strings.Index(target, ":["); i > 0 {
			target = target[:i]
		}
		out = append(out, "fd "+target)
	}
	return out, nil
}
