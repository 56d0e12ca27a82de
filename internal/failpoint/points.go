// Package failpoint makes vmnic's crash-safety testable: named points in the
// code where a test-only build can crash the process (SIGKILL), return an
// injected error, or pause.
//
// Production builds compile Inject to a function that returns nil and is
// inlined away: no lookup, no environment read, zero cost. Only a binary
// built with `-tags vmnic_failpoints` honours
//
//	VMNIC_FAILPOINTS=name=action[,name=action...]
//
// where action is crash (the process kills itself with SIGKILL, exit status
// 137 in a shell), error (Inject returns an error), or sleep:<duration>, each
// optionally suffixed @N to fire on the N-th hit of the point only. With
// VMNIC_FAILPOINTS_LOG=<file> every firing is appended to that file
// ("<name> <action> <pid>") before it acts, so a test can prove the point
// was reached.
//
// Every point is registered in Points, the one list tests enumerate.
package failpoint

import "sort"

// Env is the environment variable that arms failpoints (failpoint builds only).
const Env = "VMNIC_FAILPOINTS"

// LogEnv names a file each firing is appended to (failpoint builds only).
const LogEnv = "VMNIC_FAILPOINTS_LOG"

// BuildTag is the build tag that compiles failpoints in.
const BuildTag = "vmnic_failpoints"

// Component says which program reaches a point.
type Component string

const (
	// Engine points are in internal/sandbox: reached by the CNI plugin,
	// vmnicctl and the NRI hook alike, depending on the operation.
	Engine Component = "engine"
	// NRI points are in the NRI hook's handlers.
	NRI Component = "nri"
)

// Op is the operation during which a point is reached.
type Op string

const (
	OpAdd      Op = "add"      // CNI ADD (sandbox.Manager.AddNIC)
	OpDel      Op = "del"      // CNI DEL, GC, teardown (removal of one NIC)
	OpTeardown Op = "teardown" // vmnicctl teardown, NRI Stop/RemovePodSandbox
	OpPrepare  Op = "prepare"  // vmnicctl prepare, NRI RunPodSandbox
	OpNRIRun   Op = "nri-run"  // NRI RunPodSandbox
	OpNRIStop  Op = "nri-remove"
	OpQuiesce  Op = "quiesce" // vmnicctl quiesce/resume, NRI Stop/PostStartContainer, CHECK with the VMM gone
	OpRestore  Op = "restore" // vmnicctl restore-vmm (sandbox.Manager.RestoreVMM)
)

// Point is one registered failpoint.
type Point struct {
	Name      string
	Component Component
	Op        Op
	// Backend limits an engine point to one backend ("cni", "bridge"); "" = both.
	Backend string
	// VMM: the point is reached only when the sandbox has a VMM attached.
	VMM bool
	// What happened before the point (what a crash there leaves behind).
	Doc string
}

// Points is every failpoint in vmnic. The names are the engine's step names
// (internal/sandbox) and the NRI hook's; code must only Inject a name listed
// here (TestPointsUsed checks the source).
var Points = []Point{
	// CNI ADD.
	{Name: "add-locked", Component: Engine, Op: OpAdd, Doc: "sandbox lock taken (no file: a byte-range lock), nothing recorded"},
	{Name: "veth-read", Component: Engine, Op: OpAdd, Doc: "veth read in the sandbox netns, nothing recorded, no host change"},
	{Name: "tap-created", Component: Engine, Op: OpAdd, Backend: "cni", Doc: "TAP created in the sandbox netns, nothing recorded"},
	{Name: "veth-filter-added", Component: Engine, Op: OpAdd, Backend: "cni", Doc: "ingress qdiscs and the veth→TAP redirect added"},
	{Name: "bridge-tap-created", Component: Engine, Op: OpAdd, Backend: "bridge", Doc: "veth parked down, FORWARD rules taken (user recorded), TAP created on the host, nothing recorded"},
	{Name: "host-ready", Component: Engine, Op: OpAdd, Doc: "every host change made (both redirects, or bridge port and FORWARD rules), nothing recorded"},
	{Name: "fds-opened", Component: Engine, Op: OpAdd, VMM: true, Doc: "TAP queue fds opened for the fd handoff, not yet sent to the VMM, nothing recorded"},
	{Name: "vmm-added", Component: Engine, Op: OpAdd, VMM: true, Doc: "NIC hot-added into the VMM, nothing recorded"},
	{Name: "add-saved", Component: Engine, Op: OpAdd, Doc: "NIC recorded (the ADD's one record write), result not yet printed"},

	// Removal of one NIC (CNI DEL, GC, teardown).
	{Name: "detaching-saved", Component: Engine, Op: OpDel, VMM: true, Doc: "NIC recorded detaching, VMM not yet asked"},
	{Name: "vmm-removed", Component: Engine, Op: OpDel, VMM: true, Doc: "NIC removed from the VMM, host side untouched"},
	{Name: "remove-host", Component: Engine, Op: OpDel, Doc: "about to remove the host side (filters, qdisc, TAP, rules)"},
	{Name: "host-removed", Component: Engine, Op: OpDel, Doc: "host side removed, record still lists the NIC"},

	// Sandbox lifecycle.
	{Name: "prepare-netns-created", Component: Engine, Op: OpPrepare, Doc: "owned netns created, no record yet"},
	{Name: "teardown-saved", Component: Engine, Op: OpTeardown, Doc: "record marked tearing_down"},
	{Name: "teardown-nic", Component: Engine, Op: OpTeardown, Doc: "about to remove one NIC of the sandbox"},
	{Name: "taps-deleted", Component: Engine, Op: OpTeardown, Backend: "cni", Doc: "the sandbox's TAPs deleted in one batch, the record still lists the NICs"},
	{Name: "teardown-netns", Component: Engine, Op: OpTeardown, Doc: "NICs removed, owned netns not yet removed"},
	{Name: "netns-removed", Component: Engine, Op: OpTeardown, Doc: "owned netns removed, record not yet deleted"},

	// Quiesce and resume (issue 12).
	{Name: "quiesce-saved", Component: Engine, Op: OpQuiesce, Doc: "NICs recorded quiesced, veth redirects still in place"},
	{Name: "resume-host", Component: Engine, Op: OpQuiesce, Doc: "redirects back and drop filters gone, NICs still recorded quiesced"},

	// Restore of a restored sandbox's VM into Cloud Hypervisor (issue 12).
	{Name: "restore-fds-opened", Component: Engine, Op: OpRestore, VMM: true, Doc: "restore-vmm: TAP queue fds opened for the NICs the snapshot has on fds (none for NICs by name), vm.restore not sent, nothing recorded"},
	{Name: "vm-restored", Component: Engine, Op: OpRestore, VMM: true, Doc: "restore-vmm: the VMM has the restored VM with the sandbox's TAPs, vmnic's fd copies closed, the VMM and NICs not recorded (NICs still pending)"},

	// NRI hook handlers.
	{Name: "nri-runtime-dir", Component: NRI, Op: OpNRIRun, Doc: "RunPodSandbox: runtime dir made, sandbox not prepared"},
	{Name: "nri-prepared", Component: NRI, Op: OpNRIRun, Doc: "RunPodSandbox: sandbox prepared, record not yet marked origin nri"},
	{Name: "nri-torn-down", Component: NRI, Op: OpNRIStop, Doc: "RemovePodSandbox: sandbox torn down, leftovers (runtime dir) not yet removed"},
}

// Names lists the registered names, sorted.
func Names() []string {
	out := make([]string, len(Points))
	for i, p := range Points {
		out[i] = p.Name
	}
	sort.Strings(out)
	return out
}

// Lookup returns the registered point called name.
func Lookup(name string) (Point, bool) {
	for _, p := range Points {
		if p.Name == name {
			return p, true
		}
	}
	return Point{}, false
}

// Select returns the points of a component and op, in registration order.
func Select(c Component, op Op) []Point {
	var out []Point
	for _, p := range Points {
		if p.Component == c && p.Op == op {
			out = append(out, p)
		}
	}
	return out
}
