package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/api"
	cnins "github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

var modes = []mode{preinstalled, external}

// TestVMPodLifecycle: a VM pod on the runtime's netns, through every event,
// with the plugin pre-installed and external.
func TestVMPodLifecycle(t *testing.T) {
	for _, m := range modes {
		t.Run(string(m), func(t *testing.T) {
			e := newEnv(t)
			rt := startRuntime(t, e, runtimeOptions{mode: m})
			ns := e.fixture("life-" + string(m)[:3])
			p := vmPod("vmnn-life-"+string(m), ns)

			mustOK(t, "RunPodSandbox", rt.run(p))
			rec := e.record(p.id)
			if rec.Phase != netsetup.PhasePrepared || len(rec.NetworkConfigs) != 0 {
				t.Errorf("phase %s with %d NICs, want prepared with 0", rec.Phase, len(rec.NetworkConfigs))
			}
			if rec.NetnsPath != ns || rec.NetnsOwned {
				t.Errorf("netns %q owned=%v, want the runtime's %q, not owned", rec.NetnsPath, rec.NetnsOwned, ns)
			}
			if rec.PodName != "name-"+p.id || rec.PodNamespace != "ns-vmnn" || rec.PodUID != "uid-"+p.id {
				t.Errorf("pod %s/%s uid %s not recorded", rec.PodNamespace, rec.PodName, rec.PodUID)
			}
			if rec.Origin != "nri" {
				t.Errorf("origin %q, want nri", rec.Origin)
			}
			rtDir := filepath.Join(e.runtimeDir, p.id)
			if rec.RuntimeDir != rtDir {
				t.Errorf("runtime dir %q, want %q", rec.RuntimeDir, rtDir)
			}
			if fi, err := os.Stat(rtDir); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
				t.Errorf("runtime dir %s: %v %v, want a 0700 directory", rtDir, fi, err)
			}
			// RunPodSandbox again (a retried request) changes nothing.
			mustOK(t, "RunPodSandbox again", rt.run(p))
			if again := e.record(p.id); again.NetnsPath != ns || again.Origin != "nri" {
				t.Errorf("second RunPodSandbox changed the record: %+v", again)
			}

			adj, err := rt.create(p, "vmm")
			mustOK(t, "CreateContainer vmm", err)
			checkVMMAdjustment(t, e, p.id, adj, "")
			// A NIC hot-added after CreateContainer shows in the copy the
			// VMM container reads.
			_, err = e.store.Update(context.Background(), p.id, func(r *netsetup.NetSetup) error {
				r.PutNIC(netsetup.NIC{ID: "net1", IfName: "net1", Tap: "vmnnt9", State: netsetup.NICPending})
				return nil
			})
			mustOK(t, "record a hot-added NIC", err)
			if seen := readMirror(t, filepath.Join(rtDir, "netsetup", "netsetup.json")); seen == nil || len(seen.NetworkConfigs) != 1 {
				t.Errorf("record copy after the hot-add: %+v, want the new NIC", seen)
			}
			_, err = e.store.Update(context.Background(), p.id, func(r *netsetup.NetSetup) error {
				r.RemoveNIC("net1")
				return nil
			})
			mustOK(t, "drop the NIC", err)

			adj, err = rt.create(p, "sidecar")
			mustOK(t, "CreateContainer sidecar", err)
			if !emptyAdjustment(adj) {
				t.Errorf("a container that is not the VMM was changed: %+v", adj)
			}

			for i := 0; i < 2; i++ {
				mustOK(t, "StopPodSandbox", rt.stop(p))
				if rec := e.record(p.id); rec.NetnsPath != ns {
					t.Errorf("record after stop: %+v", rec)
				}
			}
			for i := 0; i < 2; i++ {
				mustOK(t, "RemovePodSandbox", rt.remove(p))
				e.noRecord(p.id)
			}
			if _, err := os.Stat(rtDir); !os.IsNotExist(err) {
				t.Errorf("runtime dir %s still there after removal (%v)", rtDir, err)
			}
			if !isNetns(ns) {
				t.Errorf("the runtime's netns %s was removed: vmnic does not own it", ns)
			}
		})
	}
}

// TestHostNetworkVMPod: a VM pod without a netns of its own (selected by
// its runtime handler) gets a netns vmnic creates and owns, its VMM
// container is moved into it, and the removal deletes it.
func TestHostNetworkVMPod(t *testing.T) {
	for _, m := range modes {
		t.Run(string(m), func(t *testing.T) {
			e := newEnv(t)
			rt := startRuntime(t, e, runtimeOptions{mode: m})
			p := pod{id: "vmnn-host-" + string(m), handler: testVMHandler}

			mustOK(t, "RunPodSandbox", rt.run(p))
			rec := e.record(p.id)
			owned := filepath.Join(e.netnsDir, "vmnic-"+p.id)
			if !rec.NetnsOwned || rec.NetnsPath != owned {
				t.Fatalf("netns %q owned=%v, want owned %s", rec.NetnsPath, rec.NetnsOwned, owned)
			}
			if !isNetns(owned) {
				t.Fatalf("%s is not a network namespace", owned)
			}

			adj, err := rt.create(p, "any-name") // no vmm-container annotation: every container
			mustOK(t, "CreateContainer", err)
			checkVMMAdjustment(t, e, p.id, adj, owned)

			mustOK(t, "StopPodSandbox", rt.stop(p))
			if !isNetns(owned) {
				t.Errorf("owned netns removed at stop; it must stay until removal")
			}
			e.record(p.id)
			mustOK(t, "RemovePodSandbox", rt.remove(p))
			e.noRecord(p.id)
			if _, err := os.Lstat(owned); !os.IsNotExist(err) {
				t.Errorf("owned netns %s still there after removal (%v)", owned, err)
			}
			mustOK(t, "RemovePodSandbox again", rt.remove(p))
		})
	}
}

// checkVMMAdjustment checks what the VMM container of sandbox id gets;
// ownedNetns is the netns it must be moved into ("" for none).
func checkVMMAdjustment(t *testing.T, e *env, id string, adj *api.ContainerAdjustment, ownedNetns string) {
	t.Helper()
	if adj == nil || adj.Linux == nil {
		t.Fatalf("VMM container not adjusted: %+v", adj)
	}
	var tun bool
	for _, d := range adj.Linux.Devices {
		if d.Path == "/dev/net/tun" && d.Type == "c" && d.Major == 10 && d.Minor == 200 {
			tun = true
		}
	}
	if !tun {
		t.Errorf("no /dev/net/tun (c 10:200) device in %+v", adj.Linux.Devices)
	}
	var rule bool
	if adj.Linux.Resources != nil {
		for _, d := range adj.Linux.Resources.Devices {
			if d.Allow && d.Type == "c" && d.Major.GetValue() == 10 && d.Minor.GetValue() == 200 && strings.Contains(d.Access, "rw") {
				rule = true
			}
		}
	}
	if !rule {
		t.Errorf("no device cgroup rule allowing c 10:200 rw")
	}
	rtDir := filepath.Join(e.runtimeDir, id)
	mirrorDir := filepath.Join(rtDir, "netsetup")
	var dirMount, roMount bool
	for _, m := range adj.Mounts {
		switch {
		case m.Source == rtDir && m.Destination == rtDir:
			dirMount = slices.Contains(m.Options, "rw")
		case m.Source == mirrorDir && m.Destination == mirrorDir:
			// Read-only, and after its parent so that it lands on top.
			roMount = slices.Contains(m.Options, "ro") && !slices.Contains(m.Options, "rw") && dirMount
		case m.Source == e.store.Path(id):
			// A mount of the record file keeps the inode it had at
			// CreateContainer: every save replaces it by a rename.
			t.Errorf("the record file itself is mounted (its updates would not show): %+v", m)
		}
	}
	if !dirMount {
		t.Errorf("runtime dir %s not mounted read-write: %+v", rtDir, adj.Mounts)
	}
	if !roMount {
		t.Errorf("record copy dir %s not mounted read-only after the runtime dir: %+v", mirrorDir, adj.Mounts)
	}
	env := map[string]string{}
	for _, kv := range adj.Env {
		env[kv.Key] = kv.Value
	}
	mirror := filepath.Join(mirrorDir, "netsetup.json")
	if env["VMNIC_SANDBOX_ID"] != id || env["VMNIC_NETSETUP"] != mirror || env["VMNIC_RUNTIME_DIR"] != rtDir {
		t.Errorf("environment %v, want VMNIC_NETSETUP=%s (the record's copy in the runtime dir)", env, mirror)
	}
	if seen := readMirror(t, mirror); seen == nil || seen.SandboxID != id {
		t.Errorf("record copy %s: %+v, want sandbox %s", mirror, seen, id)
	}
	var netPaths []string
	for _, n := range adj.Linux.Namespaces {
		if n.Type == "network" {
			netPaths = append(netPaths, n.Path)
		}
	}
	switch {
	case ownedNetns == "" && len(netPaths) != 0:
		t.Errorf("container moved to netns %v; it must stay in the pod's", netPaths)
	case ownedNetns != "" && (len(netPaths) != 1 || netPaths[0] != ownedNetns):
		t.Errorf("network namespace adjustment %v, want %s", netPaths, ownedNetns)
	}
	if fi, err := os.Stat(rtDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir %s: %v, want mode 0700", rtDir, err)
	}
}

// readMirror reads the record's copy in the runtime dir (what the VMM
// container reads at VMNIC_NETSETUP); nil when there is none.
func readMirror(t *testing.T, path string) *netsetup.NetSetup {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("record copy: %v", err)
		return nil
	}
	var rec netsetup.NetSetup
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Errorf("record copy %s: %v", path, err)
		return nil
	}
	return &rec
}

func emptyAdjustment(a *api.ContainerAdjustment) bool {
	if a == nil {
		return true
	}
	l := a.Linux
	return len(a.Mounts) == 0 && len(a.Env) == 0 && len(a.Annotations) == 0 &&
		(l == nil || (len(l.Devices) == 0 && len(l.Namespaces) == 0 &&
			(l.Resources == nil || len(l.Resources.Devices) == 0)))
}

// TestNonVMPodUntouched: pods that are not VM pods get no record, no netns
// and no container changes.
func TestNonVMPodUntouched(t *testing.T) {
	e := newEnv(t)
	rt := startRuntime(t, e, runtimeOptions{mode: preinstalled})
	ns := e.fixture("plain")
	for _, p := range []pod{
		{id: "vmnn-plain-1", netns: ns, handler: "runc"},
		{id: "vmnn-plain-2", netns: ns, annotations: map[string]string{"vmnic.io/vm": "false", "vmnic.io/vmm-container": "c"}},
		{id: "vmnn-plain-3", handler: "runc"}, // host network
	} {
		mustOK(t, "RunPodSandbox", rt.run(p))
		adj, err := rt.create(p, "c")
		mustOK(t, "CreateContainer", err)
		if !emptyAdjustment(adj) {
			t.Errorf("%s: container changed: %+v", p.id, adj)
		}
		mustOK(t, "StopPodSandbox", rt.stop(p))
		mustOK(t, "RemovePodSandbox", rt.remove(p))
		e.noRecord(p.id)
	}
	if ids, _ := e.store.IDs(); len(ids) != 0 {
		t.Errorf("records made: %v", ids)
	}
	if ents, _ := os.ReadDir(e.netnsDir); len(ents) != 0 {
		t.Errorf("netns made: %v", ents)
	}
	if !isNetns(ns) {
		t.Errorf("pod netns touched")
	}
}

// TestCNIRecordKept: the CNI plugin runs before NRI RunPodSandbox (in
// containerd and CRI-O alike), so the record may already hold NICs; they
// are kept and the pod's identity is added.
func TestCNIRecordKept(t *testing.T) {
	e := newEnv(t)
	rt := startRuntime(t, e, runtimeOptions{mode: preinstalled})
	ns := e.fixture("cni")
	p := vmPod("vmnn-cni", ns)
	nsid, err := netsetup.IdentifyNetns(ns)
	mustOK(t, "identify netns", err)
	rec := netsetup.New(p.id)
	rec.NetnsPath, rec.NetnsID = ns, &nsid
	rec.PutNIC(netsetup.NIC{ID: "net0", Network: "vmnn-net", IfName: "eth0", Tap: "vmnnt0",
		MAC: "02:00:00:00:00:01", MTU: 1500, IPs: []string{"10.203.0.5/16"}, Gateway: "10.203.0.1", State: netsetup.NICPending})
	mustOK(t, "create record", e.store.Create(context.Background(), rec))
	mustOK(t, "add TAP", cnins.WithNetNSPath(ns, func(cnins.NetNS) error {
		return netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "vmnnt0"}, Mode: netlink.TUNTAP_MODE_TAP})
	}))
	if !hasLink(t, ns, "vmnnt0") {
		t.Fatal("TAP fixture missing")
	}

	mustOK(t, "RunPodSandbox", rt.run(p))
	got := e.record(p.id)
	if len(got.NetworkConfigs) != 1 || got.NetworkConfigs[0].Tap != "vmnnt0" || got.Phase != netsetup.PhaseConfigured {
		t.Errorf("CNI NIC not kept: phase %s, NICs %+v", got.Phase, got.NetworkConfigs)
	}
	if got.PodName != "name-"+p.id || got.PodUID != "uid-"+p.id || got.Origin != "nri" {
		t.Errorf("pod identity not added: %+v", got)
	}
	if !hasLink(t, ns, "vmnnt0") {
		t.Error("RunPodSandbox removed the CNI TAP")
	}

	// Stop removes the NICs (the same teardown as vmnicctl) and keeps the
	// record at zero NICs.
	mustOK(t, "StopPodSandbox", rt.stop(p))
	if hasLink(t, ns, "vmnnt0") {
		t.Error("TAP still there after StopPodSandbox")
	}
	if got := e.record(p.id); len(got.NetworkConfigs) != 0 || got.Phase != netsetup.PhasePrepared {
		t.Errorf("after stop: phase %s, NICs %+v", got.Phase, got.NetworkConfigs)
	}
	mustOK(t, "RemovePodSandbox", rt.remove(p))
	e.noRecord(p.id)
}

func hasLink(t *testing.T, nsPath, name string) bool {
	t.Helper()
	found := false
	err := cnins.WithNetNSPath(nsPath, func(cnins.NetNS) error {
		_, err := netlink.LinkByName(name)
		found = err == nil
		return nil
	})
	mustOK(t, "look up link", err)
	return found
}

// TestRunPodSandboxErrors: when the handoff is impossible the pod fails,
// with a message that says why, and nothing is left behind.
func TestRunPodSandboxErrors(t *testing.T) {
	e := newEnv(t)
	rt := startRuntime(t, e, runtimeOptions{mode: preinstalled})
	plain := filepath.Join(t.TempDir(), "vmnn-not-a-netns")
	mustOK(t, "write file", os.WriteFile(plain, nil, 0o644))
	for _, tc := range []struct {
		id, netns string
		want      []string
	}{
		{"vmnn-err-file", plain, []string{"vmnic", "vmnn-err-file", plain, "not a network namespace"}},
		{"vmnn-err-missing", filepath.Join(e.fixtureDir, "vmnn-missing"), []string{"vmnic", "vmnn-err-missing", "no such file"}},
		{"vmnn-err-uts", "/proc/self/ns/uts", []string{"vmnic", "vmnn-err-uts", "not a network namespace"}},
	} {
		t.Run(tc.id, func(t *testing.T) {
			p := vmPod(tc.id, tc.netns)
			mustFail(t, "RunPodSandbox", rt.run(p), tc.want...)
			e.noRecord(p.id)
			if _, err := os.Stat(filepath.Join(e.runtimeDir, p.id)); !os.IsNotExist(err) {
				t.Errorf("runtime dir left behind (%v)", err)
			}
			// The runtime then stops and removes the failed pod.
			mustOK(t, "StopPodSandbox", rt.stop(p))
			mustOK(t, "RemovePodSandbox", rt.remove(p))
		})
	}
	// The plugin is still connected and working.
	ok := vmPod("vmnn-err-after", e.fixture("after"))
	mustOK(t, "RunPodSandbox after errors", rt.run(ok))
	e.record(ok.id)
	mustOK(t, "RemovePodSandbox", rt.remove(ok))
}

// TestHandlerDeadline: a handler that cannot finish (the sandbox's record
// is locked by another vmnic process) gives up before the runtime's request
// timeout with an error that says why, instead of being cut off and
// disconnected by the runtime; the plugin keeps working.
func TestHandlerDeadline(t *testing.T) {
	e := newEnv(t)
	rt := startRuntime(t, e, runtimeOptions{mode: external, requestTimeout: 600 * time.Millisecond})
	p := vmPod("vmnn-locked", e.fixture("locked"))
	tx, err := e.store.Lock(context.Background(), p.id)
	mustOK(t, "lock", err)
	err = rt.run(p)
	tx.Unlock()
	mustFail(t, "RunPodSandbox with the record locked", err, "vmnic", "vmnn-locked", "locked by another vmnic process")
	if strings.Contains(err.Error(), "failed to handle RunPodSandbox request") {
		t.Errorf("the runtime timed the plugin out (%v); the plugin must answer first", err)
	}
	e.noRecord(p.id)

	mustOK(t, "RunPodSandbox after the lock is released", rt.run(p))
	e.record(p.id)
	mustOK(t, "RemovePodSandbox", rt.remove(p))
}

// TestSynchronizeReconcile: at (re)connect the plugin reconciles with the
// runtime's list of pods: records of sandboxes the runtime no longer has are
// torn down, orphan owned netns removed, missed VM pods prepared; records
// vmnicctl made for VMs outside the runtime are kept.
func TestSynchronizeReconcile(t *testing.T) {
	e := newEnv(t)
	nsGone, nsLive, nsCtl, nsMissed := e.fixture("gone"), e.fixture("live"), e.fixture("ctl"), e.fixture("missed")
	mk := func(id, nsPath, origin string) {
		t.Helper()
		rec := netsetup.New(id)
		rec.NetnsPath, rec.Origin = nsPath, origin
		mustOK(t, "create record "+id, e.store.Create(context.Background(), rec))
	}
	mk("vmnn-gone-nri", nsGone, "nri")                                  // runtime forgot it: teardown
	mk("vmnn-live-nri", nsLive, "nri")                                  // listed: keep
	mk("vmnn-vmnicctl", nsCtl, "")                                      // vmnicctl VM, live netns: keep
	mk("vmnn-deadns", filepath.Join(e.fixtureDir, "vmnn-vanished"), "") // netns gone: teardown
	orphan := mustNetns(t, e.netnsDir, "vmnic-vmnn-orphan")             // owned, no record: remove
	foreign := mustNetns(t, e.netnsDir, "vmnn-foreign")                 // not vmnic's: keep

	listed := []pod{vmPod("vmnn-live-nri", nsLive), vmPod("vmnn-missed", nsMissed), {id: "vmnn-other", netns: nsMissed, handler: "runc"}}
	startRuntime(t, e, runtimeOptions{mode: preinstalled, pods: listed})

	eventually(t, "records of vanished sandboxes torn down", func() bool {
		_, a := e.store.Get("vmnn-gone-nri")
		_, b := e.store.Get("vmnn-deadns")
		return a != nil && b != nil
	})
	eventually(t, "orphan netns removed", func() bool { _, err := os.Lstat(orphan); return os.IsNotExist(err) })
	eventually(t, "missed VM pod prepared", func() bool { _, err := e.store.Get("vmnn-missed"); return err == nil })

	if rec := e.record("vmnn-missed"); rec.NetnsPath != nsMissed || rec.Origin != "nri" {
		t.Errorf("missed VM pod record: %+v", rec)
	}
	e.record("vmnn-live-nri")
	e.record("vmnn-vmnicctl")
	e.noRecord("vmnn-other")
	for _, ns := range []string{nsGone, nsLive, nsCtl, nsMissed, foreign} {
		if !isNetns(ns) {
			t.Errorf("netns %s removed; vmnic does not own it", ns)
		}
	}
}

func mustNetns(t *testing.T, dir, name string) string {
	t.Helper()
	p, err := netns.Create(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestStopAfterNetnsGone: CRI-O removes the pod netns before its NRI
// StopPodSandbox; stop and removal still succeed and clean up.
func TestStopAfterNetnsGone(t *testing.T) {
	e := newEnv(t)
	rt := startRuntime(t, e, runtimeOptions{mode: external})
	ns := e.fixture("crio")
	p := vmPod("vmnn-crio", ns)
	mustOK(t, "RunPodSandbox", rt.run(p))
	mustOK(t, "record a NIC", func() error {
		_, err := e.store.Update(context.Background(), p.id, func(r *netsetup.NetSetup) error {
			r.PutNIC(netsetup.NIC{ID: "net0", IfName: "eth0", Tap: "vmnnt1", State: netsetup.NICAttached})
			return nil
		})
		return err
	}())
	mustOK(t, "remove netns", netns.Remove(ns)) // as CRI-O does before the event
	mustOK(t, "StopPodSandbox", rt.stop(p))
	if rec := e.record(p.id); len(rec.NetworkConfigs) != 0 {
		t.Errorf("NICs left after stop: %+v", rec.NetworkConfigs)
	}
	mustOK(t, "StopPodSandbox again", rt.stop(p))
	mustOK(t, "RemovePodSandbox", rt.remove(p))
	e.noRecord(p.id)
}
