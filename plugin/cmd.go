package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/internal/steptime"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// Args are the CNI_ARGS keys vmnic reads (IgnoreUnknown=1 lets a runtime
// pass others).
type Args struct {
	types.CommonArgs
	VMNIC_SANDBOX_ID  types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAME      types.UnmarshallableString //nolint:revive
	K8S_POD_NAMESPACE types.UnmarshallableString //nolint:revive
	K8S_POD_UID       types.UnmarshallableString //nolint:revive
}

func loadArgs(s string) (*Args, error) {
	a := &Args{}
	if err := types.LoadArgs(s, a); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_ARGS", err.Error())
	}
	return a, nil
}

// env is what every command sets up: the conf, a logger and the engine.
type env struct {
	conf   *Resolved
	log    *slog.Logger
	closer func()
	m      *sandbox.Manager
}

// setup builds the env of a command; st (nil: none) times the engine's
// steps; onConf (nil: none) is called with the conf as soon as it is
// parsed.
func setup(args *skel.CmdArgs, st *steptime.Recorder, onConf func(*Resolved)) (*env, error) {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return nil, err
	}
	if onConf != nil {
		onConf(conf)
	}
	log, c := conf.logger()
	e := &env{conf: conf, log: log, closer: func() { c.Close() }}
	store, err := netsetup.OpenWithOptions(conf.StateDir, netsetup.Options{Durable: conf.Fsync})
	if err != nil {
		e.closer()
		return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("stateDir %s", conf.StateDir), err.Error())
	}
	e.m = sandbox.New(sandbox.Config{
		Store:         store,
		Logger:        log,
		VMMOptions:    conf.vmmOptions(),
		VMMSocketDirs: sandbox.SocketDirs(conf.VMMSocketDirs...),
	}, sandbox.WithStepTimes(st))
	return e, nil
}

// vmmOptions are the adapter options of the conf's vmmTimeout and
// removeTimeout (unset: the adapter's defaults).
func (r *Resolved) vmmOptions() vmmadapter.Options {
	return vmmadapter.Options{CallTimeout: r.VMMTimeout.Duration, RemoveTimeout: r.RemoveTimeout.Duration}
}

// deadline bounds a whole command: lock waits, netlink and VMM calls.
func (e *env) context() (context.Context, context.CancelFunc) {
	o := e.conf.vmmOptions().WithDefaults()
	return context.WithTimeout(context.Background(), 4*o.CallTimeout+o.RemoveTimeout+30*time.Second)
}

// prevResult parses the conf's prevResult, which ADD and CHECK require;
// why completes the error when it is missing.
func (e *env) prevResult(why string) (*current.Result, error) {
	if err := parsePrevResult(e.conf.NetConf); err != nil {
		return nil, err
	}
	if e.conf.PrevResult == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "prevResult is missing or empty: "+why, "")
	}
	prev, err := current.NewResultFromResult(e.conf.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "convert prevResult", err.Error())
	}
	return prev, nil
}

// resolveInNetns reads CNI_ARGS, checks that CNI_NETNS is a network
// namespace and finds the sandbox (ADD and CHECK need the netns). It
// returns the netns identity too, for AddNIC.
func (e *env) resolveInNetns(args *skel.CmdArgs) (*Args, string, *netsetup.NetnsID, error) {
	a, err := loadArgs(args.Args)
	if err != nil {
		return nil, "", nil, err
	}
	nsid, err := netsetup.IdentifyNetns(args.Netns)
	if err != nil {
		return nil, "", nil, types.NewError(types.ErrInvalidNetNS, "CNI_NETNS", err.Error())
	}
	id, err := e.m.ResolveIdentified(string(a.VMNIC_SANDBOX_ID), args.Netns, &nsid, args.ContainerID)
	if err != nil {
		return nil, "", nil, cniError(err)
	}
	return a, id, &nsid, nil
}

// cniError turns an engine error into the CNI error the runtime sees.
func cniError(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	var se *sandbox.Error
	if errors.As(err, &se) {
		return types.NewError(se.Code, se.Error(), "")
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}

// timed is the prologue of ADD and DEL: it times the command (steptime,
// step "setup" for the plugin's setup), builds its env (onConf: setup's)
// and closes it when body returns.
func timed(args *skel.CmdArgs, cmd string, onConf func(*Resolved), body func(*skel.CmdArgs, *env, *steptime.Recorder) error) (err error) {
	st := steptime.FromEnv(cmd)
	defer func() { st.Finish(err) }()
	e, err := setup(args, st, onConf)
	if err != nil {
		return err
	}
	defer e.closer()
	st.Step("setup")
	return body(args, e, st)
}

func cmdAdd(args *skel.CmdArgs) error {
	// Once the conf is parsed, an OS thread enters CNI_NETNS, looks up
	// CNI_IFNAME and loads the TAP -> veth BPF program while the store and
	// the sandbox's record are read (2 cores: the two overlap); AddNIC
	// changes the netns only once it holds the lock.
	var pre *sandbox.PreparedNetns
	defer func() { pre.Close() }()
	prepare := func(c *Resolved) {
		pre = sandbox.PrepareNetns(args.Netns, args.IfName, sandbox.NetnsPrepOptions{Backend: c.Backend, DataPath: c.DataPath})
	}
	return timed(args, "ADD", prepare, func(args *skel.CmdArgs, e *env, st *steptime.Recorder) error {
		return add(args, e, st, pre)
	})
}

// add is ADD after the prologue; pre is CNI_NETNS entered ahead.
func add(args *skel.CmdArgs, e *env, st *steptime.Recorder, pre *sandbox.PreparedNetns) error {
	prev, err := e.prevResult("vmnic must be chained after a plugin that makes the interface (bridge, ptp, …)")
	if err != nil {
		return err
	}
	pick, err := pickInterface(prev, args.IfName, args.Netns)
	if err != nil {
		return err
	}
	a, id, nsid, err := e.resolveInNetns(args)
	if err != nil {
		return err
	}
	ctx, cancel := e.context()
	defer cancel()
	st.Label(id, args.IfName)
	st.Step("resolve")
	added, err := e.m.AddNIC(ctx, sandbox.NICSpec{
		SandboxID:    id,
		ContainerID:  args.ContainerID,
		Network:      e.conf.Name,
		IfName:       args.IfName,
		NetnsPath:    args.Netns,
		NetnsID:      nsid,
		Backend:      e.conf.Backend,
		Bridge:       e.conf.Bridge,
		DataPath:     e.conf.DataPath,
		QueuePairs:   e.conf.Queues,
		QueueSize:    e.conf.QueueSize,
		TapHandoff:   e.conf.Handoff,
		TapOwner:     e.conf.TapOwner,
		TapGroup:     e.conf.TapGroup,
		MAC:          pick.mac,
		IPs:          pick.ips,
		Gateway:      pick.gateway,
		Gateways:     pick.gateways,
		Routes:       pick.routes,
		DNS:          pick.dns(e.conf.DNS),
		PodName:      string(a.K8S_POD_NAME),
		PodNamespace: string(a.K8S_POD_NAMESPACE),
		PodUID:       string(a.K8S_POD_UID),
		Prepared:     pre,
	})
	if err != nil {
		e.log.Error("ADD failed", "sandbox", id, "ifname", args.IfName, "error", err)
		return cniError(err)
	}
	res := buildResult(prev, added, e.conf.CNIVersion)
	err = types.PrintResult(res, e.conf.CNIVersion)
	st.Step("result")
	return err
}

func cmdDel(args *skel.CmdArgs) error {
	return timed(args, "DEL", nil, del)
}

// del is DEL after the prologue.
func del(args *skel.CmdArgs, e *env, st *steptime.Recorder) error {
	// prevResult is optional at DEL and not needed: the record tells the
	// TAP. Without CNI_NETNS it tells where the TAP was (the sandbox of its
	// interface entry), for a DEL whose record is lost.
	a, err := loadArgs(args.Args)
	if err != nil {
		return err
	}
	netnsPath := args.Netns
	if netnsPath == "" {
		netnsPath = e.prevTapSandbox(args.IfName)
	}
	id, err := e.m.Resolve(string(a.VMNIC_SANDBOX_ID), args.Netns, args.ContainerID)
	if err != nil {
		return cniError(err)
	}
	if a.VMNIC_SANDBOX_ID == "" {
		// A sandbox with no record (a lost state dir) is found by the
		// marker of its TAP in CNI_NETNS.
		if _, gerr := e.m.Store.Get(id); errors.Is(gerr, netsetup.ErrNotFound) {
			if sid := e.m.SandboxOfMarkers(netnsPath, args.IfName); sid != "" {
				id = sid
			}
		}
	}
	ctx, cancel := e.context()
	defer cancel()
	st.Label(id, args.IfName)
	st.Step("resolve")
	d := sandbox.DelSpec{
		SandboxID: id, ContainerID: args.ContainerID, IfName: args.IfName,
		NetnsPath: netnsPath, Backend: e.conf.Backend, Bridge: e.conf.Bridge,
	}
	if err := e.m.DelNIC(ctx, d); err != nil {
		e.log.Error("DEL failed", "sandbox", id, "ifname", args.IfName, "error", err)
		return cniError(err)
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	e, err := setup(args, nil, nil)
	if err != nil {
		return err
	}
	defer e.closer()
	prev, err := e.prevResult("CHECK needs the result of ADD")
	if err != nil {
		return err
	}
	_, id, _, err := e.resolveInNetns(args)
	if err != nil {
		return err
	}
	ctx, cancel := e.context()
	defer cancel()
	if err := e.m.CheckNIC(ctx, id, args.IfName); err != nil {
		return cniError(err)
	}
	rec, err := e.m.Store.Get(id)
	if err != nil {
		return cniError(err)
	}
	nic, _ := rec.NIC(args.IfName)
	found := false
	for _, itf := range prev.Interfaces {
		if itf != nil && itf.Name == nic.Tap {
			found = true
			break
		}
	}
	if !found {
		return types.NewError(types.ErrInternal, fmt.Sprintf("prevResult has no interface %s: the TAP vmnic made for %s", nic.Tap, args.IfName), "")
	}
	pick, err := pickInterface(prev, args.IfName, args.Netns)
	if err != nil {
		return err
	}
	return checkGuestIPs(nic, pick)
}

func cmdGC(args *skel.CmdArgs) error {
	e, err := setup(args, nil, nil)
	if err != nil {
		return err
	}
	defer e.closer()
	valid := make([]sandbox.Attachment, 0, len(e.conf.ValidAttachments)+len(e.conf.LegacyAttachments))
	for _, a := range append(append([]types.GCAttachment(nil), e.conf.ValidAttachments...), e.conf.LegacyAttachments...) {
		valid = append(valid, sandbox.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	ctx, cancel := e.context()
	defer cancel()
	if err := e.m.GC(ctx, e.conf.Name, valid); err != nil {
		e.log.Error("GC failed", "error", err)
		return cniError(err)
	}
	return nil
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, err := parseConf(args.StdinData)
	if err != nil {
		return err
	}
	unavailable := func(err error) error {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("vmnic cannot set up NICs: stateDir %s is not usable", conf.StateDir), err.Error())
	}
	st, err := netsetup.Open(conf.StateDir)
	if err != nil {
		return unavailable(err)
	}
	if err := st.CheckWritable(); err != nil {
		return unavailable(err)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil && conf.Backend == netsetup.BackendCNI {
		return types.NewError(types.ErrPluginNotAvailable, "vmnic cannot make TAPs: /dev/net/tun is missing", err.Error())
	}
	return nil
}

// picked is what ADD takes from prevResult for the NIC.
type picked struct {
	index   int
	mac     string
	ips     []string
	gateway string
	// gateways: the interface's gateway of each family, IPv4 first.
	gateways []string
	routes   []netsetup.Route
	prevDNS  types.DNS
}

func (p *picked) dns(conf types.DNS) *netsetup.DNS {
	d := p.prevDNS
	if d.IsEmpty() {
		d = conf
	}
	if d.IsEmpty() {
		return nil
	}
	return &netsetup.DNS{Nameservers: d.Nameservers, Domain: d.Domain, Search: d.Search, Options: d.Options}
}

// pickInterface finds CNI_IFNAME in prevResult (an interface of that name
// with a sandbox, preferring the one in CNI_NETNS) and its IP config.
func pickInterface(prev *current.Result, ifname, netnsPath string) (*picked, error) {
	idx := -1
	for i, itf := range prev.Interfaces {
		if itf == nil || itf.Name != ifname || itf.Sandbox == "" {
			continue
		}
		if idx < 0 || itf.Sandbox == netnsPath || filepath.Clean(itf.Sandbox) == filepath.Clean(netnsPath) {
			idx = i
		}
	}
	if idx < 0 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("prevResult has no interface %q in a sandbox: CNI_IFNAME must be the interface the previous plugin made", ifname), "")
	}
	p := &picked{index: idx, mac: prev.Interfaces[idx].Mac, prevDNS: prev.DNS}
	sandboxed := 0
	for _, itf := range prev.Interfaces {
		if itf != nil && itf.Sandbox != "" {
			sandboxed++
		}
	}
	var gw4, gw6 string
	for _, ipc := range prev.IPs {
		if ipc == nil {
			continue
		}
		if ipc.Interface != nil && *ipc.Interface != idx {
			continue
		}
		// An IP without an interface index (as Cilium returns) belongs to
		// the only interface in a sandbox, if there is just one.
		if ipc.Interface == nil && sandboxed != 1 {
			continue
		}
		p.ips = append(p.ips, ipc.Address.String())
		if ipc.Gateway != nil {
			if ipc.Gateway.To4() != nil && gw4 == "" {
				gw4 = ipc.Gateway.String()
			} else if ipc.Gateway.To4() == nil && gw6 == "" {
				gw6 = ipc.Gateway.String()
			}
		}
	}
	p.gateway = gw4
	if p.gateway == "" {
		p.gateway = gw6
	}
	for _, g := range []string{gw4, gw6} {
		if g != "" {
			p.gateways = append(p.gateways, g)
		}
	}
	for _, r := range prev.Routes {
		if r != nil {
			p.routes = append(p.routes, recordRoute(r))
		}
	}
	return p, nil
}

// recordRoute keeps a prevResult route with every CNI 1.1 field (mtu,
// advmss, priority, table, scope).
func recordRoute(r *types.Route) netsetup.Route {
	nr := netsetup.Route{Dst: r.Dst.String(), MTU: r.MTU, AdvMSS: r.AdvMSS, Priority: r.Priority}
	if r.GW != nil {
		nr.GW = r.GW.String()
	}
	if r.Table != nil {
		t := *r.Table
		nr.Table = &t
	}
	if r.Scope != nil {
		sc := *r.Scope
		nr.Scope = &sc
	}
	return nr
}

// buildResult passes prevResult through (IPs stay on the veth's entry) and
// adds the TAP; from spec 1.1.0 on, with its MTU.
func buildResult(prev *current.Result, added *sandbox.AddedNIC, cniVersion string) *current.Result {
	res := *prev
	res.CNIVersion = current.ImplementedSpecVersion
	res.Interfaces = append(append([]*current.Interface(nil), prev.Interfaces...), &current.Interface{
		Name:    added.NIC.Tap,
		Mac:     added.TapMAC,
		Sandbox: added.Sandbox,
	})
	if ok, _ := version.GreaterThanOrEqualTo(cniVersion, "1.1.0"); ok {
		res.Interfaces[len(res.Interfaces)-1].Mtu = added.NIC.MTU
	}
	return &res
}

// prevTapSandbox is the netns path prevResult gives for the TAP vmnic made
// for ifname ("" when prevResult is missing or does not name it). A
// prevResult that does not parse is ignored: DEL must not fail on it.
func (e *env) prevTapSandbox(ifname string) string {
	if parsePrevResult(e.conf.NetConf) != nil || e.conf.PrevResult == nil {
		return ""
	}
	prev, err := current.NewResultFromResult(e.conf.PrevResult)
	if err != nil {
		return ""
	}
	tap := hostnet.TapNameInNetns(ifname)
	for _, itf := range prev.Interfaces {
		if itf != nil && itf.Name == tap && itf.Sandbox != "" {
			return itf.Sandbox
		}
	}
	return ""
}
