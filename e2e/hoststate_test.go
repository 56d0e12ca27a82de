package e2e

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Netns is an open handle on a network namespace: holding it keeps the
// namespace alive, so a test can look inside after the runtime dropped it and
// see what the plugins themselves removed.
type Netns struct {
	Path string
	h    netns.NsHandle
}

// OpenNetns opens the namespace at path; the handle closes at t.Cleanup.
func OpenNetns(t testing.TB, path string) *Netns {
	t.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("open netns %s: %v", path, err)
	}
	n := &Netns{Path: path, h: h}
	t.Cleanup(func() { n.h.Close() })
	return n
}

// ID is the namespace's nsfs device and inode.
func (n *Netns) ID(t testing.TB) (uint64, uint64) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(int(n.h), &st); err != nil {
		t.Fatalf("stat netns %s: %v", n.Path, err)
	}
	return uint64(st.Dev), st.Ino
}

// Link is what the tests check of a link.
type Link struct {
	Name    string
	Type    string // veth, tuntap, bridge, device (lo)...
	MAC     string
	MTU     int
	Addrs   []string
	Qdiscs  []string // qdisc types: ingress, clsact, noqueue, ...
	Filters int      // tc filters on the ingress hook
}

// Links lists the links in the namespace, with addresses, qdiscs and the
// number of ingress filters.
func (n *Netns) Links(t testing.TB) map[string]Link {
	t.Helper()
	h, err := netlink.NewHandleAt(n.h)
	if err != nil {
		t.Fatalf("netlink in %s: %v", n.Path, err)
	}
	defer h.Close()
	return listLinks(t, h)
}

func listLinks(t testing.TB, h *netlink.Handle) map[string]Link {
	t.Helper()
	links, err := retryDump(h.LinkList)
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	out := map[string]Link{}
	for _, l := range links {
		a := l.Attrs()
		lk := Link{Name: a.Name, Type: l.Type(), MAC: a.HardwareAddr.String(), MTU: a.MTU}
		addrs, _ := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_V4) })
		for _, ad := range addrs {
			lk.Addrs = append(lk.Addrs, ad.IPNet.String())
		}
		qds, _ := retryDump(func() ([]netlink.Qdisc, error) { return h.QdiscList(l) })
		for _, q := range qds {
			lk.Qdiscs = append(lk.Qdiscs, q.Type())
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_INGRESS} {
			fs, err := retryDump(func() ([]netlink.Filter, error) { return h.FilterList(l, parent) })
			if err == nil {
				lk.Filters += len(fs)
			}
		}
		out[a.Name] = lk
	}
	return out
}

// retryDump runs a netlink dump again when the kernel flags it interrupted
// (NLM_F_DUMP_INTR: the table changed during the dump, as it does in the
// host namespace while other work on the machine adds and removes links),
// so the tests never judge a partial list. Bounded.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var out []T
	var err error
	for i := 0; i < 50; i++ {
		out, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
		time.Sleep(time.Duration(i+1) * time.Millisecond)
	}
	return out, err
}

// Taps returns the TAP devices among links.
func Taps(links map[string]Link) []Link {
	var taps []Link
	for _, l := range links {
		if l.Type == "tuntap" {
			taps = append(taps, l)
		}
	}
	sort.Slice(taps, func(i, j int) bool { return taps[i].Name < taps[j].Name })
	return taps
}

// hasTCHook reports whether l has a qdisc other than the default ones, i.e.
// one a plugin added (ingress or clsact).
func (l Link) hasTCHook() bool {
	for _, q := range l.Qdiscs {
		if q == "ingress" || q == "clsact" {
			return true
		}
	}
	return false
}

// HostLinks lists the links of the host (the test's) namespace.
func HostLinks(t testing.TB) map[string]Link {
	t.Helper()
	h, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	return listLinks(t, h)
}

// BridgePorts lists the links enslaved to the host bridge name.
func BridgePorts(t testing.TB, name string) []string {
	t.Helper()
	br, err := netlink.LinkByName(name)
	if err != nil {
		return nil // no bridge, no ports
	}
	links, err := retryDump(netlink.LinkList)
	if err != nil {
		t.Fatal(err)
	}
	var ports []string
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			ports = append(ports, l.Attrs().Name)
		}
	}
	sort.Strings(ports)
	return ports
}

// Leases lists host-local's leased IPs of a network.
func (e *Env) Leases(t testing.TB, network string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(e.IPAMDir, network))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, ent := range ents {
		n := ent.Name()
		if n == "lock" || strings.HasPrefix(n, "last_reserved_ip") {
			continue
		}
		ips = append(ips, n)
	}
	return ips
}

// PodNetnsFiles lists the netns bind mounts containerd keeps under its state dir.
func (e *Env) PodNetnsFiles(t testing.TB) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(e.Dir, "state", "io.containerd.grpc.v1.cri", "netns", "*"))
	return files
}

// isNetnsMount reports whether path is a mounted network namespace.
func isNetnsMount(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}
