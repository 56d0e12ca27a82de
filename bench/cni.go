package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/bench/internal/fixture"
	"github.com/vmnic/vmnic/bench/internal/timedexec"
	"github.com/vmnic/vmnic/internal/steptime"
)

// cniVersion is the conf version of every network (containerd's default).
const cniVersion = "1.0.0"

type pluginConf = map[string]any

// bridgePlugin is the reference bridge plugin with host-local IPAM. No IP
// masquerade and no gateway: neither iptables execs nor host sysctl changes
// are part of what is measured (they would only make every ratio smaller).
func bridgePlugin(br, subnet, dataDir string) pluginConf {
	return pluginConf{
		"type":      "bridge",
		"bridge":    br,
		"isGateway": false,
		"ipMasq":    false,
		"ipam": pluginConf{
			"type":    "host-local",
			"ranges":  [][]pluginConf{{{"subnet": subnet}}},
			"dataDir": dataDir,
		},
	}
}

// tuningNoop is the reference tuning plugin asked to change nothing: the
// floor of any chained exec plugin.
func tuningNoop(dataDir string) pluginConf {
	return pluginConf{"type": "tuning", "dataDir": dataDir}
}

// tapPlugin is the reference tap plugin with host-local IPAM. owner and
// group are set so it takes its netlink path (without them it execs `ip`).
func tapPlugin(subnet, dataDir string) pluginConf {
	return pluginConf{
		"type":  "tap",
		"owner": 0,
		"group": 0,
		"ipam": pluginConf{
			"type":    "host-local",
			"ranges":  [][]pluginConf{{{"subnet": subnet}}},
			"dataDir": dataDir,
		},
	}
}

// vmnicPlugin is our chained plugin with a private state directory.
func vmnicPlugin(stateDir string) pluginConf {
	return pluginConf{"type": "vmnic", "stateDir": stateDir}
}

func (e *env) confList(name string, plugins ...pluginConf) (*libcni.NetworkConfigList, error) {
	data, err := json.Marshal(map[string]any{"cniVersion": cniVersion, "name": name, "plugins": plugins})
	if err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("conflist %s: %w", name, err)
	}
	return list, nil
}

func (e *env) dir(parts ...string) string {
	return filepath.Join(append([]string{e.tmp}, parts...)...)
}

// stateDir is a path in the private dir for vmnic's state (under /var/lib,
// as the product's default /var/lib/vmnic).
func (e *env) stateDir(parts ...string) string {
	return filepath.Join(append([]string{e.state}, parts...)...)
}

// shmDir is like dir, on tmpfs (/dev/shm); "" when there is none.
func (e *env) shmDir(parts ...string) string {
	if e.shm == "" {
		return ""
	}
	return filepath.Join(append([]string{e.shm}, parts...)...)
}

// op is one ADD (of every ifname) then DEL (in reverse) in one sandbox.
type op struct {
	Add, Del time.Duration
	Log      *timedexec.Log
	AddErr   error
	DelErr   error
}

func (o op) err() error { return errors.Join(o.AddErr, o.DelErr) }

func ifnames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("eth%d", i)
	}
	return out
}

func (e *env) runtimeConf(id, netns, ifname string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: netns, IfName: ifname}
}

// add runs ADD of list for each ifname in the sandbox, timing the whole.
func (e *env) add(ctx context.Context, list *libcni.NetworkConfigList, id, netns string, ifs []string, log *timedexec.Log) (time.Duration, error) {
	cctx := timedexec.WithLog(ctx, log)
	t0 := time.Now()
	for _, ifn := range ifs {
		if _, err := e.cni.AddNetworkList(cctx, list, e.runtimeConf(id, netns, ifn)); err != nil {
			return time.Since(t0), fmt.Errorf("ADD %s %s/%s: %w", list.Name, id, ifn, err)
		}
	}
	return time.Since(t0), nil
}

// del runs DEL of list for each ifname, in reverse order, timing the whole.
// It goes on after an error (a DEL cleans up what it can).
func (e *env) del(ctx context.Context, list *libcni.NetworkConfigList, id, netns string, ifs []string, log *timedexec.Log) (time.Duration, error) {
	cctx := timedexec.WithLog(ctx, log)
	var errs []error
	t0 := time.Now()
	for i := len(ifs) - 1; i >= 0; i-- {
		if err := e.cni.DelNetworkList(cctx, list, e.runtimeConf(id, netns, ifs[i])); err != nil {
			errs = append(errs, fmt.Errorf("DEL %s %s/%s: %w", list.Name, id, ifs[i], err))
		}
	}
	return time.Since(t0), errors.Join(errs...)
}

// cycle makes a fresh netns (not timed), runs ADD then DEL in it, and
// removes the netns (not timed).
func (e *env) cycle(ctx context.Context, list *libcni.NetworkConfigList, tag, id string, nics int) (op, error) {
	ns, err := fixture.NewNetns(tag)
	if err != nil {
		return op{}, err
	}
	defer ns.Delete()
	o := op{Log: &timedexec.Log{}}
	ifs := ifnames(nics)
	o.Add, o.AddErr = e.add(ctx, list, id, ns.Path, ifs, o.Log)
	o.Del, o.DelErr = e.del(ctx, list, id, ns.Path, ifs, o.Log)
	return o, nil
}

// stepIndex finds the step record a plugin exec wrote.
type stepIndex map[int][]steptime.Record

func (e *env) loadSteps() stepIndex {
	recs, err := steptime.ReadFile(e.stepFile)
	if err != nil {
		// No file: the plugin does not record steps (yet).
		return stepIndex{}
	}
	ix := stepIndex{}
	for _, r := range recs {
		ix[r.PID] = append(ix[r.PID], r)
	}
	return ix
}

// find returns the record of the process c ran: same pid, started and
// ended within the exec.
func (ix stepIndex) find(c timedexec.Call) (steptime.Record, bool) {
	for _, r := range ix[c.PID] {
		if r.StartUnix >= c.Start.UnixNano() && r.EndUnix <= c.End.UnixNano() {
			return r, true
		}
	}
	return steptime.Record{}, false
}

// sortedKeys returns the keys of m, sorted.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func deleteBridge(name string) error { return fixture.DeleteBridge(name) }
