package reliability

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/faultenv"
	"github.com/vmnic/vmnic/netsetup"
)

// damage makes each kind of unreadable record (issue 11) at path, the
// record of sandbox sid.
var damage = map[string]func(t *testing.T, path, sid string){
	"empty":     func(t *testing.T, path, _ string) { must(t, "empty", os.WriteFile(path, nil, 0o600)) },
	"truncated": func(t *testing.T, path, _ string) { must(t, "truncate", os.Truncate(path, 100)) },
	"not json": func(t *testing.T, path, _ string) {
		must(t, "write", os.WriteFile(path, []byte("\x00not a record\n"), 0o600))
	},
	"future schema": func(t *testing.T, path, sid string) {
		must(t, "write", os.WriteFile(path, []byte(`{"schema": 99, "sandbox_id": "`+sid+`"}`), 0o600))
	},
	"other id": func(t *testing.T, path, _ string) {
		data, err := os.ReadFile(path)
		must(t, "read", err)
		data = []byte(strings.Replace(string(data), `"sandbox_id": "`, `"sandbox_id": "x`, 1))
		must(t, "write", os.WriteFile(path, data, 0o600))
	},
	"symlink": func(t *testing.T, path, _ string) {
		target := filepath.Join(t.TempDir(), "record.json")
		must(t, "move", os.Rename(path, target))
		must(t, "symlink", os.Symlink(target, path))
	},
	"directory": func(t *testing.T, path, _ string) {
		must(t, "rm", os.Remove(path))
		must(t, "mkdir", os.Mkdir(path, 0o700))
	},
}

func damageKinds() []string {
	var out []string
	for k := range damage {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// recordPath is the record file of sandbox sid in e.
func recordPath(e *faultenv.Env, sid string) string {
	return filepath.Join(e.StateDir, "sandboxes", sid+".json")
}

// quarantined checks that the quarantine holds n records (and n reasons)
// and removes it, so that the host can be compared with before.
func quarantined(t *testing.T, e *faultenv.Env, min int) {
	t.Helper()
	dir := filepath.Join(e.StateDir, "quarantine")
	ents, _ := os.ReadDir(dir)
	files, reasons := 0, 0
	for _, ent := range ents {
		if strings.HasSuffix(ent.Name(), ".reason") {
			reasons++
		} else {
			files++
		}
	}
	if files < min || files != reasons {
		t.Errorf("quarantine: %d files, %d reasons; want at least %d of each", files, reasons, min)
	}
	os.RemoveAll(dir)
}

// TestCorruptRecordMatrix damages a live sandbox's record in every
// unreadable way and runs every command on it: CNI ADD (a second network),
// DEL, CHECK, GC, STATUS through the real plugin in the real bridge chain,
// and vmnicctl list, show, teardown, gc. Each case asserts the command's
// outcome, then DELs the chain: the host must end as a clean DEL leaves it
// (the audit taken before the ADD, the IPAM leases released by the chain),
// with the damaged record in the quarantine.
func TestCorruptRecordMatrix(t *testing.T) {
	commands := []string{"cni-del", "cni-add", "cni-check", "cni-gc", "cni-status", "ctl-list", "ctl-show", "ctl-teardown", "ctl-gc"}
	cases := 0
	for _, backend := range []string{"cni", "bridge"} {
		for _, kind := range damageKinds() {
			for _, cmd := range commands {
				if backend == "bridge" && cmd == "cni-add" {
					continue // the second network is a cni-backend chain
				}
				t.Run(backend+"/"+kind+"/"+cmd, func(t *testing.T) {
					corruptCase(t, backend, kind, cmd)
				})
				cases++
			}
		}
	}
	t.Logf("%d unreadable kinds x %d commands x 2 backends = %d cases", len(damage), len(commands), cases)
}

// tapThere says whether the world's NIC still has its TAP (in the netns,
// or on the host for the bridge backend).
func (w *world) tapThere(t *testing.T, backend string) bool {
	if backend == "bridge" {
		return faultenv.HostHasLink(hostnet.TapNameOnHost(w.sid, "eth0"))
	}
	return tapIn(t, w.att.Netns, "tapeth0")
}

func corruptCase(t *testing.T, backend, kind, cmd string) {
	w := newWorld(t, backend)
	base := audit(t, w.e)
	w.runtimeNetns(t)
	second, err := w.e.PtpChain("vmnr-net2", nil)
	must(t, "second chain", err)
	att2 := w.att
	att2.IfName = "net1"
	_, err = w.chain.Add(ctx(t), w.att)
	must(t, "ADD", err)
	damage[kind](t, recordPath(w.e, w.sid), w.sid)

	switch cmd {
	case "cni-del":
		must(t, "DEL of the damaged sandbox", w.chain.Del(ctx(t), w.att))
		must(t, "second DEL", w.chain.Del(ctx(t), w.att))
	case "cni-add":
		_, err := second.Add(ctx(t), att2)
		must(t, "ADD of a second network on the damaged sandbox", err)
		rec := record(t, w.e, w.sid)
		if nicCount(rec) != 2 || rec.Quarantined == "" {
			t.Errorf("record after the second ADD: %d NICs, quarantined %q; want eth0 rebuilt and net1", nicCount(rec), rec.Quarantined)
		}
		must(t, "CHECK of the NIC added after the rebuild", second.Check(ctx(t), att2))
		must(t, "DEL of the second network", second.Del(ctx(t), att2))
		must(t, "DEL", w.chain.Del(ctx(t), w.att))
	case "cni-check":
		err := w.chain.Check(ctx(t), w.att)
		if err == nil || !strings.Contains(err.Error(), "quarantined") {
			t.Errorf("CHECK = %v, want a failure saying the record was quarantined and rebuilt", err)
		}
		if err := w.chain.Check(ctx(t), w.att); err == nil || !strings.Contains(err.Error(), "rebuilt") {
			t.Errorf("second CHECK = %v, want a failure saying the NIC was rebuilt", err)
		}
		must(t, "DEL", w.chain.Del(ctx(t), w.att))
	case "cni-gc":
		must(t, "GC", w.chain.GC(ctx(t), w.att))
		if rec := record(t, w.e, w.sid); nicCount(rec) != 1 {
			t.Errorf("GC: record has %d NICs, want eth0 rebuilt", nicCount(rec))
		}
		must(t, "DEL", w.chain.Del(ctx(t), w.att))
	case "cni-status":
		must(t, "STATUS", w.chain.CNI.GetStatusNetworkList(ctx(t), w.chain.List))
		must(t, "DEL", w.chain.Del(ctx(t), w.att))
	case "ctl-list":
		r, err := w.e.Vmnicctl(ctx(t), nil, "list")
		must(t, "vmnicctl list", err)
		if !strings.Contains(r.Stderr, "warning") {
			t.Errorf("list: no warning on stderr: %q", r.Stderr)
		}
		if !strings.Contains(r.Stdout, w.sid) || !strings.Contains(r.Stdout, "quarantined") {
			t.Errorf("list: want the rebuilt sandbox and a quarantine line:\n%s", r.Stdout)
		}
		must(t, "DEL", w.chain.Del(ctx(t), w.att))
	case "ctl-show":
		r, err := w.e.Vmnicctl(ctx(t), nil, "show", w.sid)
		must(t, "vmnicctl show", err)
		if !strings.Contains(r.Stdout, "Rebuilt") || !strings.Contains(r.Stdout, "eth0") {
			t.Errorf("show: want the rebuilt record:\n%s", r.Stdout)
		}
		must(t, "DEL", w.chain.Del(ctx(t), w.att))
	case "ctl-teardown":
		_, err := w.e.Vmnicctl(ctx(t), nil, "teardown", w.sid)
		must(t, "vmnicctl teardown", err)
		if w.tapThere(t, backend) {
			t.Error("teardown left the TAP")
		}
		must(t, "DEL", w.chain.Del(ctx(t), w.att))
	case "ctl-gc":
		_, err := w.e.Vmnicctl(ctx(t), nil, "gc")
		must(t, "vmnicctl gc", err)
		if !w.tapThere(t, backend) {
			t.Error("gc removed the TAP of a live sandbox whose record was unreadable")
		}
		if rec := record(t, w.e, w.sid); nicCount(rec) != 1 {
			t.Errorf("gc: record has %d NICs, want eth0 rebuilt", nicCount(rec))
		}
		must(t, "DEL", w.chain.Del(ctx(t), w.att))
	}
	quarantined(t, w.e, 1)
	must(t, "remove netns", w.e.RemoveNetns(w.att.Netns))
	same(t, backend+" backend, "+kind+" record, "+cmd+", then DEL", base, audit(t, w.e))
}

// TestStateDirLost deletes the state dir under live sandboxes (cni and
// bridge backends, and a prepared sandbox whose netns vmnic owns), with a
// second installation's sandbox in the same netns dir and on the same host
// bridge; then DEL (or not) and vmnicctl gc: nothing of the first
// installation is left, and the second's objects are untouched.
func TestStateDirLost(t *testing.T) {
	for _, repair := range []string{"del-then-gc", "gc-then-del"} {
		t.Run(repair, func(t *testing.T) { stateDirLost(t, repair) })
	}
}

func stateDirLost(t *testing.T, repair string) {
	e := newEnv(t)
	cniChain, err := e.BridgeChain("vmnr-net", nil)
	must(t, "chain", err)
	brChain, err := e.BridgeChain("vmnr-br", map[string]any{"backend": "bridge", "bridge": e.Bridge})
	must(t, "chain", err)
	// The second installation: its own state dir, the same netns dir and
	// bridge (so both installations' gc look at its objects).
	otherState := filepath.Join(e.Root, "other-state")
	otherChain, err := faultenv.NewChain(faultenv.PtpConflist("vmnr-other", e.PtpSubnet(), e.IPAMDir,
		e.VmnicConf(map[string]any{"stateDir": otherState})), []string{e.Bins.Dir, e.RefCNI}, e.CacheDir)
	must(t, "other chain", err)
	otherBr, err := faultenv.NewChain(faultenv.BridgeConflist("vmnr-otherbr", e.Bridge, e.BridgeSubnet(), e.IPAMDir,
		e.VmnicConf(map[string]any{"stateDir": otherState, "backend": "bridge", "bridge": e.Bridge})), []string{e.Bins.Dir, e.RefCNI}, e.CacheDir)
	must(t, "other bridge chain", err)
	base := audit(t, e)

	var atts []faultenv.Attachment
	var chains []*faultenv.Chain
	// cni backend, runtime netns.
	sid1 := id("l")
	ns1, err := e.NewNetns(strings.TrimPrefix(sid1, faultenv.NetnsPrefix))
	must(t, "netns", err)
	atts, chains = append(atts, faultenv.Attachment{ContainerID: sid1, Netns: ns1, IfName: "eth0"}), append(chains, cniChain)
	// bridge backend, runtime netns.
	sid2 := id("l")
	e.Track(sid2, "eth0")
	ns2, err := e.NewNetns(strings.TrimPrefix(sid2, faultenv.NetnsPrefix))
	must(t, "netns", err)
	atts, chains = append(atts, faultenv.Attachment{ContainerID: sid2, Netns: ns2, IfName: "eth0"}), append(chains, brChain)
	// A prepared sandbox (owned netns) with a cni NIC.
	sid3 := id("l")
	r, err := e.Vmnicctl(ctx(t), nil, "prepare", sid3)
	must(t, "prepare", err)
	ns3 := strings.TrimSpace(r.Stdout)
	atts, chains = append(atts, faultenv.Attachment{ContainerID: sid3, Netns: ns3, IfName: "eth0", SandboxID: sid3}), append(chains, cniChain)
	for i, a := range atts {
		_, err := chains[i].Add(ctx(t), a)
		must(t, "ADD "+a.ContainerID, err)
	}
	// The other installation: a cni NIC (net1) in sid1's netns and a
	// bridge-backend TAP on the host.
	oatt := faultenv.Attachment{ContainerID: sid1, Netns: ns1, IfName: "net1"}
	_, err = otherChain.Add(ctx(t), oatt)
	must(t, "other ADD", err)
	sid4 := id("o")
	e.Track(sid4, "eth0")
	ns4, err := e.NewNetns(strings.TrimPrefix(sid4, faultenv.NetnsPrefix))
	must(t, "netns", err)
	obatt := faultenv.Attachment{ContainerID: sid4, Netns: ns4, IfName: "eth0"}
	_, err = otherBr.Add(ctx(t), obatt)
	must(t, "other bridge ADD", err)
	otherTaps := func() {
		t.Helper()
		if !tapIn(t, ns1, "tapnet1") {
			t.Error("the other installation's TAP tapnet1 is gone")
		}
		if !faultenv.HostHasLink(hostnet.TapNameOnHost(sid4, "eth0")) {
			t.Error("the other installation's bridge TAP is gone")
		}
	}

	must(t, "lose the state dir", os.RemoveAll(e.StateDir))
	gc := func() {
		t.Helper()
		r, err := e.Vmnicctl(ctx(t), nil, "gc")
		must(t, "vmnicctl gc", err)
		t.Logf("gc:\n%s", r.Stdout)
	}
	switch repair {
	case "del-then-gc":
		for i, a := range atts {
			must(t, "DEL "+a.ContainerID, chains[i].Del(ctx(t), a))
		}
		if tapIn(t, ns1, "tapeth0") || tapIn(t, ns3, "tapeth0") || faultenv.HostHasLink(hostnet.TapNameOnHost(sid2, "eth0")) {
			t.Error("DEL without a record left a TAP")
		}
		gc()
	case "gc-then-del":
		gc()
		if tapIn(t, ns1, "tapeth0") || faultenv.HostHasLink(hostnet.TapNameOnHost(sid2, "eth0")) {
			t.Error("gc left a TAP no record names")
		}
		if _, err := netsetup.IdentifyNetns(ns3); err == nil {
			t.Error("gc left the owned netns of a sandbox with no record")
		}
		// The runtime's DELs still run (the prepared sandbox's netns is
		// gone with gc's teardown): they release the IPAM leases.
		for i, a := range atts {
			must(t, "DEL "+a.ContainerID, chains[i].Del(ctx(t), a))
		}
	}
	otherTaps()
	// The other installation cleans its own up.
	must(t, "other DEL", otherChain.Del(ctx(t), oatt))
	must(t, "other bridge DEL", otherBr.Del(ctx(t), obatt))
	os.RemoveAll(otherState)
	for _, ns := range []string{ns1, ns2, ns4} {
		must(t, "remove netns", e.RemoveNetns(ns))
	}
	// A prepared sandbox's netns is torn down by gc (no record names it);
	// it may still be there in the DEL-first order: gc ran after DEL.
	e.RemoveNetns(ns3)
	same(t, "state dir lost, "+repair, base, audit(t, e))
}

// TestCorruptRecordNRI damages the record of a VM pod the NRI hook
// prepared (the runtime's netns, a NIC added by the chain) in every
// unreadable way, then runs the hook's RunPodSandbox (again),
// StopPodSandbox, RemovePodSandbox or Synchronize (after a restart, the
// pod gone): each goes on, and the host ends as the pod's clean removal
// leaves it.
func TestCorruptRecordNRI(t *testing.T) {
	n := 0
	for _, kind := range damageKinds() {
		for _, ev := range []string{"run", "stop", "remove", "sync"} {
			n++
			t.Run(kind+"/"+ev, func(t *testing.T) { corruptNRI(t, kind, ev) })
		}
	}
	t.Logf("%d NRI cases", n)
}

func corruptNRI(t *testing.T, kind, ev string) {
	e := newEnv(t)
	rt := startNRI(t, e)
	sid := id("q")
	nsPath, err := e.NewNetns(strings.TrimPrefix(sid, faultenv.NetnsPrefix))
	must(t, "netns", err)
	chain, err := e.BridgeChain("vmnr-net", nil)
	must(t, "chain", err)
	att := faultenv.Attachment{ContainerID: sid, Netns: nsPath, IfName: "eth0", SandboxID: sid}
	pod := vmPodSandbox(sid, nsPath)
	before := audit(t, e)

	rt.startPlugin()
	rt.setPods(pod)
	run := func() error {
		return nriCall(func(c context.Context) error { return rt.r.RunPodSandbox(c, &api.RunPodSandboxRequest{Pod: pod}) })
	}
	stop := func() error {
		return nriCall(func(c context.Context) error { return rt.r.StopPodSandbox(c, &api.StopPodSandboxRequest{Pod: pod}) })
	}
	remove := func() error {
		return nriCall(func(c context.Context) error { return rt.r.RemovePodSandbox(c, &api.RemovePodSandboxRequest{Pod: pod}) })
	}
	must(t, "RunPodSandbox", run())
	_, err = chain.Add(ctx(t), att)
	must(t, "ADD", err)
	damage[kind](t, recordPath(e, sid), sid)

	switch ev {
	case "run":
		must(t, "RunPodSandbox of the damaged sandbox", run())
		rec := record(t, e, sid)
		if nicCount(rec) != 1 || rec.Origin != "nri" {
			t.Errorf("record after RunPodSandbox: %d NICs, origin %q; want eth0 rebuilt, origin nri", nicCount(rec), rec.Origin)
		}
		must(t, "StopPodSandbox", stop())
		must(t, "DEL", chain.Del(ctx(t), att))
		must(t, "RemovePodSandbox", remove())
	case "stop":
		must(t, "StopPodSandbox of the damaged sandbox", stop())
		if tapIn(t, nsPath, "tapeth0") {
			t.Error("StopPodSandbox left the TAP")
		}
		must(t, "DEL", chain.Del(ctx(t), att))
		must(t, "RemovePodSandbox", remove())
	case "remove":
		must(t, "DEL", chain.Del(ctx(t), att))
		must(t, "RemovePodSandbox of the damaged sandbox", remove())
	case "sync":
		// The plugin restarts after the pod went: Synchronize tears the
		// rebuilt sandbox down.
		rt.stopPlugin()
		rt.setPods()
		must(t, "DEL", chain.Del(ctx(t), att))
		rt.startPlugin()
	}
	same(t, kind+" record, NRI "+ev+" (plugin running)", before, audit(t, e), allKindsBut("proc", "file", "dir")...)
	rt.stopPlugin()
	quarantined(t, e, 1)
	same(t, kind+" record, NRI "+ev, before, audit(t, e))
}

// TestDelWithoutNetnsUsesPrevResult: the state dir is lost and the DEL
// comes without CNI_NETNS; the TAP's entry in prevResult (the ADD's result)
// says where it is, and the DEL removes it.
func TestDelWithoutNetnsUsesPrevResult(t *testing.T) {
	e := newEnv(t)
	d := newDirect(t, e)
	before := audit(t, e)
	add := d.call(t, "ADD", "eth0", nil)
	must(t, "ADD", errOf(add))
	if !tapIn(t, d.ns, "tapeth0") {
		t.Fatal("ADD made no TAP")
	}
	must(t, "lose the state dir", os.RemoveAll(e.StateDir))
	conf := e.VmnicConf(nil)
	conf["cniVersion"], conf["name"], conf["type"] = "1.1.0", "vmnr-net", "vmnic"
	var prev map[string]any
	must(t, "ADD result", json.Unmarshal(add.Stdout, &prev))
	conf["prevResult"] = prev
	stdin, _ := json.Marshal(conf)
	r, err := faultenv.RunPlugin(ctx(t), e.Bins.Plugin, faultenv.PluginCall{Command: "DEL", ContainerID: d.sid, IfName: "eth0", Path: e.RefCNI, Stdin: stdin})
	must(t, "run DEL", err)
	must(t, "DEL without CNI_NETNS", errOf(r))
	if tapIn(t, d.ns, "tapeth0") {
		t.Fatal("DEL without CNI_NETNS left the TAP prevResult names")
	}
	same(t, "state dir lost, DEL with prevResult only", before, audit(t, e))
}
