package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vmnic/vmnic/netsetup"
)

const netnsDir = "/var/run/netns"

func netnsName(path string) string { return filepath.Base(path) }

func netnsExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// linkIn reports whether the netns at path has a link called name.
func linkIn(path, name string) bool {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return false
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return false
	}
	defer h.Close()
	_, err = h.LinkByName(name)
	return err == nil
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// demoNetns lists netns bind mounts named vmnic-demo* (owned sandboxes of
// the demo are vmnic-<id> with ids demo-*).
func demoNetns() []string {
	ents, _ := os.ReadDir(netnsDir)
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, filepath.Join(netnsDir, e.Name()))
		}
	}
	return out
}

// demoLinks lists host links named vmnic-demo* and links enslaved to them.
func demoLinks() []string {
	links, _ := netlinksafe.LinkList()
	masters := map[int]string{}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			masters[l.Attrs().Index] = l.Attrs().Name
		}
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		if _, ok := masters[a.Index]; ok {
			out = append(out, a.Name)
		} else if m, ok := masters[a.MasterIndex]; ok {
			out = append(out, a.Name+" (port of "+m+")")
		}
	}
	return out
}

// stateFiles lists the files (not directories) under the state dir.
func stateFiles() []string {
	var out []string
	filepath.WalkDir(stateDir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return nil
		}
		// The shared lock file stays, empty, like the directories: it holds
		// no sandbox's data (netsetup.SandboxLockFile).
		if p == filepath.Join(stateDir, netsetup.SandboxLockFile) {
			if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() && fi.Size() == 0 {
				return nil
			}
		}
		out = append(out, p)
		return nil
	})
	return out
}

// clearLeftovers removes what an interrupted earlier demo run left behind.
func (d *demo) clearLeftovers() {
	var left []string
	if st, err := netsetup.Open(stateDir); err == nil {
		ids, _ := st.IDs()
		for _, id := range ids {
			left = append(left, "record "+id)
			if out, err := d.quiet(nil, d.vmnicctl, d.ctl("teardown", id)...); err != nil {
				d.note("teardown of leftover sandbox %s: %v: %s", id, err, strings.TrimSpace(out))
			}
		}
	}
	for _, p := range demoNetns() {
		left = append(left, "netns "+p)
		if err := netns.DeleteNamed(filepath.Base(p)); err != nil {
			d.note("delete leftover netns %s: %v", p, err)
		}
	}
	for _, name := range []string{prefix + "-br0", prefix + "-br1"} {
		if l, err := netlink.LinkByName(name); err == nil {
			left = append(left, "bridge "+name)
			netlink.LinkDel(l)
		}
	}
	if err := os.RemoveAll(stateDir); err != nil {
		d.fail("remove the old state dir %s: %v", stateDir, err)
	}
	if len(left) > 0 {
		d.note("cleared leftovers of an earlier run: %s", strings.Join(left, ", "))
	}
	d.note("state dir %s (fresh)", stateDir)
}

// cleanup undoes whatever the demo still holds; it runs after success and
// failure alike and is quiet when there is nothing to do.
func (d *demo) cleanup() error {
	var errs []error
	if d.guest != nil {
		if err := d.guest.Close(); err != nil {
			errs = append(errs, fmt.Errorf("stop QEMU: %w", err))
		}
		d.guest = nil
	}
	for i := len(d.added) - 1; i >= 0; i-- {
		a := d.added[i]
		if out, err := d.quiet(d.cniEnv(a.ifname), d.cnitool, "del", a.net.name, a.netns); err != nil {
			errs = append(errs, fmt.Errorf("cnitool del %s %s: %v: %s", a.net.name, a.ifname, err, strings.TrimSpace(out)))
		}
	}
	d.added = nil
	for _, id := range d.sandboxes {
		if out, err := d.quiet(nil, d.vmnicctl, d.ctl("teardown", id)...); err != nil {
			errs = append(errs, fmt.Errorf("vmnicctl teardown %s: %v: %s", id, err, strings.TrimSpace(out)))
		}
	}
	d.sandboxes = nil
	for _, p := range demoNetns() {
		if err := netns.DeleteNamed(filepath.Base(p)); err != nil {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", p, err))
		}
	}
	if d.nets != nil {
		for _, n := range d.nets {
			if l, err := netlink.LinkByName(n.bridge); err == nil {
				if err := netlink.LinkDel(l); err != nil {
					errs = append(errs, fmt.Errorf("delete bridge %s: %w", n.bridge, err))
				}
			}
		}
	}
	if d.work != "" {
		os.RemoveAll(d.work)
		d.work = ""
	}
	if len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintf(os.Stderr, "cleanup: %v\n", e)
		}
	}
	return errors.Join(errs...)
}

// nothingLeft shows and checks that nothing of the demo is left; the
// bridges, which the reference bridge plugin keeps by design, must have no
// port left before the demo removes them.
func (d *demo) nothingLeft() {
	d.header("Nothing is left: netns, links, state dir, leases, processes")
	d.shell("ip netns list | grep " + prefix + " || echo '(no " + prefix + "* netns)'")
	if ns := demoNetns(); len(ns) > 0 {
		d.fail("netns left: %v", ns)
	}
	d.ok("no %s* netns", prefix)

	d.shell("ip -br link | grep -E '" + prefix + "|^tap' || true")
	for _, n := range d.nets {
		d.mustExec(nil, "ip", "-br", "link", "show", "master", n.bridge)
	}
	for _, l := range demoLinks() {
		if strings.Contains(l, "port of") {
			d.fail("a bridge port is left: %s", l)
		}
	}
	d.ok("the bridges have no port left (every veth went with its DEL); no vmnic TAP on the host")
	for _, n := range d.nets {
		if l, err := netlink.LinkByName(n.bridge); err == nil {
			d.note("the reference bridge plugin keeps its bridge by design; removing %s", n.bridge)
			d.check(netlink.LinkDel(l), "delete bridge %s", n.bridge)
		}
	}
	if l := demoLinks(); len(l) > 0 {
		d.fail("links left: %v", l)
	}
	d.ok("no %s* links", prefix)

	d.mustExec(nil, "find", stateDir)
	if f := stateFiles(); len(f) > 0 {
		d.fail("files left in the state dir: %v", f)
	}
	d.ok("state dir %s holds no record, lock or index file", stateDir)

	leases := 0
	filepath.WalkDir(d.ipamDir, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() && !strings.HasPrefix(e.Name(), "last_reserved_ip") && e.Name() != "lock" {
			leases++
		}
		return nil
	})
	if leases > 0 {
		d.fail("%d host-local leases left in %s", leases, d.ipamDir)
	}
	d.ok("no host-local IP lease left")
	if d.qemuPID != 0 {
		if processAlive(d.qemuPID) {
			d.fail("QEMU pid %d still running", d.qemuPID)
		}
		d.ok("no QEMU process (pid %d exited)", d.qemuPID)
	}
}
