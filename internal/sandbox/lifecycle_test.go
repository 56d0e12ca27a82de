package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

// These tests reproduce issue 16 items 1, 2 and 10 without root: records
// without a netns, VMM simulators on unix sockets.

func unitManager(t *testing.T) *Manager {
	t.Helper()
	st, err := netsetup.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return New(Config{Store: st, NetnsDir: t.TempDir(), VMMOptions: vmmadapter.Options{CallTimeout: 2 * time.Second, RemoveTimeout: 2 * time.Second}})
}

func unitCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

// TestTeardownWithAChangedRuntimeDir is issue 16 item 1: a launcher's
// chmod 0770 of the runtime dir made Teardown fail at its first save, for
// ever. Teardown must finish and remove the record's copy.
func TestTeardownWithAChangedRuntimeDir(t *testing.T) {
	m := unitManager(t)
	rt := filepath.Join(t.TempDir(), "rt")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	rec := netsetup.New("vmnict-rtmode")
	rec.RuntimeDir = rt
	if err := m.Store.Create(unitCtx(t), rec); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(netsetup.MirrorPathIn(rt)); err != nil {
		t.Fatalf("copy: %v", err)
	}
	if err := os.Chmod(rt, 0o770); err != nil {
		t.Fatal(err)
	}
	if err := m.Teardown(unitCtx(t), "vmnict-rtmode", TeardownOptions{}); err != nil {
		t.Fatalf("Teardown with a 0770 runtime dir: %v", err)
	}
	if _, err := m.Store.Get("vmnict-rtmode"); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("record after teardown: %v", err)
	}
	if _, err := os.Lstat(netsetup.MirrorPathIn(rt)); !os.IsNotExist(err) {
		t.Errorf("copy after teardown: %v", err)
	}
}

// TestTeardownUnknownNICState is issue 16 item 2: a record that decodes but
// does not validate (a NIC state a newer vmnic wrote before a downgrade)
// wedged Teardown at its first save, although DelNIC worked. Teardown must
// finish from it; the NIC's state is kept as written until the NIC goes.
func TestTeardownUnknownNICState(t *testing.T) {
	for _, tc := range []struct{ name, backend, state string }{
		{"NIC state", "cni", "quiesced-by-v9"},
		{"backend", "macvtap-by-v9", "pending"},
	} {
		for _, keep := range []bool{false, true} {
			m := unitManager(t)
			id := "vmnict-newer"
			data := `{"schema": ` + strconv.Itoa(netsetup.SchemaVersion) + `, "sandbox_id": "` + id + `", "phase": "configured", "netns_owned": false, "net_backend": "` + tc.backend + `",
  "network_configs": [{"ifname": "eth0", "state": "` + tc.state + `", "tap": "tapeth0"}, {"ifname": "net1", "state": "pending", "tap": "tapnet1"}]}`
			if err := os.WriteFile(m.Store.Path(id), []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Store.Get(id); err != nil {
				t.Fatalf("the record must decode: %v", err)
			}
			err := m.Teardown(unitCtx(t), id, TeardownOptions{KeepNetns: keep})
			if err != nil {
				t.Fatalf("%s: Teardown (keepNetns %v) of a record of a newer vmnic: %v", tc.name, keep, err)
			}
			rec, err := m.Store.Get(id)
			switch {
			case keep && (err != nil || len(rec.NetworkConfigs) != 0 || rec.Phase != netsetup.PhasePrepared):
				t.Errorf("%s: after a stop: %v %+v", tc.name, err, rec)
			case !keep && !errors.Is(err, netsetup.ErrNotFound):
				t.Errorf("%s: record after teardown: %v", tc.name, err)
			}
		}
	}
}

// TestVMMSocketSwappedAfterTheCheck is issue 16 item 10: the VMM container
// owns the directory of its socket and can swap the socket for a symlink to
// another sandbox's socket between vmnic's check and its dial. The dial
// must not follow it: the other VMM never hears from vmnic.
func TestVMMSocketSwappedAfterTheCheck(t *testing.T) {
	dir, err := os.MkdirTemp("", "vmnict-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, d := range []string{"a", "b"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	own, other := filepath.Join(dir, "a", "api.sock"), filepath.Join(dir, "b", "api.sock")
	for _, kind := range []vmmadapter.Kind{vmmadapter.CloudHypervisor, vmmadapter.Firecracker} {
		t.Run(string(kind), func(t *testing.T) {
			os.Remove(own)
			os.Remove(other)
			var calls func() int
			switch kind {
			case vmmadapter.CloudHypervisor:
				a, err := vmmsim.StartCH(own, vmmsim.CHConfig{State: vmmsim.CHRunning})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { a.Close() })
				b, err := vmmsim.StartCH(other, vmmsim.CHConfig{State: vmmsim.CHRunning})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b.Close() })
				calls = func() int { return len(b.Calls()) }
			case vmmadapter.Firecracker:
				a, err := vmmsim.StartFC(own, vmmsim.FCConfig{State: vmmsim.FCRunning})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { a.Close() })
				b, err := vmmsim.StartFC(other, vmmsim.FCConfig{State: vmmsim.FCRunning})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { b.Close() })
				calls = func() int { return len(b.Calls()) }
			}
			m := unitManager(t)
			m.VMMSocketDirs = []string{dir}
			// Between the check (in openVMM) and the first dial, the VMM
			// swaps its socket for a symlink to the other sandbox's.
			m.OpenVMM = func(k vmmadapter.Kind, socket string, o vmmadapter.Options) (vmmadapter.Adapter, error) {
				a, err := connect.Open(k, socket, o)
				if err == nil {
					if err := os.Rename(socket, socket+".moved"); err != nil {
						t.Fatal(err)
					}
					if err := os.Symlink(other, socket); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { os.Remove(socket); os.Rename(socket+".moved", socket) })
				}
				return a, err
			}
			id := "vmnict-swap"
			if err := m.Store.Create(unitCtx(t), netsetup.New(id)); err != nil {
				t.Fatal(err)
			}
			_, err := m.AttachVMM(unitCtx(t), id, kind, own)
			if n := calls(); n != 0 || err == nil {
				t.Fatalf("attach-vmm through a swapped socket: error %v, %d calls reached the other sandbox's VMM", err, n)
			}
		})
	}
}
