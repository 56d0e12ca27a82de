package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// Binaries built once per test binary from the current source, so tests
// never run a stale plugin.
var built struct {
	once sync.Once
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// buildBinaries builds vmnic and vmnicctl into a temp dir (once).
func buildBinaries(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "vmnict-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.dir = dir
		root := netfixture.RepoRoot(t)
		for _, b := range []struct{ out, pkg string }{{"vmnic", "./plugin"}, {"vmnicctl", "./cmd/vmnicctl"}} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.out), b.pkg)
			cmd.Dir = root
			if out, err := cmd.CombinedOutput(); err != nil {
				built.err = fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.dir
}

// cniPath is a CNI_PATH directory with the freshly built vmnic and links
// to the reference plugins.
var cniDir struct {
	once sync.Once
	dir  string
}

func cniPath(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t)
	bin := buildBinaries(t)
	ref := testenv.CNIBinDir(t, "bridge", "ptp", "host-local", "portmap", "loopback")
	cniDir.once.Do(func() {
		dir := filepath.Join(bin, "cni")
		os.MkdirAll(dir, 0o755)
		for _, p := range []string{"bridge", "ptp", "host-local", "portmap", "loopback", "tuning"} {
			os.Symlink(filepath.Join(ref, p), filepath.Join(dir, p))
		}
		os.Symlink(filepath.Join(bin, "vmnic"), filepath.Join(dir, "vmnic"))
		cniDir.dir = dir
	})
	return cniDir.dir
}

var subnetSeq atomic.Int32

// subnet returns a fresh /24 of 10.201.0.0/16 (second=true: 10.211.0.0/16).
func subnet(second bool) (cidr, prefix string) {
	n := (int(subnetSeq.Add(1)) + os.Getpid()) % 250
	b := 201
	if second {
		b = 211
	}
	return fmt.Sprintf("10.%d.%d.0/24", b, n), fmt.Sprintf("10.%d.%d.", b, n)
}

// tnet is one test network: a conflist and its pieces.
type tnet struct {
	name    string
	version string
	first   string // "bridge" or "ptp"
	bridge  string // host bridge of the bridge plugin
	subnet  string
	prefix  string // "10.201.N."
	state   string
	log     string
	vmnic   map[string]any // extra vmnic keys
	portmap bool
	raw     []byte
	list    *libcni.NetworkConfigList
}

type netOpt func(*tnet)

func withVmnic(k string, v any) netOpt { return func(n *tnet) { n.vmnic[k] = v } }
func withPortmap() netOpt              { return func(n *tnet) { n.portmap = true } }
func second() netOpt                   { return func(n *tnet) { n.subnet, n.prefix = subnet(true) } }
func withState(dir string) netOpt      { return func(n *tnet) { n.state = dir } }

// newNet builds a conflist: <first> + host-local, then vmnic (then portmap).
// For the bridge plugin it pre-creates the host bridge (cleaned up at the
// end), so snapshots of it stay comparable.
func newNet(t *testing.T, version, first string, opts ...netOpt) *tnet {
	t.Helper()
	testenv.RequireRoot(t)
	n := &tnet{name: netfixture.Name("vmnict-n"), version: version, first: first, state: t.TempDir(), vmnic: map[string]any{}}
	n.subnet, n.prefix = subnet(false)
	n.log = filepath.Join(t.TempDir(), "vmnic.log")
	for _, o := range opts {
		o(n)
	}
	n.store(t) // the state dir as it is after first use: snapshots compare from here
	ipam := map[string]any{"type": "host-local", "ranges": [][]map[string]string{{{"subnet": n.subnet}}}, "dataDir": t.TempDir(),
		"routes": []map[string]string{{"dst": "0.0.0.0/0"}}}
	var p0 map[string]any
	switch first {
	case "bridge":
		n.bridge = netfixture.Name("vmnbrt")
		netfixture.Bridge(t, n.bridge)
		p0 = map[string]any{"type": "bridge", "bridge": n.bridge, "isGateway": true, "ipMasq": false, "ipam": ipam}
	case "ptp":
		p0 = map[string]any{"type": "ptp", "ipMasq": false, "ipam": ipam}
	default:
		t.Fatalf("first plugin %q", first)
	}
	vm := map[string]any{"type": "vmnic", "stateDir": n.state, "logFile": n.log, "logLevel": "debug",
		"vmmSocketDirs": []string{os.TempDir()}} // the tests' VMM simulators keep their sockets in temp dirs
	for k, v := range n.vmnic {
		vm[k] = v
	}
	plugins := []map[string]any{p0, vm}
	if n.portmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": false})
	}
	raw, err := json.Marshal(map[string]any{"cniVersion": version, "name": n.name, "plugins": plugins})
	if err != nil {
		t.Fatal(err)
	}
	n.raw = raw
	if n.list, err = libcni.ConfListFromBytes(raw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(n.log); err == nil {
				t.Logf("vmnic log of %s:\n%s", n.name, b)
			}
		}
	})
	return n
}

// withoutVmnic is the list with only the first plugin (a prevResult maker).
func (n *tnet) withoutVmnic(t *testing.T) *libcni.NetworkConfigList {
	t.Helper()
	var m map[string]any
	json.Unmarshal(n.raw, &m)
	m["plugins"] = m["plugins"].([]any)[:1]
	b, _ := json.Marshal(m)
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// vmnicConf is vmnic's plugin conf as libcni would pass it (name and
// cniVersion injected), with prevResult when given.
func (n *tnet) vmnicConf(t *testing.T, prev types.Result) []byte {
	t.Helper()
	var m map[string]any
	json.Unmarshal(n.list.Plugins[1].Bytes, &m)
	m["name"], m["cniVersion"] = n.name, n.version
	if prev != nil {
		pr, err := prev.GetAsVersion(n.version)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(pr)
		var pm map[string]any
		json.Unmarshal(b, &pm)
		m["prevResult"] = pm
	}
	b, _ := json.Marshal(m)
	return b
}

func (n *tnet) store(t *testing.T) *netsetup.Store {
	t.Helper()
	st, err := netsetup.Open(n.state)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func cniConfig(t *testing.T) *libcni.CNIConfig {
	t.Helper()
	return libcni.NewCNIConfigWithCacheDir([]string{cniPath(t)}, t.TempDir(), nil)
}

func tctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// pluginRun is one direct invocation of the vmnic binary.
type pluginRun struct {
	command, containerID, netns, ifname, args string
	stdin                                     []byte
	env                                       []string // overrides
}

type pluginOut struct {
	stdout, stderr []byte
	err            error
	cniErr         *types.Error
}

func (r pluginRun) exec(t *testing.T) pluginOut {
	t.Helper()
	cmd := exec.Command(filepath.Join(cniPath(t), "vmnic"))
	env := []string{
		"CNI_COMMAND=" + r.command, "CNI_CONTAINERID=" + r.containerID, "CNI_NETNS=" + r.netns,
		"CNI_IFNAME=" + r.ifname, "CNI_PATH=" + cniPath(t), "CNI_ARGS=" + r.args, "PATH=" + os.Getenv("PATH"),
	}
	if dp := os.Getenv(hostnet.DataPathEnv); dp != "" {
		env = append(env, hostnet.DataPathEnv+"="+dp) // a suite run with either data path
	}
	cmd.Env = append(env, r.env...)
	cmd.Stdin = bytes.NewReader(r.stdin)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	o := pluginOut{stdout: so.Bytes(), stderr: se.Bytes(), err: err}
	if err != nil {
		var te types.Error
		if jerr := json.Unmarshal(o.stdout, &te); jerr == nil && (te.Code != 0 || te.Msg != "") {
			o.cniErr = &te
		}
	}
	return o
}

// cnitool runs cnitool with the network's conflist in its own NETCONFPATH.
func cnitool(t *testing.T, n *tnet, ifname, cniArgs string, args ...string) (string, error) {
	t.Helper()
	tool := testenv.Tool(t, "cnitool")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, n.name+".conflist"), n.raw, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tool, args...)
	cmd.Env = append(os.Environ(), "NETCONFPATH="+dir, "CNI_PATH="+cniPath(t), "CNI_IFNAME="+ifname, "CNI_ARGS="+cniArgs)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	if err != nil {
		return so.String(), fmt.Errorf("cnitool %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, so.String(), se.String())
	}
	return so.String(), nil
}

// scope is what a vmnic call may touch for this network and netns.
func (n *tnet) scope(netns ...string) hostaudit.Scope {
	sc := hostaudit.Scope{Netns: netns, StateDirs: []string{n.state}, HostLinkPrefixes: []string{"vmt"}, IPTablesMarkers: []string{"vmnic", n.prefix}}
	if n.bridge != "" {
		sc.HostLinks = []string{n.bridge}
		sc.IPTablesMarkers = append(sc.IPTablesMarkers, n.bridge)
	}
	return sc
}
