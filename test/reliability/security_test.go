package reliability

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/nri/pkg/api"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/faultenv"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
)

// checkPrivate walks dir: every file 0600 (or stricter), every directory
// 0700, nothing writable by group or others, no symlinks.
func checkPrivate(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		perm := fi.Mode().Perm()
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			t.Errorf("%s is a symlink", p)
		case d.IsDir() && perm != 0o700:
			t.Errorf("directory %s has mode %04o, want 0700", p, perm)
		case !d.IsDir() && perm&0o177 != 0:
			t.Errorf("file %s has mode %04o, want 0600 or stricter", p, perm)
		}
		return nil
	})
	must(t, "walk "+dir, err)
}

// TestStateFilesPrivate: whatever the umask, the plugin and vmnicctl make
// state files 0600 in 0700 directories, and their log 0600; nothing they
// create is writable by anybody but root.
func TestStateFilesPrivate(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	w := newWorld(t, "cni")
	w.runtimeNetns(t)
	w.prepare(t)
	w.attachVMM(t)
	_, err := w.chain.Add(ctx(t), w.att)
	must(t, "ADD", err)
	d := newDirect(t, w.e) // a sandbox the plugin alone made (container index, netns index)
	if r := d.call(t, "ADD", "eth0", nil); r.Err != nil {
		t.Fatalf("ADD: %+v", r.Err)
	}
	checkPrivate(t, w.e.StateDir)
	fi, err := os.Stat(filepath.Join(w.e.Root, "vmnic.log"))
	must(t, "log", err)
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("the plugin's log has mode %04o", fi.Mode().Perm())
	}
	snap := audit(t, w.e)
	for _, l := range snap {
		if strings.Contains(l, "writable by others") {
			t.Error(l)
		}
	}
	must(t, "DEL", w.chain.Del(ctx(t), w.att))
	must(t, "DEL", errOf(d.call(t, "DEL", "eth0", nil)))
}

// TestStateSymlinksRefused: vmnic never reads or writes through a symlink
// in its state directory and refuses a state directory that is a symlink
// or writable by others: the plugin fails with an error naming the cause
// and the symlink's target is untouched.
func TestStateSymlinksRefused(t *testing.T) {
	target := func(t *testing.T, e *faultenv.Env) string {
		p := filepath.Join(e.Root, "victim")
		must(t, "victim", os.WriteFile(p, []byte("precious\n"), 0o644))
		return p
	}
	cases := []struct {
		name   string
		plant  func(t *testing.T, e *faultenv.Env, d *directWorld, victim string)
		saying string
	}{
		{"state dir is a symlink", func(t *testing.T, e *faultenv.Env, d *directWorld, victim string) {
			real := filepath.Join(e.Root, "real-state")
			must(t, "mkdir", os.Mkdir(real, 0o700))
			must(t, "rm", os.RemoveAll(e.StateDir))
			must(t, "symlink", os.Symlink(real, e.StateDir))
		}, "symlink"},
		{"sandboxes dir is a symlink", func(t *testing.T, e *faultenv.Env, d *directWorld, victim string) {
			must(t, "open", errOpen(e.StateDir))
			must(t, "rm", os.RemoveAll(filepath.Join(e.StateDir, "sandboxes")))
			must(t, "symlink", os.Symlink(filepath.Dir(victim), filepath.Join(e.StateDir, "sandboxes")))
		}, "symlink"},
		// A record that is a symlink is an unreadable record (issue 11): it
		// is moved to the quarantine, never followed, and the calls go on.
		{"record is a symlink", func(t *testing.T, e *faultenv.Env, d *directWorld, victim string) {
			must(t, "open", errOpen(e.StateDir))
			must(t, "symlink", os.Symlink(victim, filepath.Join(e.StateDir, "sandboxes", d.sid+".json")))
		}, ""},
		{"lock file is a symlink", func(t *testing.T, e *faultenv.Env, d *directWorld, victim string) {
			must(t, "open", errOpen(e.StateDir))
			lock := filepath.Join(e.StateDir, "sandboxes.lock")
			must(t, "rm", os.Remove(lock))
			must(t, "symlink", os.Symlink(victim, lock))
		}, "is a symlink: refusing to use it"},
		{"state dir writable by others", func(t *testing.T, e *faultenv.Env, d *directWorld, victim string) {
			must(t, "open", errOpen(e.StateDir))
			must(t, "chmod", os.Chmod(e.StateDir, 0o777))
		}, "writable by group or others"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			victim := target(t, e)
			d := newDirect(t, e)
			tc.plant(t, e, d, victim)
			for _, cmd := range []string{"ADD", "DEL"} {
				r := d.call(t, cmd, "eth0", nil)
				if tc.saying == "" {
					if r.Err != nil {
						t.Errorf("%s: %v", cmd, r.Err)
					}
					continue
				}
				if r.Err == nil || !strings.Contains(r.Err.Error(), tc.saying) {
					t.Errorf("%s: want an error saying %q, got %+v", cmd, tc.saying, r.Err)
				}
			}
			if tc.saying == "" {
				q, err := os.ReadDir(filepath.Join(e.StateDir, "quarantine"))
				if err != nil || len(q) != 2 { // the link and its .reason
					t.Errorf("quarantine: %v, %v", q, err)
				}
			}
			if tapIn(t, d.ns, "tapeth0") {
				t.Error("a TAP was made")
			}
			if data, err := os.ReadFile(victim); err != nil || string(data) != "precious\n" {
				t.Errorf("the symlink's target was changed: %q, %v", data, err)
			}
			if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("the symlink's target mode changed: %v", err)
			}
		})
	}
}

func errOpen(dir string) error { _, err := netsetup.Open(dir); return err }

// TestCNINetnsMustBeNetns: CNI_NETNS must name a network namespace (an
// nsfs file of type net). Any other path is refused with CNI error 4
// before anything is made; a FIFO or a device is not even opened (opening
// a FIFO would block the plugin for ever).
func TestCNINetnsMustBeNetns(t *testing.T) {
	e := newEnv(t)
	d := newDirect(t, e)
	file := filepath.Join(e.Root, "plain")
	must(t, "file", os.WriteFile(file, nil, 0o600))
	link := filepath.Join(e.Root, "link")
	must(t, "symlink", os.Symlink(file, link))
	fifo := filepath.Join(e.Root, "fifo")
	must(t, "fifo", syscall.Mkfifo(fifo, 0o600))
	before := audit(t, e)
	for _, ns := range []string{file, e.Root, "/dev/null", link, fifo, "/proc/self/ns/uts", "/proc/self/ns/mnt",
		"/proc/self/ns/pid", filepath.Join(e.Root, "missing"), "relative/netns", "/proc/1/ns/../ns/uts"} {
		stdin := faultenv.VmnicStdin("vmnr-net", "1.1.0", e.VmnicConf(nil), "eth0", "", ns, "10.207.9.5/24", "10.207.9.1")
		r, err := faultenv.RunPlugin(ctx(t), e.Bins.Plugin, faultenv.PluginCall{Command: "ADD", ContainerID: d.sid, Netns: ns, IfName: "eth0", Path: e.RefCNI, Stdin: stdin})
		must(t, "run", err)
		if r.Err == nil || r.Err.Code != types.ErrInvalidNetNS {
			t.Errorf("CNI_NETNS=%s: want CNI error %d (invalid netns), got %+v (%s)", ns, types.ErrInvalidNetNS, r.Err, r.Stdout)
		}
	}
	if data, _ := os.ReadFile(file); len(data) != 0 {
		t.Errorf("the plain file was written: %q", data)
	}
	same(t, "ADDs with a CNI_NETNS that is not a network namespace", before, audit(t, e))
}

// TestVMMSocketConfined: vmnic dials VMM API sockets only inside the
// allowed directories (here the env's runtime dir): an attach-vmm, or a
// record, naming any other socket, a path escaping with "..", a symlinked
// directory or a symlinked socket is refused, and the VMM behind it gets
// not a single request.
func TestVMMSocketConfined(t *testing.T) {
	w := newWorld(t, "cni")
	w.runtimeNetns(t)
	w.prepare(t)
	outDir := filepath.Join(w.e.Root, "outside")
	must(t, "mkdir", os.MkdirAll(outDir, 0o700))
	sim, err := vmmsim.StartCH(filepath.Join(outDir, "ch.sock"), vmmsim.CHConfig{})
	must(t, "simulator", err)
	t.Cleanup(func() { sim.Close() })
	inDir := filepath.Join(w.e.RuntimeDir, "x")
	must(t, "mkdir", os.MkdirAll(inDir, 0o700))
	must(t, "symlink dir", os.Symlink(outDir, filepath.Join(inDir, "escape")))
	must(t, "symlink socket", os.Symlink(sim.Socket(), filepath.Join(inDir, "ch.sock")))

	for _, sock := range []string{
		sim.Socket(),
		filepath.Join(w.e.RuntimeDir, "..", "outside", "ch.sock"),
		w.e.RuntimeDir + "/../outside/ch.sock",
		filepath.Join(inDir, "escape", "ch.sock"),
		filepath.Join(inDir, "ch.sock"),
		"outside/ch.sock",
		w.e.RuntimeDir + "//x/ch.sock",
	} {
		r, err := w.e.Vmnicctl(ctx(t), nil, "attach-vmm", w.sid, "--kind", "ch", "--socket", sock)
		if err == nil || !strings.Contains(r.Stderr, "outside the allowed directories") {
			t.Errorf("attach-vmm --socket %s: want a refusal naming the allowed directories, got %v: %s", sock, err, r.Stderr)
		}
	}
	if rec := record(t, w.e, w.sid); rec == nil || rec.VMM != nil {
		t.Errorf("a refused attach recorded a VMM: %+v", rec)
	}

	// A record that names an outside socket (written by a VM manager
	// that imports netsetup, or tampered with).
	_, err = w.chain.Add(ctx(t), w.att)
	must(t, "ADD without a VMM", err)
	st, err := netsetup.Open(w.e.StateDir)
	must(t, "store", err)
	_, err = st.Update(ctx(t), w.sid, func(r *netsetup.NetSetup) error {
		r.VMM = &netsetup.VMM{Kind: "cloud-hypervisor", APISocket: sim.Socket(), Booted: true}
		for i := range r.NetworkConfigs {
			r.NetworkConfigs[i].State, r.NetworkConfigs[i].VMMDeviceID = netsetup.NICAttached, "eth0"
		}
		return nil
	})
	must(t, "tamper", err)
	must(t, "DEL with the outside socket recorded", w.chain.Del(ctx(t), w.att))
	if _, err := w.chain.Add(ctx(t), w.att); err == nil || !strings.Contains(err.Error(), "outside the allowed directories") {
		t.Errorf("ADD with the outside socket recorded: want a refusal, got %v", err)
	}
	// The conf key must name absolute directories.
	d := newDirect(t, w.e)
	if r := d.call(t, "ADD", "eth0", map[string]any{"vmmSocketDirs": []string{"run/vmnic"}}); r.Err == nil || r.Err.Code != types.ErrInvalidNetworkConfig {
		t.Errorf("a relative vmmSocketDirs entry: want CNI error 7, got %+v", r.Err)
	}
	if calls := sim.Calls(); len(calls) > 0 {
		t.Errorf("the VMM behind a refused socket got %d requests: %+v", len(calls), calls)
	}
	w.chain.Del(ctx(t), w.att)
}

// TestTapOwnership: the TAP gets the owner and group the conf names, and
// none (-1) when the conf names none; bad owner values are refused. The
// bridge backend puts the TAP on the host, where sysfs shows its owner and
// group (-1: none).
func TestTapOwnership(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		conf         map[string]any
		owner, group string
	}{
		{nil, "-1", "-1"},
		{map[string]any{"tapOwner": 4242}, "4242", "-1"},
		{map[string]any{"tapGroup": "nogroup"}, "-1", "65534"},
		{map[string]any{"tapOwner": "nobody", "tapGroup": 4343}, "65534", "4343"},
	} {
		d := newDirect(t, e)
		conf := map[string]any{"backend": "bridge", "bridge": e.Bridge}
		for k, v := range tc.conf {
			conf[k] = v
		}
		e.Track(d.sid, "eth0")
		if r := d.call(t, "ADD", "eth0", conf); r.Err != nil {
			t.Fatalf("ADD %v: %+v", tc.conf, r.Err)
		}
		tap := hostnet.TapNameOnHost(d.sid, "eth0")
		owner, _ := os.ReadFile("/sys/class/net/" + tap + "/owner")
		group, _ := os.ReadFile("/sys/class/net/" + tap + "/group")
		if strings.TrimSpace(string(owner)) != tc.owner || strings.TrimSpace(string(group)) != tc.group {
			t.Errorf("conf %v: TAP %s owner %q group %q, want %s %s", tc.conf, tap, owner, group, tc.owner, tc.group)
		}
		must(t, "DEL", errOf(d.call(t, "DEL", "eth0", conf)))
	}
	d := newDirect(t, e)
	before := audit(t, e)
	for _, bad := range []any{-1, "", "no-such-user-vmnr", 4294967296, 1.5, []int{1}, "../x", "a\x00b"} {
		r := d.call(t, "ADD", "eth0", map[string]any{"tapOwner": bad})
		if r.Err == nil {
			t.Errorf("tapOwner %#v accepted", bad)
		}
	}
	same(t, "ADDs with bad tapOwner", before, audit(t, e))
}

// hostile are inputs a buggy or hostile runtime might pass as names.
var hostile = []string{
	"../x", "../../etc/passwd", "/abs", "a/b", "a\nb", "a\rb", "a\tb", "", ".", "..", "-rf", "a b", "a;b", "$(id)", "`id`",
	"a,b=c", "a:b", "ünïcödé", "\u202etxt", "a\x7fb", strings.Repeat("x", 300), "%2e%2e%2f", "a*", "~root",
}

// TestHostileNames: sandbox ids (CNI_CONTAINERID, VMNIC_SANDBOX_ID),
// interface names (CNI_IFNAME and prevResult's), the network and bridge
// names: each hostile value is refused with a CNI error, and nothing is
// created anywhere (no TAP, no file in or outside the state dir).
func TestHostileNames(t *testing.T) {
	e := newEnv(t)
	d := newDirect(t, e)
	before := audit(t, e)
	rootBefore := listDir(t, e.Root)
	n := 0
	run := func(what, value string, c faultenv.PluginCall) {
		t.Helper()
		n++
		r, err := faultenv.RunPlugin(ctx(t), e.Bins.Plugin, c)
		if err != nil {
			if strings.Contains(err.Error(), "invalid argument") {
				return // exec refuses the value itself
			}
			t.Fatalf("%s=%q: %v", what, value, err)
		}
		if r.Crashed {
			t.Errorf("%s=%q: the plugin crashed: %s", what, value, r.Stderr)
		}
		// A DEL of a NIC that does not exist is a success (DEL is
		// idempotent); it must just do nothing, which the audit checks.
		if r.Err == nil && c.Command != "DEL" {
			t.Errorf("%s=%q: accepted (stdout %s)", what, value, r.Stdout)
		}
	}
	stdin := func(name, ifname, bridge string) []byte {
		conf := e.VmnicConf(nil)
		if bridge != "" {
			conf["backend"], conf["bridge"] = "bridge", bridge
		}
		return faultenv.VmnicStdin(name, "1.1.0", conf, ifname, "", d.ns, "10.207.9.5/24", "10.207.9.1")
	}
	base := faultenv.PluginCall{Command: "ADD", ContainerID: d.sid, Netns: d.ns, IfName: "eth0", Path: e.RefCNI, Stdin: stdin("vmnr-net", "eth0", "")}
	for _, h := range hostile {
		for _, cmd := range []string{"ADD", "DEL"} {
			c := base
			c.Command, c.ContainerID = cmd, h
			run(cmd+" CNI_CONTAINERID", h, c)
			c = base
			c.Command, c.IfName, c.Stdin = cmd, h, stdin("vmnr-net", h, "")
			// Names Linux allows (ünïcödé, a,b=c) are refused because no
			// such interface exists; the others by the name checks.
			run(cmd+" CNI_IFNAME", h, c)
			c = base
			c.Command, c.Args = cmd, "IgnoreUnknown=1;VMNIC_SANDBOX_ID="+h
			if h != "" {
				run(cmd+" VMNIC_SANDBOX_ID", h, c)
			}
		}
		c := base
		c.Stdin = stdin(h, "eth0", "")
		if h == strings.Repeat("x", 300) {
			// Valid by the CNI spec (no length limit; it names no file or
			// device for vmnic): added, then deleted.
			if r, err := faultenv.RunPlugin(ctx(t), e.Bins.Plugin, c); err != nil || r.Err != nil {
				t.Errorf("ADD with a 300-byte network name: %v %+v", err, r.Err)
			}
			c.Command = "DEL"
			if r, err := faultenv.RunPlugin(ctx(t), e.Bins.Plugin, c); err != nil || r.Err != nil {
				t.Errorf("DEL with a 300-byte network name: %v %+v", err, r.Err)
			}
			continue
		}
		run("network name", h, c)
		c = base
		c.Stdin = stdin("vmnr-net", "eth0", h)
		if h != "" {
			run("bridge", h, c)
		}
		c = base
		var conf map[string]any
		json.Unmarshal(stdin("vmnr-net", "eth0", ""), &conf)
		conf["prevResult"].(map[string]any)["interfaces"].([]any)[0].(map[string]any)["mac"] = h
		c.Stdin, _ = json.Marshal(conf)
		if h != "" {
			run("prevResult mac", h, c)
		}
	}
	for _, v := range []string{"a\x00b", "eth0\x00../x"} {
		c := base
		c.Stdin = stdin(v, "eth0", "")
		run("network name", v, c)
		c.Stdin = stdin("vmnr-net", v, "")
		run("prevResult ifname", v, c)
	}
	t.Logf("%d hostile plugin calls, none with an effect", n)
	same(t, "hostile names", before, audit(t, e))
	if after := listDir(t, e.Root); after != rootBefore {
		t.Errorf("files appeared next to the state dir:\nbefore %s\nafter  %s", rootBefore, after)
	}

	// vmnicctl and the NRI hook take sandbox ids too.
	for _, h := range hostile {
		for _, args := range [][]string{{"prepare", h}, {"teardown", h}, {"show", h}, {"attach-vmm", h, "--kind", "ch", "--socket", filepath.Join(e.RuntimeDir, "x.sock")}} {
			if _, err := e.Vmnicctl(ctx(t), nil, args...); err == nil && h != "" {
				t.Errorf("vmnicctl %q accepted", args)
			}
		}
	}
	for _, bad := range []string{"/etc/passwd", "/proc/self/ns/uts", e.Root} {
		if _, err := e.Vmnicctl(ctx(t), nil, "prepare", id("h"), "--netns", bad); err == nil {
			t.Errorf("vmnicctl prepare --netns %s accepted", bad)
		}
	}
	rt := startNRI(t, e)
	before = audit(t, e)
	rt.startPlugin()
	for _, h := range hostile {
		if strings.ContainsRune(h, '\n') || h == "" {
			continue
		}
		_ = nriCall(func(c context.Context) error {
			return rt.r.RunPodSandbox(c, &api.RunPodSandboxRequest{Pod: vmPodSandbox(h, "")})
		})
	}
	rt.stopPlugin()
	after := audit(t, e)
	if d := before.Filter("netns", "mount", "record", "lock", "file", "dir").Diff(after.Filter("netns", "mount", "record", "lock", "file", "dir")); strings.Contains(d, "+ ") {
		t.Errorf("hostile ids through vmnicctl and the NRI hook left:\n%s", d)
	}
}

func listDir(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must(t, "list", err)
	var names []string
	for _, e := range ents {
		if e.Name() == "vmnic.log" || e.Name() == "vmnic-nri.log" {
			continue
		}
		names = append(names, e.Name())
	}
	return fmt.Sprint(names)
}
