// Package soak is vmnic's reliability harness: it builds the failpoint
// binaries, sets up isolated CNI chains (bridge/ptp + host-local + vmnic)
// with their own state, IPAM and netns directories, drives ADD/DEL/GC
// through libcni with injected crashes and VMM faults, and audits every kind
// of resource vmnic touches so a run can prove that nothing leaked.
//
// The soak program (soak/cmd/vmnic-soak) and the reliability tests
// (test/reliability) share it. Names: netns vmnr-*, bridges vmnbrr*,
// subnets 10.207.0.0/16 (bridge chains) and 10.217.0.0/16 (ptp chains).
package soak

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
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
)

// Scope says what an audit covers. Other programs may change the host at
// the same time, so the host part is limited to what the scope names.
type Scope struct {
	// NetnsDirs hold network namespaces (bind mounts): each is listed, with
	// every link, qdisc and filter inside it, and its mount.
	NetnsDirs []string
	// HostLinks are host link names (a bridge: its ports too).
	HostLinks []string
	// HostLinkPrefixes select host links by name prefix.
	HostLinkPrefixes []string
	// HostSubnets select host links that hold an address in one of them
	// (the host ends of ptp veths).
	HostSubnets []netip.Prefix
	// StateDirs: every file (path, mode, content hash) and directory mode.
	StateDirs []string
	// RuntimeDirs: every file and directory under them (per-sandbox VMM
	// socket directories).
	RuntimeDirs []string
	// IPAMDirs are host-local dataDirs: each lease (a file named after an IP).
	IPAMDirs []string
	// IPTablesMarkers select iptables-save lines (the bridge name, "vmnic").
	IPTablesMarkers []string
	// ProcExes selects processes by executable path (leftover plugins).
	ProcExes []string
	// OwnFDs records the runner's open file descriptors.
	OwnFDs bool
}

// Snapshot is a sorted list of "<kind> <detail>" lines.
type Snapshot []string

// Kinds are the resource kinds an audit counts, in report order.
var Kinds = []string{"netns", "mount", "link", "tap", "qdisc", "filter", "file", "dir", "lock", "record", "lease", "iptables", "proc", "fd"}

// Take audits the scope.
func Take(sc Scope) (Snapshot, error) {
	var out []string
	var errs []error
	add := func(lines []string, err error) {
		out = append(out, lines...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range sc.NetnsDirs {
		add(netnsLines(d))
	}
	add(mountLines(sc.NetnsDirs))
	add(hostLinkLines(sc))
	for _, d := range sc.StateDirs {
		add(stateLines(d))
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
func (s Snapshot) Diff(after Snapshot) string { return hostaudit.Diff(s, after) }

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

// netnsLines lists the namespaces in dir and what is inside each.
func netnsLines(dir string) ([]string, error) {
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
		nl, err := hostaudit.HandleAt(p)
		if err != nil {
			out = append(out, "netns "+p+" ("+err.Error()+")")
			continue
		}
		out = append(out, linkLines(nl, "in "+e.Name(), func(netlink.Link) bool { return true })...)
		nl.Close()
	}
	return out, nil
}

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
		mp := unescapeMount(f[4])
		for _, d := range dirs {
			if strings.HasPrefix(mp, filepath.Clean(d)+"/") {
				out = append(out, "mount "+mp)
				break
			}
		}
	}
	return out, nil
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
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
	keep, err := hostaudit.Selector(nl, hostaudit.HostSelection{Names: sc.HostLinks, Prefixes: sc.HostLinkPrefixes, Subnets: sc.HostSubnets})
	if err != nil {
		return nil, err
	}
	return linkLines(nl, "host", keep), nil
}

// linkLines describes the links keep selects, their qdiscs and filters.
// A host veth's name is random (the bridge plugin's), so links are keyed by
// name only inside a namespace; on the host the line says what it is.
func linkLines(nl *netlink.Handle, where string, keep func(netlink.Link) bool) []string {
	links, err := hostaudit.Links(nl, keep)
	if err != nil {
		return []string{"link " + where + " list error: " + err.Error()}
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		kind := "link"
		if t, ok := l.Link.(*netlink.Tuntap); ok && t.Mode == netlink.TUNTAP_MODE_TAP {
			kind = "tap"
		}
		up := "down"
		if a.Flags&net.FlagUp != 0 {
			up = "up"
		}
		master := ""
		if a.MasterIndex != 0 {
			master = " master " + l.Master()
		}
		owner := ""
		if t, ok := l.Link.(*netlink.Tuntap); ok {
			owner = fmt.Sprintf(" owner %d group %d", int32(t.Owner), int32(t.Group))
		}
		out = append(out, fmt.Sprintf("%s %s %s type %s mtu %d %s%s%s", kind, where, a.Name, l.Type(), a.MTU, up, master, owner))
		for _, q := range l.Qdiscs {
			if q.Attrs().Parent == netlink.HANDLE_ROOT && (q.Type() == "noqueue" || q.Type() == "fq_codel" || q.Type() == "pfifo_fast" || q.Type() == "mq") {
				continue // the kernel's default root qdisc, not vmnic's
			}
			out = append(out, fmt.Sprintf("qdisc %s %s %s handle %s parent %s", where, a.Name, q.Type(),
				netlink.HandleStr(q.Attrs().Handle), netlink.HandleStr(q.Attrs().Parent)))
		}
		for _, f := range l.Filters {
			fa := f.Attrs()
			desc := fmt.Sprintf("%s prio %d proto %#x", f.Type(), fa.Priority, fa.Protocol)
			if u, ok := f.Filter.(*netlink.U32); ok {
				for _, act := range u.Actions {
					if m, ok := act.(*netlink.MirredAction); ok {
						desc += " mirred to " + l.Names[m.Ifindex]
					}
				}
			}
			out = append(out, fmt.Sprintf("filter %s %s parent %s %s", where, a.Name, netlink.HandleStr(f.Parent), desc))
		}
	}
	return out
}

// stateLines lists a vmnic state directory: records, lock files and every
// other file, with their modes, and the modes of its directories.
func stateLines(dir string) ([]string, error) {
	var out []string
	err := hostaudit.Walk(dir, func(p string, d fs.DirEntry) error {
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
			return nil
		case fi.Mode()&fs.ModeSymlink != 0:
			out = append(out, fmt.Sprintf("file %s/%s symlink", dir, rel))
			return nil
		}
		kind := "file"
		switch {
		case strings.HasPrefix(rel, "sandboxes/") && strings.HasSuffix(rel, ".json"):
			kind = "record"
		case strings.HasPrefix(rel, "locks/"):
			kind = "lock"
		}
		sum := ""
		if data, err := os.ReadFile(p); err == nil {
			h := sha256.Sum256(data)
			sum = " " + hex.EncodeToString(h[:6])
		}
		out = append(out, fmt.Sprintf("%s %s/%s mode %s%s", kind, dir, rel, mode, sum))
		return nil
	})
	return out, err
}

// runtimeLines lists every file and directory under dir.
func runtimeLines(dir string) ([]string, error) {
	var out []string
	err := hostaudit.Walk(dir, func(p string, d fs.DirEntry) error {
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
	err := hostaudit.Walk(dir, func(p string, d fs.DirEntry) error {
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

func iptablesLines(markers []string) ([]string, error) {
	rules, err := hostaudit.IPTables(markers)
	var out []string
	for _, r := range rules {
		if strings.HasPrefix(r.Line, ":") {
			continue // a chain's policy and counters
		}
		out = append(out, "iptables "+r.Bin+" "+r.Line)
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

// fdLines lists the runner's open file descriptors by what they point at
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
