package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/netns"
)

// cleanupLeftovers removes what an earlier run left behind (a run killed by
// a timeout cannot clean up after itself). The caller holds the suite lock,
// so no other run is using these directories.
func cleanupLeftovers(p paths) []error {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tmpPrefix+"*"))
	var errs []error
	for _, d := range dirs {
		if fi, err := os.Lstat(d); err != nil || !fi.IsDir() {
			continue
		}
		errs = append(errs, forceCleanup(d, p)...)
	}
	if len(dirs) == 0 {
		errs = append(errs, deleteHostLinks()...)
	}
	return errs
}

// forceCleanup kills every process of the run rooted at dir, deletes its
// containers, unmounts and removes everything under dir, the netns vmnic
// created for it, the suite's bridges and the CNI result cache entries.
func forceCleanup(dir string, p paths) []error {
	var errs []error
	// containerd, its shims and the NRI plugins all name a path under dir.
	killProcs(procsNaming(dir))

	// The containers (pause, vmmprobe) survive their shim: runc deletes them.
	runcRoot := filepath.Join(dir, "runc", criNamespace)
	if ents, err := os.ReadDir(runcRoot); err == nil && exists(p.tool("runc")) {
		for _, ent := range ents {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			out, err := exec.CommandContext(ctx, p.tool("runc"), "--root", runcRoot, "delete", "--force", ent.Name()).CombinedOutput()
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("runc delete %s: %w: %s", ent.Name(), err, out))
			}
		}
	}
	killProcs(procsNaming(dir)) // anything started meanwhile

	// Network namespaces vmnic created and owns for this run's pods.
	for _, ns := range ownedNetns(filepath.Join(dir, "vmnic")) {
		unix.Unmount(ns, unix.MNT_DETACH)
		if err := os.Remove(ns); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, mp := range mountsUnder(dir) {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	removeHostLeftovers(dir)
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
	}
	errs = append(errs, deleteHostLinks()...)
	removeCgroups()
	return errs
}

// sandboxIDs lists the pod sandboxes containerd recorded for the run rooted at dir.
func sandboxIDs(dir string) []string {
	var ids []string
	for _, d := range []string{"root", "state"} {
		ents, _ := os.ReadDir(filepath.Join(dir, d, "io.containerd.grpc.v1.cri", "sandboxes"))
		for _, ent := range ents {
			if id := ent.Name(); len(id) >= 32 && !strings.ContainsAny(id, "/*?[\\") && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// removeHostLeftovers removes what containerd keeps outside any directory
// it can be given, for the pods of the run rooted at dir: go-cni's result
// cache (/var/lib/cni/results/<network>-<sandbox-id>-<ifname>) and the
// sockets of shims that were killed (/run/containerd/s/<sha256 of
// <grpc address>/<namespace>/<sandbox id>>).
func removeHostLeftovers(dir string) {
	for _, id := range sandboxIDs(dir) {
		files, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", "*-"+id+"-*"))
		for _, f := range files {
			os.Remove(f)
		}
		sock := filepath.Join(dir, "containerd.sock", criNamespace, id)
		for _, p := range []string{sock, filepath.Join(sock, "debug")} {
			os.Remove(filepath.Join(shimSocketDir, fmt.Sprintf("%x", sha256.Sum256([]byte(p)))))
		}
	}
}

// shimSocketDir is where containerd's shims put their sockets when root.
const shimSocketDir = "/run/containerd/s"

// removeCgroups removes the (empty, once the containers are gone) pod cgroups
// under the suite's cgroup parent, and the shim socket dir if it is empty.
func removeCgroups() {
	parents, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", cgroupParent))
	for _, p := range parents {
		kids, _ := filepath.Glob(filepath.Join(p, "*", "cgroup.procs"))
		for _, k := range kids {
			os.Remove(filepath.Dir(k))
		}
		os.Remove(p)
	}
	// The shim socket dir, when nothing else uses it.
	os.Remove(shimSocketDir)
}

// deleteHostLinks deletes the suite's bridges.
func deleteHostLinks() []error {
	var errs []error
	for _, name := range []string{net0Bridge, net1Bridge} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			continue
		}
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge %s: %w", name, err))
		}
	}
	return errs
}

// procsNaming lists the processes (other than this one) whose command line
// names dir or a path under it.
func procsNaming(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(data), "\x00") {
			if arg == dir || strings.Contains(arg, dir+"/") {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// killProcs SIGKILLs the given processes and waits (bounded) until they are gone.
func killProcs(pids []int) {
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			if err := syscall.Kill(pid, 0); err != nil {
				break
			}
			// A zombie child of ours (containerd) is reaped by its cmd.Wait goroutine.
			if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(st), ") Z ") {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// mountsUnder lists the mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := netns.UnescapeMount(fields[4])
		if strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	sort.Slice(mps, func(i, j int) bool { return len(mps[i]) > len(mps[j]) })
	return mps
}

// ownedNetns lists the netns paths that vmnic records under stateDir say
// vmnic created (host-network VM pods).
func ownedNetns(stateDir string) []string {
	files, _ := filepath.Glob(filepath.Join(stateDir, "sandboxes", "*.json"))
	var out []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var rec struct {
			NetnsPath  string `json:"netns_path"`
			NetnsOwned bool   `json:"netns_owned"`
		}
		if json.Unmarshal(data, &rec) == nil && rec.NetnsOwned && strings.HasPrefix(filepath.Base(rec.NetnsPath), "vmnic-") {
			out = append(out, rec.NetnsPath)
		}
	}
	return out
}
