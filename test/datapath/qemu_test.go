package datapath

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// runCtl runs the freshly built vmnicctl against stateDir.
func runCtl(t *testing.T, stateDir string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, vmnicctl(t), append([]string{"--state-dir", stateDir}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("vmnicctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func mustCtl(t *testing.T, stateDir string, args ...string) string {
	t.Helper()
	out, err := runCtl(t, stateDir, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestQEMUHotplugThroughPlugin is the real-VMM case: QEMU boots in a
// sandbox prepared with zero NICs; cnitool add makes vmnic hot-add a NIC that
// comes up in the guest and reaches the gateway; cnitool del hot-removes it;
// teardown leaves nothing on the host.
func TestQEMUHotplugThroughPlugin(t *testing.T) {
	testenv.RequireRoot(t)
	if err := qemuguest.Available(); err != nil {
		testenv.Unavailable(t, "QEMU guest: %v", err)
	}
	testenv.Command(t, "ping")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	id := "vmnd-q-" + randHex(t, 3)
	stateDir := filepath.Join(t.TempDir(), "state")
	bridge := "vmnbrd8"
	deleteHostLinkAtCleanup(t, bridge)

	// A sandbox at zero NICs, with a netns vmnic owns. Cleanup (after the
	// cleanups below: QEMU stopped, NIC deleted) tears it down, and removes
	// the netns itself should teardown have failed.
	var nsPath string
	t.Cleanup(func() {
		if _, err := runCtl(t, stateDir, "teardown", id); err != nil {
			t.Logf("cleanup teardown: %v", err)
		}
		if _, err := os.Stat(nsPath); nsPath != "" && err == nil {
			unix.Unmount(nsPath, unix.MNT_DETACH)
			os.Remove(nsPath)
		}
	})
	mustCtl(t, stateDir, "prepare", id)
	rec := record(t, stateDir, id)
	nsPath = rec.ResolvedNetnsPath()
	if rec.Phase != netsetup.PhasePrepared || len(rec.NetworkConfigs) != 0 || !rec.NetnsOwned || nsPath == "" {
		t.Fatalf("after prepare: %+v; want phase prepared, 0 NICs, an owned netns", rec)
	}

	g, err := qemuguest.Boot(ctx, qemuguest.Config{Netns: nsPath, BootTimeout: 3 * time.Minute, Logf: t.Logf})
	if err != nil {
		t.Fatalf("boot QEMU in %s: %v", nsPath, err)
	}
	t.Cleanup(func() { g.Close() })
	qemuPID := g.PID()
	if links, err := g.Links(ctx); err != nil || strings.Join(links, " ") != "lo" {
		t.Fatalf("guest links before any ADD: %v %v; want only lo", links, err)
	}

	mustCtl(t, stateDir, "attach-vmm", id, "--kind", "qemu", "--socket", g.QMPSocket())
	t.Logf("sandbox %s: netns %s, QEMU pid %d attached", id, nsPath, qemuPID)
	rec = record(t, stateDir, id)
	if rec.VMM == nil || rec.VMM.Kind != "qemu" || rec.VMM.APISocket != g.QMPSocket() {
		t.Fatalf("record VMM after attach-vmm: %+v", rec.VMM)
	}

	// ADD: cnitool's container id is a hash of the netns path; vmnic finds
	// the prepared sandbox by its netns and hot-adds the NIC.
	nw := writeNetwork(t, "vmnd-q-"+id[len(id)-6:], "1.0.0", stateDir, bridgeChain(bridge, "10.206.8.0/24", t.TempDir(), stateDir, 0))
	t.Cleanup(func() {
		if _, err := nw.cnitool(t, "del", nsPath, "eth0", ""); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	nw.mustCNI(t, "add", nsPath, "eth0", "")
	rec = record(t, stateDir, id)
	nic, ok := rec.NIC("eth0")
	if !ok || nic.State != netsetup.NICAttached || nic.VMMDeviceID == "" || len(nic.IPs) == 0 {
		t.Fatalf("record after ADD into a running QEMU: %+v; want eth0 attached with a device id and an IP", rec.NetworkConfigs)
	}

	ifname, err := g.WaitForMAC(ctx, nic.MAC)
	if err != nil {
		t.Fatalf("hot-added NIC (MAC %s) never appeared in the guest: %v", nic.MAC, err)
	}
	t.Logf("hot-added %s (device %s, TAP %s) is %s in the guest", nic.IfName, nic.VMMDeviceID, nic.Tap, ifname)
	ip := nic.IPs[0]
	out, err := g.Run(ctx, fmt.Sprintf("ip addr add %s dev %s && ip link set %s up && ping -c 2 -W 3 %s", ip, ifname, ifname, nic.Gateway))
	if err != nil || received(out) < 2 {
		t.Fatalf("guest → gateway ping over the hot-added NIC: %v\n%s", err, out)
	}
	hostPing(t, mustAddr(t, ip))
	t.Logf("guest %s → gateway %s and host → guest answered", ip, nic.Gateway)

	// DEL: the NIC leaves the guest, the TAP leaves the netns.
	nw.mustCNI(t, "del", nsPath, "eth0", "")
	if err := g.WaitForLinkGone(ctx, ifname); err != nil {
		t.Fatalf("guest still has %s after DEL: %v", ifname, err)
	}
	if linkExists(t, nsPath, nic.Tap) {
		t.Errorf("TAP %s still in the netns after DEL", nic.Tap)
	}
	rec = record(t, stateDir, id)
	if len(rec.NetworkConfigs) != 0 || rec.Phase != netsetup.PhasePrepared {
		t.Errorf("after DEL: phase %s, NICs %+v; want prepared with none", rec.Phase, rec.NetworkConfigs)
	}

	// Teardown, then QEMU goes: nothing is left.
	mustCtl(t, stateDir, "teardown", id)
	if err := g.Close(); err != nil {
		t.Errorf("stop QEMU: %v", err)
	}
	if err := syscall.Kill(qemuPID, 0); err == nil || errors.Is(err, syscall.EPERM) {
		t.Errorf("QEMU pid %d still running", qemuPID)
	}
	if _, err := os.Stat(nsPath); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("netns %s still there after teardown (%v)", nsPath, err)
	}
	st, err := netsetup.Open(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(id); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("record of %s after teardown: %v, want not found", id, err)
	}
	// Every file but the store's shared lock file (sandboxes.lock, empty:
	// the sandboxes' byte-range locks, which leave nothing in it).
	filepath.WalkDir(stateDir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return nil
		}
		if fi, ierr := e.Info(); p == filepath.Join(stateDir, "sandboxes.lock") && ierr == nil && fi.Size() == 0 {
			return nil
		}
		t.Errorf("file left in the state dir: %s", p)
		return nil
	})
}
