// Package hostaudit lists what vmnic may create on a host or in a network
// namespace — namespaces and their mounts, links with their qdiscs and tc
// filters, TAPs, state files, records and lock files, runtime directories,
// host-local leases, iptables rules, processes, the caller's file
// descriptors — as a Snapshot of "<kind> <detail>" lines. It only reads.
// One snapshot serves both users: the root test suites' before/after
// comparisons (Scope.Exact: MACs, default qdiscs, filter handles, every
// state directory) and the leak audit of the soak and the reliability tests
// (internal/testkit/faultenv), which counts the lines per kind.
package hostaudit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Link is a listed link with its traffic control.
type Link struct {
	netlink.Link
	// Names maps every ifindex of the link's namespace to its name (for a
	// master or a mirred target).
	Names map[int]string
	// Qdiscs is nil when they could not be listed.
	Qdiscs []netlink.Qdisc
	// Filters are those under the ingress and egress (clsact) parents that
	// could be listed.
	Filters []Filter
}

// Master is the name of the link's master ("" when none).
func (l Link) Master() string {
	if l.Attrs().MasterIndex == 0 {
		return ""
	}
	return l.Names[l.Attrs().MasterIndex]
}

// Filter is a tc filter and the parent it was listed under.
type Filter struct {
	netlink.Filter
	Parent uint32
}

// Links lists the links of nl's namespace that keep selects, with their
// qdiscs and the filters under the ingress and egress parents.
func Links(nl *netlink.Handle, keep func(netlink.Link) bool) ([]Link, error) {
	links, err := Dump(nl.LinkList)
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var out []Link
	for _, l := range links {
		if !keep(l) {
			continue
		}
		ll := Link{Link: l, Names: names}
		if qs, err := Dump(func() ([]netlink.Qdisc, error) { return nl.QdiscList(l) }); err == nil {
			ll.Qdiscs = qs
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := Dump(func() ([]netlink.Filter, error) { return nl.FilterList(l, parent) })
			if err != nil {
				continue
			}
			for _, f := range fs {
				ll.Filters = append(ll.Filters, Filter{Filter: f, Parent: parent})
			}
		}
		out = append(out, ll)
	}
	return out, nil
}

// HostSelection says which host links to list: other programs share the
// host, so only those it names.
type HostSelection struct {
	Names    []string       // by name; a bridge: its ports too
	Prefixes []string       // by name prefix
	Subnets  []netip.Prefix // holding an address in one of them
}

// Selector returns the keep function for Links that selects sel's links
// among those now in nl's namespace.
func Selector(nl *netlink.Handle, sel HostSelection) (func(netlink.Link) bool, error) {
	links, err := Dump(nl.LinkList)
	if err != nil {
		return nil, err
	}
	named := map[string]bool{}
	for _, n := range sel.Names {
		named[n] = true
	}
	masters := map[int]bool{}
	for _, l := range links {
		if named[l.Attrs().Name] {
			masters[l.Attrs().Index] = true
		}
	}
	inSubnet := map[int]bool{}
	if len(sel.Subnets) > 0 {
		addrs, err := Dump(func() ([]netlink.Addr, error) { return nl.AddrList(nil, netlink.FAMILY_ALL) })
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			for _, p := range sel.Subnets {
				if p.Contains(ip.Unmap()) {
					inSubnet[a.LinkIndex] = true
				}
			}
		}
	}
	return func(l netlink.Link) bool {
		a := l.Attrs()
		if named[a.Name] || masters[a.MasterIndex] || inSubnet[a.Index] {
			return true
		}
		for _, p := range sel.Prefixes {
			if strings.HasPrefix(a.Name, p) {
				return true
			}
		}
		return false
	}, nil
}

// HandleAt opens a netlink handle in the network namespace bind-mounted at
// path.
func HandleAt(path string) (*netlink.Handle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("not a namespace: %w", err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("no netlink handle: %w", err)
	}
	return nl, nil
}

// IPTablesRule is an iptables-save (or ip6tables-save) line.
type IPTablesRule struct {
	Bin  string // "iptables-save" or "ip6tables-save"
	Line string
}

// IPTables returns the iptables-save and ip6tables-save lines, comments
// left out, that contain one of markers. A missing *-save binary lists
// nothing.
func IPTables(markers []string) ([]IPTablesRule, error) {
	var out []IPTablesRule
	for _, bin := range []string{"iptables-save", "ip6tables-save"} {
		path, err := exec.LookPath(bin)
		if err != nil {
			continue
		}
		data, err := exec.Command(path).Output()
		if err != nil {
			return out, fmt.Errorf("%s: %w", bin, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "#") {
				continue
			}
			for _, m := range markers {
				if strings.Contains(line, m) {
					out = append(out, IPTablesRule{Bin: bin, Line: line})
					break
				}
			}
		}
	}
	return out, nil
}

// Walk calls fn for dir and everything under it, like filepath.WalkDir,
// passing over what does not exist (dir itself, or entries removed
// meanwhile); any other error ends the walk and is returned.
func Walk(dir string, fn func(path string, d fs.DirEntry) error) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		return fn(p, d)
	})
}

// Diff is "" when the line lists are equal (as multisets), else the
// differing lines: "- " only in before, "+ " only in after.
func Diff(before, after []string) string {
	count := map[string]int{}
	for _, l := range before {
		count[l]++
	}
	for _, l := range after {
		count[l]--
	}
	var b strings.Builder
	for _, l := range before {
		if count[l] > 0 {
			fmt.Fprintf(&b, "- %s\n", l)
			count[l]--
		}
	}
	for _, l := range after {
		if count[l] < 0 {
			fmt.Fprintf(&b, "+ %s\n", l)
			count[l]++
		}
	}
	return b.String()
}

// Dump repeats a netlink dump the kernel interrupted (links changing
// meanwhile: other programs share the host), which would be incomplete.
func Dump[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for i := 0; i < 20; i++ {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
		time.Sleep(time.Duration(i+1) * 5 * time.Millisecond)
	}
	return v, err
}
