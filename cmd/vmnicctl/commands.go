package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

var commands []command

func init() {
	commands = []command{
		{name: "prepare", args: "<sandbox-id>", npos: 1, run: cmdPrepare, flags: prepareFlags,
			help: "Create the sandbox's netns (<netns-dir>/vmnic-<id>, or adopt --netns) and its record at zero NICs; print the netns path. Idempotent."},
		{name: "show", args: "<sandbox-id>", npos: 1, run: cmdShow, flags: jsonFlag,
			help: "Show a sandbox's record (a table, or --json)."},
		{name: "list", args: "", npos: 0, run: cmdList, flags: jsonFlag,
			help: "List the sandboxes (a table, or --json), and the quarantined records (a line each, and a warning)."},
		{name: "teardown", args: "<sandbox-id>", npos: 1, run: cmdTeardown, flags: teardownFlags,
			help: "Remove a sandbox's NICs (VMM first), its owned netns and its record. Idempotent; finishes an invalid sandbox."},
		{name: "gc", args: "", npos: 0, run: cmdGC, flags: gcFlags,
			help: "Quarantine and rebuild unreadable records; remove this installation's marked TAPs (and their sandboxes) that no record names, owned vmnic-* netns without a record, and records whose netns is gone; prune index entries left without a record (and an older vmnic's lock files)."},
		{name: "attach-vmm", args: "<sandbox-id> --kind K --socket S", npos: 1, run: cmdAttachVMM, flags: attachFlags,
			help: "Record the sandbox's VMM (kind, API socket, booted) and bring in its NICs the VMM does not have (pending ones, and attached ones after a VMM restart)."},
		{name: "guest-acked", args: "<sandbox-id> <ifname>", npos: 2, run: cmdGuestAcked, flags: jsonFlag,
			help: "Record that the guest has released the NIC (for Firecracker: removed its PCI device), so the next DEL or teardown may remove it from the VMM."},
		{name: "vmm-args", args: "<sandbox-id> --kind K", npos: 1, run: cmdVMMArgs, flags: vmmArgsFlags,
			help: "Print the pre-boot NIC arguments for a VMM launcher: Cloud Hypervisor --net, Firecracker network-interfaces JSON, QEMU -netdev/-device."},
		{name: "exec-vmm", args: "<sandbox-id> --kind K -- <vmm command…>", npos: -1, run: cmdExecVMM, flags: execVMMFlags,
			help: "Open the TAP queue fds of the sandbox's NICs in its netns and exec the VMM command with them inherited (fd 3 on) and the fd handoff NIC arguments appended (as vmm-args --fds prints them)."},
		guestConfigCommand,
	}
}

type opts struct {
	json       bool
	netns      string
	podName    string
	podNS      string
	podUID     string
	runtimeDir string
	keepNetns  bool
	dryRun     bool
	kind       string
	socket     string
	fcVersion  string
	rootPorts  int
	fds        bool
}

var o opts

func jsonFlag(fs *flag.FlagSet) { fs.BoolVar(&o.json, "json", false, "print JSON") }

func prepareFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.netns, "netns", "", "adopt this netns instead of creating one")
	fs.StringVar(&o.podName, "pod-name", "", "pod name to record")
	fs.StringVar(&o.podNS, "pod-namespace", "", "pod namespace to record")
	fs.StringVar(&o.podUID, "pod-uid", "", "pod UID to record")
	fs.StringVar(&o.runtimeDir, "runtime-dir", "", "per-sandbox directory for the VMM API socket (recorded; when it exists, the record is copied to its netsetup/netsetup.json on every change)")
	jsonFlag(fs)
}

func teardownFlags(fs *flag.FlagSet) {
	fs.BoolVar(&o.keepNetns, "keep-netns", false, "remove the NICs only; keep the owned netns and the record (a pod stop)")
}

func gcFlags(fs *flag.FlagSet) {
	fs.BoolVar(&o.dryRun, "dry-run", false, "print what would be removed")
}

func attachFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.kind, "kind", "", "VMM kind: "+kindHelp)
	fs.StringVar(&o.socket, "socket", "", "the VMM's API socket (CH --api-socket, FC --api-sock, QEMU QMP)")
	jsonFlag(fs)
}

func vmmArgsFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.kind, "kind", "", "VMM kind: "+kindHelp)
	fs.StringVar(&o.fcVersion, "fc-version", "", "Firecracker version (mtu is written only from the 1.16.0 release)")
	fs.IntVar(&o.rootPorts, "root-ports", 0, "QEMU q35: also reserve N free PCIe root ports for hot-plugged NICs (pcie.0 takes none)")
	fs.BoolVar(&o.fds, "fds", false, "render the fd handoff form (CH --net fd=[…], QEMU -netdev tap,fds=…), with the fd numbers exec-vmm gives: from 3 on, one per queue pair, in NIC order")
	jsonFlag(fs)
}

func execVMMFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.kind, "kind", "", "VMM kind: "+kindHelp+" (not firecracker: it takes no fds)")
	fs.IntVar(&o.rootPorts, "root-ports", 0, "QEMU q35: also reserve N free PCIe root ports for hot-plugged NICs")
}

func cmdPrepare(ctx context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	m, err := c.manager()
	if err != nil {
		return err
	}
	rec, err := m.Prepare(ctx, pos[0], sandbox.PrepareOptions{
		NetnsPath: o.netns, PodName: o.podName, PodNamespace: o.podNS, PodUID: o.podUID, RuntimeDir: o.runtimeDir,
	})
	if err != nil {
		return err
	}
	return showNetns(c, rec)
}

func cmdShow(_ context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	m, err := c.manager()
	if err != nil {
		return err
	}
	// An unreadable record is quarantined and rebuilt from the host by
	// Get; show says so.
	rec, err := m.Store.Get(pos[0])
	if err != nil {
		if q := quarantinedOf(m, pos[0]); q != nil && errors.Is(err, netsetup.ErrNotFound) {
			fmt.Fprintf(c.stderr, "vmnicctl: warning: the record of sandbox %s was unreadable (%s) and is quarantined at %s; nothing of the sandbox is left on the host\n", pos[0], q.Reason, q.Path)
			return nil
		}
		return err
	}
	return showRecord(c, rec)
}

// quarantinedOf is the latest quarantined file of sandbox id (nil: none).
func quarantinedOf(m *sandbox.Manager, id string) *netsetup.Quarantined {
	qs, _ := m.Store.Quarantine()
	for i := len(qs) - 1; i >= 0; i-- {
		if qs[i].ID == id {
			return &qs[i]
		}
	}
	return nil
}

// warnQuarantine tells on stderr how many records are in the quarantine.
func warnQuarantine(c *cli, qs []netsetup.Quarantined) {
	if len(qs) > 0 {
		fmt.Fprintf(c.stderr, "vmnicctl: warning: %d unreadable record(s) in the quarantine (%s); the sandboxes were rebuilt from the host where it still had them\n", len(qs), qs[0].Path[:strings.LastIndexByte(qs[0].Path, '/')])
	}
}

func cmdList(_ context.Context, c *cli, _ *flag.FlagSet, _ []string) error {
	m, err := c.manager()
	if err != nil {
		return err
	}
	// List quarantines (and rebuilds) the records it cannot read; each
	// quarantined file is shown on a line of its own.
	recs, lerr := m.Store.List()
	if recs == nil {
		recs = []*netsetup.NetSetup{}
	}
	qs, qerr := m.Store.Quarantine()
	if qerr != nil {
		lerr = errors.Join(lerr, qerr)
	}
	warnQuarantine(c, qs)
	if o.json {
		// The JSON stays the array of records; the quarantined files are
		// on stderr, a line each.
		for _, q := range qs {
			fmt.Fprintf(c.stderr, "vmnicctl: quarantined: sandbox %s: %s: %s\n", q.ID, q.Path, dash(q.Reason))
		}
		if err := writeJSON(c, recs); err != nil {
			return err
		}
		return lerr
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SANDBOX\tPHASE\tBACKEND\tNICS\tVMM\tNETNS")
	for _, r := range recs {
		vmm := "-"
		if r.VMM != nil {
			vmm = r.VMM.Kind
			if r.VMM.Booted {
				vmm += " (booted)"
			}
		}
		netns := r.ResolvedNetnsPath()
		if r.NetnsOwned {
			netns += " (owned)"
		}
		phase := string(r.Phase)
		if r.Quarantined != "" {
			phase += " (rebuilt)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", r.SandboxID, phase, r.ResolvedNetBackend(), len(r.NetworkConfigs), vmm, dash(netns))
	}
	for _, q := range qs {
		fmt.Fprintf(tw, "%s\tquarantined\t-\t-\t-\t%s: %s\n", q.ID, q.Path, dash(q.Reason))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return lerr
}

// showRecord prints rec as JSON (--json) or as the human table.
func showRecord(c *cli, rec *netsetup.NetSetup) error {
	if o.json {
		return writeJSON(c, rec)
	}
	printRecord(c, rec)
	return nil
}

// showNetns prints rec as JSON (--json) or its netns path, a line.
func showNetns(c *cli, rec *netsetup.NetSetup) error {
	if o.json {
		return writeJSON(c, rec)
	}
	fmt.Fprintln(c.stdout, rec.ResolvedNetnsPath())
	return nil
}

func printRecord(c *cli, r *netsetup.NetSetup) {
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Sandbox:\t%s\n", r.SandboxID)
	fmt.Fprintf(tw, "Phase:\t%s\n", r.Phase)
	if r.Quarantined != "" {
		fmt.Fprintf(tw, "Rebuilt:\tfrom the host; the unreadable record is at %s\n", r.Quarantined)
	}
	if r.Error != "" {
		fmt.Fprintf(tw, "Error:\t%s\n", r.Error)
	}
	if r.PodName != "" || r.PodNamespace != "" || r.PodUID != "" {
		fmt.Fprintf(tw, "Pod:\t%s/%s %s\n", r.PodNamespace, r.PodName, r.PodUID)
	}
	fmt.Fprintf(tw, "Backend:\t%s\n", r.ResolvedNetBackend())
	if br := r.ResolvedNetBridgeDev(); br != "" {
		fmt.Fprintf(tw, "Bridge:\t%s\n", br)
	}
	owned := "adopted"
	if r.NetnsOwned {
		owned = "owned"
	}
	fmt.Fprintf(tw, "Netns:\t%s (%s)\n", dash(r.ResolvedNetnsPath()), owned)
	if r.RuntimeDir != "" {
		fmt.Fprintf(tw, "Runtime dir:\t%s\n", r.RuntimeDir)
	}
	if r.VMM != nil {
		state := "not booted"
		if r.VMM.Booted {
			state = "booted"
		}
		v := ""
		if r.VMM.Version != "" {
			v = " " + r.VMM.Version
		}
		fmt.Fprintf(tw, "VMM:\t%s%s at %s (%s)\n", r.VMM.Kind, v, r.VMM.APISocket, state)
	} else {
		fmt.Fprintf(tw, "VMM:\t-\n")
	}
	fmt.Fprintf(tw, "NICs:\t%d\n", len(r.NetworkConfigs))
	tw.Flush()
	if len(r.NetworkConfigs) == 0 {
		return
	}
	fmt.Fprintln(c.stdout)
	tw = tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IFNAME\tTAP\tMAC\tMTU\tQUEUES\tDATAPATH\tSTATE\tNETWORK\tIPS\tGATEWAY\tDEVICE")
	for _, n := range r.NetworkConfigs {
		dp := "-" // a bridge port: no veth to join
		if r.ResolvedNetBackend() == netsetup.BackendCNI {
			dp = n.DataPath
			if dp == "" {
				dp = "u32" // recorded before the data path was
			}
		}
		state := string(n.State)
		if !n.HostReady {
			state += " (host not ready)"
		}
		dev := n.VMMDeviceID
		if n.BDF != "" {
			dev += "@" + n.BDF
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", n.IfName, n.Tap, dash(n.MAC), n.MTU, n.NumQueues, dp, state,
			dash(n.Network), dash(strings.Join(n.IPs, ",")), dash(n.Gateway), dash(dev))
	}
	tw.Flush()
	for _, n := range r.NetworkConfigs {
		if n.Note != "" {
			fmt.Fprintf(c.stdout, "%s: %s\n", n.IfName, n.Note)
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeJSON(c *cli, v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cmdTeardown(ctx context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	m, err := c.manager()
	if err != nil {
		return err
	}
	return m.Teardown(ctx, pos[0], sandbox.TeardownOptions{KeepNetns: o.keepNetns})
}

func cmdGC(ctx context.Context, c *cli, _ *flag.FlagSet, _ []string) error {
	m, err := c.manager()
	if err != nil {
		return err
	}
	var errs []error
	// Unreadable records first: quarantined and rebuilt from the host, so
	// that nothing below takes a live sandbox for an orphan.
	if _, err := m.Store.List(); err != nil {
		errs = append(errs, err)
	}
	// TAPs of this installation that no record names (a lost state dir,
	// an ADD killed before its record): found by their markers in the
	// host netns and every netns of the netns dir.
	stray, err := m.SweepMarked(ctx, o.dryRun)
	if err != nil {
		errs = append(errs, err)
	}
	for _, k := range stray {
		fmt.Fprintf(c.stdout, "unrecorded %s\n", k)
	}
	orphans, err := m.OrphanNetns(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, p := range orphans {
		fmt.Fprintf(c.stdout, "orphan netns %s\n", p)
		if o.dryRun {
			continue
		}
		// Under the sandbox's lock, checked again: a sandbox being
		// prepared, or recorded meanwhile, keeps its netns.
		removed, err := m.RemoveOrphanNetns(ctx, p)
		if err != nil {
			errs = append(errs, err)
		} else if !removed {
			fmt.Fprintf(c.stdout, "orphan netns %s: a record names it now, kept\n", p)
		}
	}
	ids, err := m.Store.IDs()
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range ids {
		r, err := m.Store.Get(id)
		if errors.Is(err, netsetup.ErrNotFound) {
			continue
		}
		if err != nil {
			// Never acted on: an unreadable record is record recovery's.
			fmt.Fprintf(c.stdout, "sandbox %s: record unreadable, left to record recovery: %v\n", id, err)
			continue
		}
		if !sandbox.RecordedNetnsGone(r) {
			continue
		}
		fmt.Fprintf(c.stdout, "sandbox %s: netns %s is gone\n", r.SandboxID, r.ResolvedNetnsPath())
		if o.dryRun {
			continue
		}
		if err := m.Teardown(ctx, r.SandboxID, sandbox.TeardownOptions{IfNetnsGone: true}); err != nil {
			errs = append(errs, err)
		}
	}
	if !o.dryRun {
		// Lock files and index entries a killed vmnic left without a record.
		if err := m.PruneStale(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func cmdAttachVMM(ctx context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	kind, err := connect.ParseKind(o.kind)
	if err != nil {
		return fmt.Errorf("--kind: %w", err)
	}
	if o.socket == "" {
		return errors.New("--socket is required")
	}
	m, err := c.manager()
	if err != nil {
		return err
	}
	rec, aerr := m.AttachVMM(ctx, pos[0], kind, o.socket)
	if rec != nil {
		if o.json {
			if err := writeJSON(c, rec); err != nil {
				return err
			}
		} else {
			printRecord(c, rec)
		}
	}
	return aerr
}

func cmdGuestAcked(ctx context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	m, err := c.manager()
	if err != nil {
		return err
	}
	rec, err := m.AckGuestRelease(ctx, pos[0], pos[1])
	if err != nil {
		return err
	}
	return showRecord(c, rec)
}

// kindAndRecord is --kind and the record of sandbox id, for the commands
// that print a VMM's arguments.
func (c *cli) kindAndRecord(id string) (vmmadapter.Kind, *netsetup.NetSetup, error) {
	kind, err := connect.ParseKind(o.kind)
	if err != nil {
		return "", nil, fmt.Errorf("--kind: %w", err)
	}
	rec, err := c.loadRecord(id)
	if err != nil {
		return "", nil, err
	}
	return kind, rec, nil
}

func cmdVMMArgs(_ context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	kind, rec, err := c.kindAndRecord(pos[0])
	if err != nil {
		return err
	}
	var nics []vmmadapter.NIC
	for _, n := range rec.NetworkConfigs {
		if n.HostReady {
			nics = append(nics, sandbox.AdapterNIC(n))
		}
	}
	lo := connect.LaunchOptions{Version: o.fcVersion, RootPorts: o.rootPorts}
	if o.fds {
		lo.Fds = fdLayout(nics)
	}
	launch, err := connect.LaunchNICs(kind, nics, lo)
	if err != nil {
		return fmt.Errorf("--kind %s: %w", kind, err)
	}
	if launch.Config != nil {
		// A configuration-file fragment (Firecracker) is JSON already.
		fmt.Fprintln(c.stdout, strings.TrimSpace(string(launch.Config)))
		return nil
	}
	return printArgs(c, launch.Args)
}

// printArgs prints arguments as shell words on one line, or a JSON array.
func printArgs(c *cli, args []string) error {
	if o.json {
		if args == nil {
			args = []string{}
		}
		return writeJSON(c, args)
	}
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	fmt.Fprintln(c.stdout, strings.Join(q, " "))
	return nil
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=,.:/@+%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
