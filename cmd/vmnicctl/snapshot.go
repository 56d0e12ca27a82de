package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"

	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

// snapOpts are the flags of snapshot, restore and restore-args.
var snapOpts struct {
	out, from             string
	newIPs                bool
	snapshotPath, memPath string
	sourceURL, incoming   string
	resume, prefault      bool
	buses                 string
}

var snapshotCommands = []command{
	{name: "snapshot", args: "<sandbox-id> --out FILE", npos: 1, run: cmdSnapshot,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&snapOpts.out, "out", "", "write the snapshot manifest here (\"-\": stdout)")
		},
		help: "Write the sandbox's snapshot manifest (per NIC: CNI network and ifname, guest MAC, IPs, routes, MTU, queues, VMM device id, TAP name), to keep next to the VM snapshot."},
	{name: "restore", args: "<new-sandbox-id> --from FILE", npos: 1, run: cmdRestore,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&snapOpts.from, "from", "", "the snapshot manifest (vmnicctl snapshot)")
			fs.BoolVar(&snapOpts.newIPs, "new-ips", false, "the restored NICs may get other IPs than the snapshot's (clones: the guest must be told its new addresses); by default each ADD must bring the snapshot's IPs")
			prepareFlags(fs)
		},
		help: "Prepare a sandbox for a VM restored from a snapshot: a netns at zero NICs that expects the manifest's NICs. Then CNI ADD each NIC with the snapshot's MAC (CNI \"mac\" capability / MAC CNI_ARGS) and IPs (\"ips\" / IP)."},
	{name: "restore-args", args: "<sandbox-id> --kind K", npos: 1, run: cmdRestoreArgs,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&o.kind, "kind", "", "VMM kind: "+kindHelp)
			fs.StringVar(&snapOpts.snapshotPath, "snapshot-path", "", "Firecracker: the microVM state file")
			fs.StringVar(&snapOpts.memPath, "mem-path", "", "Firecracker: the guest memory file")
			fs.StringVar(&snapOpts.sourceURL, "source-url", "", "Cloud Hypervisor: vm.restore source_url (file:///dir)")
			fs.StringVar(&snapOpts.incoming, "incoming", "defer", "QEMU: the -incoming URI")
			fs.IntVar(&o.rootPorts, "root-ports", 0, "QEMU: the PCIe root ports the VM had (vmm-args --root-ports)")
			fs.StringVar(&snapOpts.buses, "qemu-bus", "", "QEMU: DEVICE=ROOTPORT,... for NICs that sat behind a PCIe root port")
			fs.BoolVar(&snapOpts.resume, "resume", false, "the VMM resumes the VM once restored (FC resume_vm, CH resume)")
			jsonFlag(fs)
		},
		help: "Print what the VMM needs to restore the snapshot with this sandbox's TAPs: Firecracker PUT /snapshot/load with network_overrides, Cloud Hypervisor vm.restore (with net_fds for NICs it had on fds: send it with restore-vmm), QEMU -netdev/-device with the snapshot's ids and -incoming. Its NICs must be added first."},
	{name: "restore-vmm", args: "<sandbox-id> --kind cloud-hypervisor --socket S --source-url file:///DIR", npos: 1, run: cmdRestoreVMM,
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&o.kind, "kind", "", "VMM kind: cloud-hypervisor (the one vmnic restores itself)")
			fs.StringVar(&o.socket, "socket", "", "the VMM's API socket (CH --api-socket), of a CH started without a VM")
			fs.StringVar(&snapOpts.sourceURL, "source-url", "", "the snapshot directory, file:///DIR (its config.json says which NICs CH had on TAP fds)")
			fs.BoolVar(&snapOpts.prefault, "prefault", false, "CH prefaults the guest memory (RestoreConfig.prefault)")
			fs.BoolVar(&snapOpts.resume, "resume", false, "the VM runs once restored (else it comes back paused)")
			jsonFlag(fs)
		},
		help: "Restore the VM of a restored sandbox in a Cloud Hypervisor: vm.restore with the TAP queue fds of the NICs CH had on fds (net_fds, SCM_RIGHTS, opened in the sandbox netns), then record the VMM and its NICs attached with their snapshot device ids. Its NICs must be added first; safe to retry."},
}

func init() { commands = append(commands, snapshotCommands...) }

func cmdSnapshot(_ context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	if snapOpts.out == "" {
		return fmt.Errorf("--out FILE is required")
	}
	m, err := c.manager()
	if err != nil {
		return err
	}
	man, err := m.Store.Snapshot(pos[0])
	if err != nil {
		return err
	}
	if snapOpts.out == "-" {
		return writeJSON(c, man)
	}
	if err := netsetup.WriteManifest(snapOpts.out, man); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "%s: %d NIC(s) of sandbox %s\n", snapOpts.out, len(man.NICs), man.SandboxID)
	return nil
}

func cmdRestore(ctx context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	if snapOpts.from == "" {
		return fmt.Errorf("--from FILE is required")
	}
	man, err := netsetup.ReadManifest(snapOpts.from)
	if err != nil {
		return err
	}
	m, err := c.manager()
	if err != nil {
		return err
	}
	rec, err := m.PrepareRestore(ctx, pos[0], man, sandbox.RestoreOptions{
		KeepIPs: !snapOpts.newIPs,
		Prepare: sandbox.PrepareOptions{NetnsPath: o.netns, PodName: o.podName, PodNamespace: o.podNS, PodUID: o.podUID, RuntimeDir: o.runtimeDir},
	})
	if err != nil {
		return err
	}
	if o.json {
		return writeJSON(c, rec)
	}
	fmt.Fprintln(c.stdout, rec.ResolvedNetnsPath())
	for _, n := range man.NICs {
		caps := map[string]any{"mac": n.MAC}
		if !snapOpts.newIPs && len(n.IPs) > 0 {
			caps["ips"] = n.IPs
		}
		b, _ := json.Marshal(caps)
		fmt.Fprintf(c.stderr, "expects %s (network %s): ask the main plugin with runtimeConfig %s (capabilities mac, ips), or CNI_ARGS MAC=%s%s\n",
			n.IfName, dash(n.Network), b, n.MAC, ipArg(n.IPs, snapOpts.newIPs))
	}
	return nil
}

func cmdRestoreArgs(_ context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	kind, rec, err := c.kindAndRecord(pos[0])
	if err != nil {
		return err
	}
	buses := map[string]string{}
	for _, kv := range strings.FieldsFunc(snapOpts.buses, func(r rune) bool { return r == ',' }) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("--qemu-bus %q: want DEVICE=ROOTPORT", kv)
		}
		buses[k] = v
	}
	nics, err := sandbox.RestoreNICs(rec, buses)
	if err != nil {
		return err
	}
	if kind == vmmadapter.CloudHypervisor && snapOpts.sourceURL != "" {
		// Which NICs CH had on fds is in the snapshot's VM config.
		if snap, err := connect.ReadSnapshotNets(kind, snapOpts.sourceURL); err == nil {
			sandbox.MarkSnapshotFds(nics, snap)
		} else {
			fmt.Fprintf(c.stderr, "vmnicctl restore-args: %v\n", err)
		}
	}
	r, err := connect.RestoreArgs(kind, nics, connect.RestoreOptions{
		SnapshotPath: snapOpts.snapshotPath, MemPath: snapOpts.memPath, SourceURL: snapOpts.sourceURL,
		Incoming: snapOpts.incoming, RootPorts: o.rootPorts, Resume: snapOpts.resume,
	})
	if err != nil {
		return fmt.Errorf("--kind %s: %w", kind, err)
	}
	if r.Note != "" {
		fmt.Fprintf(c.stderr, "vmnicctl restore-args: note: %s\n", r.Note)
	}
	if r.Missing != "" {
		fmt.Fprintf(c.stderr, "vmnicctl restore-args: missing: %s\n", r.Missing)
	}
	if kind == vmmadapter.QEMU {
		return printArgs(c, r.Args)
	}
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func cmdRestoreVMM(ctx context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	kind, err := connect.ParseKind(o.kind)
	if err != nil {
		return fmt.Errorf("--kind: %w", err)
	}
	if o.socket == "" {
		return fmt.Errorf("--socket is required")
	}
	if snapOpts.sourceURL == "" {
		return fmt.Errorf("--source-url file:///DIR is required")
	}
	m, err := c.manager()
	if err != nil {
		return err
	}
	rec, err := m.RestoreVMM(ctx, pos[0], kind, o.socket, sandbox.RestoreVMMOptions{
		SourceURL: snapOpts.sourceURL, Prefault: snapOpts.prefault, Resume: snapOpts.resume,
	})
	if err != nil {
		return err
	}
	if o.json {
		return writeJSON(c, rec)
	}
	printRecord(c, rec)
	return nil
}

// ipArg is the CNI_ARGS IP pair for one address ("" for none, several, or
// new IPs): the reference plugins take a single IP there; several go
// through the ips capability.
func ipArg(ips []string, newIPs bool) string {
	if newIPs || len(ips) != 1 {
		return ""
	}
	addr, _, _ := strings.Cut(ips[0], "/")
	return ";IP=" + addr
}
