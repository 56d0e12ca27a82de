package sandbox

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

// sendRestore sends the request r to the API socket and returns the status
// and body.
func sendRestore(t *testing.T, socket string, r connect.Restore) (int, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	req, err := http.NewRequest(r.Method, "http://localhost"+r.Path, bytes.NewReader(r.Body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestRestoreFirecrackerSimulator: a restored sandbox whose snapshot TAP
// name is taken gets another TAP; restore-args' PUT /snapshot/load carries
// the network override; the simulated Firecracker (every request validated
// against specs/firecracker.yaml) restores the interface onto the new TAP,
// and attach-vmm records the NIC attached with the snapshot's device id.
// A Firecracker older than 1.12 rejects the override field.
func TestRestoreFirecrackerSimulator(t *testing.T) {
	for _, tc := range []struct {
		version string
		taken   bool
		wantErr string
	}{
		{"1.12.1", true, ""},
		{"1.16.1", false, ""},
		{"1.11.0", false, ""},
		{"1.11.0", true, "unknown field `network_overrides`"},
	} {
		name := tc.version
		if tc.taken {
			name += "/renamed"
		}
		t.Run(name, func(t *testing.T) {
			w := newRestoreWorld(t)
			snap := w.man.NICs[0]
			peer := netfixture.Netns(t, netfixture.Name("vmnicr-p"))
			id := "vmnicr-fc"
			ns := w.restoreSandbox(t, id, snapMAC, peer, "peer1", false)
			if tc.taken {
				netfixture.Veth(t, ns, snap.Tap, peer, "blocker", 1500, "")
			}
			added, err := w.m.AddNIC(ctx(t), w.spec(id, ns, "10.204.0.9/24"))
			if err != nil {
				t.Fatalf("AddNIC: %v", err)
			}
			rec, err := w.m.Store.Get(id)
			if err != nil {
				t.Fatal(err)
			}
			nics, err := RestoreNICs(rec, nil)
			if err != nil {
				t.Fatal(err)
			}
			r, err := connect.RestoreArgs(vmmadapter.Firecracker, nics, connect.RestoreOptions{SnapshotPath: "/snap/vm.state", MemPath: "/snap/vm.mem", Resume: true})
			if err != nil {
				t.Fatal(err)
			}
			sim := vmmsim.NewFC(t, vmmsim.FCConfig{Version: tc.version, PCI: true,
				Snapshot: []vmmsim.FCNet{{IfaceID: snap.VMMDeviceID, HostDevName: snap.Tap, GuestMAC: snap.MAC}}})
			code, body := sendRestore(t, sim.Socket(), r)
			if tc.wantErr != "" {
				if code != http.StatusBadRequest || !strings.Contains(body, tc.wantErr) {
					t.Fatalf("load on %s: %d %s, want a 400 with %q", tc.version, code, body, tc.wantErr)
				}
				return
			}
			if code != http.StatusNoContent {
				t.Fatalf("PUT /snapshot/load: %d %s (body %s)", code, body, r.Body)
			}
			if v := sim.Violations(); len(v) > 0 {
				t.Errorf("spec violations: %v", v)
			}
			ifs := sim.Interfaces()
			if len(ifs) != 1 || ifs[0].HostDevName != added.NIC.Tap || ifs[0].IfaceID != snap.VMMDeviceID {
				t.Errorf("restored interfaces %+v, want %s on TAP %s", ifs, snap.VMMDeviceID, added.NIC.Tap)
			}
			rec, err = w.m.AttachVMM(ctx(t), id, vmmadapter.Firecracker, sim.Socket())
			if err != nil {
				t.Fatalf("AttachVMM: %v", err)
			}
			if n, _ := rec.NIC("eth0"); n.State != netsetup.NICAttached || n.VMMDeviceID != snap.VMMDeviceID {
				t.Errorf("after attach-vmm: %s device %q, want attached with %s", n.State, n.VMMDeviceID, snap.VMMDeviceID)
			}
			if sim.CountCalls(http.MethodPut, "/network-interfaces/"+snap.VMMDeviceID) != 0 {
				t.Error("attach-vmm PUT the restored interface again")
			}
		})
	}
}

// TestRestoreCloudHypervisorSimulator: with the snapshot's TAP name free,
// restore-args' vm.restore (spec-validated by the simulator) brings the VM
// back on that TAP and attach-vmm records the NIC attached with the
// snapshot's id. With the name taken, restore-args says what is missing
// (net_fds with the TAP fd: the fd handoff).
func TestRestoreCloudHypervisorSimulator(t *testing.T) {
	for _, taken := range []bool{false, true} {
		t.Run(map[bool]string{false: "same-name", true: "renamed"}[taken], func(t *testing.T) {
			w := newRestoreWorld(t)
			snap := w.man.NICs[0]
			peer := netfixture.Netns(t, netfixture.Name("vmnicr-p"))
			id := "vmnicr-ch"
			ns := w.restoreSandbox(t, id, snapMAC, peer, "peer1", false)
			if taken {
				netfixture.Veth(t, ns, snap.Tap, peer, "blocker", 1500, "")
			}
			if _, err := w.m.AddNIC(ctx(t), w.spec(id, ns, "10.204.0.9/24")); err != nil {
				t.Fatalf("AddNIC: %v", err)
			}
			rec, _ := w.m.Store.Get(id)
			nics, err := RestoreNICs(rec, nil)
			if err != nil {
				t.Fatal(err)
			}
			r, err := connect.RestoreArgs(vmmadapter.CloudHypervisor, nics, connect.RestoreOptions{SourceURL: "file:///snap", Resume: true})
			if err != nil {
				t.Fatal(err)
			}
			if taken {
				if !strings.Contains(r.Missing, "net_fds") || !strings.Contains(r.Missing, snap.Tap) {
					t.Errorf("missing = %q, want net_fds and the snapshot's TAP named", r.Missing)
				}
				return
			}
			if r.Missing != "" {
				t.Errorf("missing = %q with the same TAP name", r.Missing)
			}
			sim := vmmsim.NewCH(t, vmmsim.CHConfig{State: vmmsim.CHNotCreated,
				Snapshot: []vmmsim.CHNet{{ID: snap.VMMDeviceID, Tap: snap.Tap, MAC: snap.MAC, NumQueues: 2, QueueSize: 256}}})
			if code, body := sendRestore(t, sim.Socket(), r); code != http.StatusNoContent {
				t.Fatalf("vm.restore: %d %s", code, body)
			}
			if v := sim.Violations(); len(v) > 0 {
				t.Errorf("spec violations: %v", v)
			}
			rec, err = w.m.AttachVMM(ctx(t), id, vmmadapter.CloudHypervisor, sim.Socket())
			if err != nil {
				t.Fatalf("AttachVMM: %v", err)
			}
			if n, _ := rec.NIC("eth0"); n.State != netsetup.NICAttached || n.VMMDeviceID != snap.VMMDeviceID {
				t.Errorf("after attach-vmm: %s device %q", n.State, n.VMMDeviceID)
			}
			if got := sim.CountCalls(http.MethodPut, "/api/v1/vm.add-net"); got != 0 {
				t.Errorf("attach-vmm sent vm.add-net %d times for a restored NIC", got)
			}
		})
	}
}
