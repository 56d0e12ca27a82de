package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
// snapshot's id. With the name taken and the snapshot's config not read,
// restore-args names restore-vmm, which reads it and hands fds over
// (TestRestoreVMMCloudHypervisor).
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
				if r.Missing != "" || !strings.Contains(r.Note, "restore-vmm") || !strings.Contains(r.Note, snap.VMMDeviceID) {
					t.Errorf("missing %q, note %q: want no missing, and restore-vmm and %s in the note", r.Missing, r.Note, snap.VMMDeviceID)
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

// TestRestoreVMMCloudHypervisor: RestoreVMM restores a Cloud Hypervisor
// (the simulator, every request spec-validated) from a snapshot directory
// whose config.json says how CH had each NIC:
//   - on fds, with the snapshot's TAP name taken (override): the TAP's
//     queue fd goes with vm.restore as net_fds, the simulator learns the
//     new TAP by TUNGETIFF, the NIC is recorded attached (handoff fd) with
//     the snapshot's device id; vmnic keeps no fd; a retry sends nothing
//     and records the same;
//   - by name, with the name free: no fd, handoff name;
//   - by name with the name taken: refused before any request, nothing
//     recorded, no fd left;
//   - a snapshot on more queue pairs than the NIC, or a VMM that has
//     another VM: refused, nothing recorded.
func TestRestoreVMMCloudHypervisor(t *testing.T) {
	for _, tc := range []struct {
		name    string
		taken   bool
		fds     int // the snapshot's fds for the NIC (0: by name)
		pairs   int // the NIC's queue pairs (0: 1)
		running bool
		wantErr string
	}{
		{name: "fds/renamed", taken: true, fds: 1},
		{name: "fds/renamed/2-pairs", taken: true, fds: 2, pairs: 2},
		{name: "fds/same-name", fds: 1},
		{name: "name/same-name"},
		{name: "name/renamed", taken: true, wantErr: "reopens it by that name"},
		{name: "fds/queue-mismatch", fds: 2, wantErr: "2 queue pairs"},
		{name: "vm-exists", fds: 1, running: true, wantErr: "has a VM with other NICs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newRestoreWorldPairs(t, tc.pairs)
			snap := w.man.NICs[0]
			peer := netfixture.Netns(t, netfixture.Name("vmnicr-p"))
			id := "vmnicr-chfd"
			ns := w.restoreSandbox(t, id, snapMAC, peer, "peer1", false)
			if tc.taken {
				netfixture.Veth(t, ns, snap.Tap, peer, "blocker", 1500, "")
			}
			added, err := w.m.AddNIC(ctx(t), w.spec(id, ns, "10.204.0.9/24"))
			if err != nil {
				t.Fatalf("AddNIC: %v", err)
			}
			if tc.taken == (added.NIC.SnapshotTap == "") {
				t.Fatalf("restored NIC %+v: override %v, want %v", added.NIC, added.NIC.SnapshotTap != "", tc.taken)
			}
			dir := t.TempDir()
			nq := 2
			if tc.fds > 0 {
				nq = 2 * tc.fds
			}
			if err := vmmsim.WriteCHSnapshotConfig(dir, []vmmsim.CHNet{{ID: snap.VMMDeviceID, Tap: snap.Tap, MAC: snap.MAC, NumQueues: nq, QueueSize: 256, Fds: tc.fds}}); err != nil {
				t.Fatal(err)
			}
			cfg := vmmsim.CHConfig{State: vmmsim.CHNotCreated}
			if tc.running {
				cfg.State = vmmsim.CHRunning
			}
			sim := vmmsim.NewCH(t, cfg)
			if tc.running {
				sim.Create()
				if code, body := sendRestore(t, sim.Socket(), connect.Restore{Method: "PUT", Path: "/api/v1/vm.add-net", Body: []byte(`{"id":"other","tap":"x1","num_queues":2}`)}); code >= 300 {
					t.Fatalf("add-net: %d %s", code, body)
				}
			}
			before := openFds(t)
			url := "file://" + dir
			rec, err := w.m.RestoreVMM(ctx(t), id, vmmadapter.CloudHypervisor, sim.Socket(), RestoreVMMOptions{SourceURL: url, Resume: true})
			want := before // the VMM (in this process) holds its copies, vmnic none
			if err == nil {
				want += tc.fds
			}
			if got := openFds(t); got != want {
				t.Errorf("%d TUN fds open after RestoreVMM (err %v), %d before, want %d: vmnic must keep no copy", got, err, before, want)
			}
			if v := sim.Violations(); len(v) > 0 {
				t.Errorf("spec violations: %v", v)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("RestoreVMM = %v, want an error with %q", err, tc.wantErr)
				}
				if got := sim.CountCalls(http.MethodPut, "/api/v1/vm.restore"); got != 0 {
					t.Errorf("%d vm.restore requests sent for a refused restore", got)
				}
				rec, _ := w.m.Store.Get(id)
				if n, _ := rec.NIC("eth0"); n.State != netsetup.NICPending || rec.VMM != nil {
					t.Errorf("after a refused restore: NIC %s, VMM %+v; want pending and no VMM", n.State, rec.VMM)
				}
				return
			}
			if err != nil {
				t.Fatalf("RestoreVMM: %v", err)
			}
			n, _ := rec.NIC("eth0")
			wantHandoff := netsetup.HandoffName
			if tc.fds > 0 {
				wantHandoff = netsetup.HandoffFd
			}
			if n.State != netsetup.NICAttached || n.VMMDeviceID != snap.VMMDeviceID || n.Handoff != wantHandoff {
				t.Errorf("restored NIC %s device %q handoff %q, want attached, %s, %s", n.State, n.VMMDeviceID, n.Handoff, snap.VMMDeviceID, wantHandoff)
			}
			if rec.VMM == nil || rec.VMM.APISocket != sim.Socket() || rec.VMM.PID == 0 || !rec.VMM.Booted {
				t.Errorf("recorded VMM %+v", rec.VMM)
			}
			nets := sim.Net()
			if len(nets) != 1 || nets[0].ID != snap.VMMDeviceID || nets[0].Tap != added.NIC.Tap || nets[0].Fds != tc.fds {
				t.Errorf("restored VM net %+v, want %s on TAP %s with %d fds", nets, snap.VMMDeviceID, added.NIC.Tap, tc.fds)
			}
			calls := sim.Calls()
			var restores []vmmsim.Call
			for _, c := range calls {
				if c.Path == "/api/v1/vm.restore" {
					restores = append(restores, c)
				}
			}
			if len(restores) != 1 || restores[0].Fds != tc.fds || restores[0].Status != http.StatusNoContent {
				t.Fatalf("vm.restore calls %+v, want one with %d fds", restores, tc.fds)
			}
			if tc.fds > 0 && !strings.Contains(string(restores[0].Body), fmt.Sprintf(`"net_fds":[{"id":"%s","num_fds":%d}]`, snap.VMMDeviceID, tc.fds)) {
				t.Errorf("vm.restore body %s, want net_fds for %s", restores[0].Body, snap.VMMDeviceID)
			}
			if sim.State() != vmmsim.CHRunning {
				t.Errorf("VM %s after a restore with resume", sim.State())
			}
			// Retry: the VM has the device; nothing is sent again.
			rec2, err := w.m.RestoreVMM(ctx(t), id, vmmadapter.CloudHypervisor, sim.Socket(), RestoreVMMOptions{SourceURL: url, Resume: true})
			if err != nil {
				t.Fatalf("second RestoreVMM: %v", err)
			}
			if got := sim.CountCalls(http.MethodPut, "/api/v1/vm.restore"); got != 1 {
				t.Errorf("the retry sent vm.restore again (%d)", got)
			}
			if n2, _ := rec2.NIC("eth0"); n2.State != netsetup.NICAttached || n2.VMMDeviceID != snap.VMMDeviceID {
				t.Errorf("after the retry: %+v", n2)
			}
			// restore-args with the snapshot read: net_fds in the body and
			// a note naming restore-vmm; nothing missing.
			nics, err := RestoreNICs(rec2, nil)
			if err != nil {
				t.Fatal(err)
			}
			cfgNets, err := connect.ReadSnapshotNets(vmmadapter.CloudHypervisor, url)
			if err != nil {
				t.Fatal(err)
			}
			MarkSnapshotFds(nics, cfgNets)
			r, err := connect.RestoreArgs(vmmadapter.CloudHypervisor, nics, connect.RestoreOptions{SourceURL: url})
			if err != nil || r.Missing != "" || (tc.fds > 0) != strings.Contains(r.Note, "restore-vmm") || (tc.fds > 0) != strings.Contains(string(r.Body), "net_fds") {
				t.Errorf("restore-args: %+v, %v", r, err)
			}
			sim.Close()
			if got := openFds(t); got != before {
				t.Errorf("%d TUN fds open after the VMM ended, %d before", got, before)
			}
		})
	}
	t.Run("not prepared for a restore", func(t *testing.T) {
		w := newRestoreWorld(t)
		sim := vmmsim.NewCH(t, vmmsim.CHConfig{State: vmmsim.CHNotCreated})
		_, err := w.m.RestoreVMM(ctx(t), "vmnicr-none", vmmadapter.CloudHypervisor, sim.Socket(), RestoreVMMOptions{SourceURL: "file:///nonexistent"})
		var e *Error
		if !errors.As(err, &e) || !strings.Contains(err.Error(), "no record") {
			t.Errorf("RestoreVMM of an unknown sandbox = %v", err)
		}
		if _, err := w.m.RestoreVMM(ctx(t), "vmnicr-none", vmmadapter.Firecracker, sim.Socket(), RestoreVMMOptions{SourceURL: "file:///x"}); err == nil || !strings.Contains(err.Error(), "cloud-hypervisor only") {
			t.Errorf("RestoreVMM for firecracker = %v", err)
		}
	})
}
