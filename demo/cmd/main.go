// Command demo is `make demo`: the whole vmnic story on this machine, step by
// step. It prepares a sandbox at zero NICs, adds two NICs through the
// reference bridge chain with cnitool, shows the NetSetup record, proves
// traffic both ways through the TAPs with a guest stand-in, removes a NIC,
// tears everything down and shows nothing is left. When QEMU and a kernel
// are installed it then does the same with a real QEMU guest: a NIC
// hot-added by vmnic appears in the running guest, whose agent configures it
// from the config vmnic renders (vmnicctl guest-config; the json form in the
// record's live copy, shared into the guest), and pings both gateways; and
// a guest is paused (NICs quiesced and resumed), snapshotted, and restored
// into a new sandbox from vmnicctl snapshot / restore / restore-args.
//
// Run as root from the repository root (demo/demo.sh does). It uses the
// state dir /tmp/vmnic-demo and names vmnic-demo-*; it cleans up after
// itself, also on failure or Ctrl-C, and exits non-zero on any failure.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
)

const (
	stateDir = "/tmp/vmnic-demo"
	prefix   = "vmnic-demo"
)

type timing struct {
	n     int
	title string
	took  time.Duration
}

// cniNet is one demo network: a bridge chain on its own bridge and subnet.
type cniNet struct {
	name, bridge, subnet, gateway string
	subnet6, gateway6             string // "" = IPv4 only
}

// attachment is a NIC the demo added (for cleanup).
type attachment struct {
	net    *cniNet
	netns  string
	ifname string
}

type demo struct {
	ctx context.Context

	root       string // repository root
	vmnicctl   string
	guestAgent string // static vmnic-guest-agent for the QEMU guest
	cnitool    string
	cniPath    string
	work       string // temp dir: conflists (NETCONFPATH) and host-local leases
	netconfDir string
	ipamDir    string
	nets       []*cniNet

	added     []attachment
	sandboxes []string
	guest     *qemuguest.Guest
	qemuPID   int

	step      int
	stepTitle string
	stepStart time.Time
	timings   []timing
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &demo{ctx: ctx}
	start := time.Now()
	err := d.runAll()
	d.endStep()
	cerr := d.cleanup()
	if err == nil && cerr != nil {
		err = fmt.Errorf("cleanup: %w", cerr)
	}
	fmt.Println()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%sDEMO FAILED%s (step %d %q): %v\n", red, reset, d.step, d.lastTitle(), err)
		os.Exit(1)
	}
	fmt.Printf("%sSummary%s\n", bold, reset)
	for _, t := range d.timings {
		fmt.Printf("  [%2d] %-88s %9s\n", t.n, t.title, t.took.Round(time.Millisecond))
	}
	fmt.Printf("  total %s\n\n%sDEMO PASSED%s\n", time.Since(start).Round(time.Millisecond), green, reset)
}

func (d *demo) lastTitle() string {
	if d.stepTitle != "" {
		return d.stepTitle
	}
	if n := len(d.timings); n > 0 {
		return d.timings[n-1].title
	}
	return ""
}

// runAll runs every step; a failing step panics with a failure, turned
// into the returned error.
func (d *demo) runAll() (err error) {
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(failure)
			if !ok {
				panic(r)
			}
			err = f.err
		}
	}()
	d.setup()
	d.standIn()
	if qerr := qemuguest.Available(); qerr != nil {
		d.header("Real QEMU guest: skipped")
		d.note("QEMU guest not available here: %v", qerr)
		d.note("(make demo installs qemu-system-x86, linux-image-amd64 and busybox-static)")
	} else {
		d.realGuest()
		d.snapshotRestore()
	}
	d.nothingLeft()
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// setup finds the binaries, clears what an interrupted earlier run left,
// and writes the two networks.
func (d *demo) setup() {
	d.header("Setup: binaries, state dir, two CNI networks")
	if os.Geteuid() != 0 {
		d.fail("the demo needs root (network namespaces, links, tc): run `sudo make demo`")
	}
	wd, err := os.Getwd()
	d.check(err, "working directory")
	if _, err := os.Stat(filepath.Join(wd, "go.mod")); err != nil {
		d.fail("run the demo from the repository root (demo/demo.sh does)")
	}
	d.root = wd
	// The QEMU guest's QMP socket is in a temp dir: allow vmnicctl and the
	// plugin (both inherit this) to dial VMM sockets there.
	os.Setenv("VMNIC_VMM_SOCKET_DIRS", os.TempDir())
	binDir := envOr("VMNIC_BIN", filepath.Join(d.root, "bin"))
	toolsDir := envOr("VMNIC_TOOLS", filepath.Join(d.root, ".tools"))
	cniDir := envOr("VMNIC_CNI_BIN", filepath.Join(toolsDir, "cni"))
	d.vmnicctl = filepath.Join(binDir, "vmnicctl")
	d.guestAgent = filepath.Join(binDir, "vmnic-guest-agent")
	d.cnitool = filepath.Join(toolsDir, "bin", "cnitool")
	// bin/ first: it holds the vmnic plugin just built.
	d.cniPath = binDir + string(os.PathListSeparator) + cniDir
	for _, p := range []string{d.vmnicctl, filepath.Join(binDir, "vmnic"), d.cnitool, filepath.Join(cniDir, "bridge"), filepath.Join(cniDir, "host-local")} {
		if _, err := os.Stat(p); err != nil {
			d.fail("%s is missing: run `make tools build` (make demo does)", p)
		}
	}
	d.note("vmnicctl  %s", d.vmnicctl)
	d.note("cnitool   %s", d.cnitool)
	d.note("CNI_PATH  %s", d.cniPath)

	d.clearLeftovers()

	d.work, err = os.MkdirTemp("", prefix+"-cni-")
	d.check(err, "temp dir")
	d.netconfDir = filepath.Join(d.work, "net.d")
	d.ipamDir = filepath.Join(d.work, "ipam")
	d.check(os.MkdirAll(d.netconfDir, 0o755), "mkdir")
	d.nets = []*cniNet{
		{name: prefix + "-a", bridge: prefix + "-br0", subnet: "10.216.1.0/24", gateway: "10.216.1.1",
			subnet6: "fd00:216:1::/64", gateway6: "fd00:216:1::1"},
		{name: prefix + "-b", bridge: prefix + "-br1", subnet: "10.216.2.0/24", gateway: "10.216.2.1"},
	}
	for _, n := range d.nets {
		path := d.writeConflist(n)
		if n.subnet6 != "" {
			d.note("network %s: bridge %s, subnets %s and %s, gateways %s and %s on the bridge", n.name, n.bridge, n.subnet, n.subnet6, n.gateway, n.gateway6)
		} else {
			d.note("network %s: bridge %s, subnet %s, gateway %s on the bridge", n.name, n.bridge, n.subnet, n.gateway)
		}
		d.note("  %s", path)
	}
	data, err := os.ReadFile(filepath.Join(d.netconfDir, d.nets[0].name+".conflist"))
	d.check(err, "read conflist")
	fmt.Print(indent(string(data)))
}
