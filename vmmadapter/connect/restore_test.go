package connect_test

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/openapi"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

func restoreNICs(renamed bool) []connect.RestoreNIC {
	n := []connect.RestoreNIC{
		{NIC: vmmadapter.NIC{ID: "eth0", Tap: "tapeth0", MAC: "02:00:0a:00:00:05", MTU: 1500, QueuePairs: 1, QueueSize: 256},
			DeviceID: "eth0", SnapshotTap: "tapeth0", BDF: "0000:00:04.0"},
		{NIC: vmmadapter.NIC{ID: "net1", Tap: "tapnet1", MAC: "02:00:0a:00:01:05", QueuePairs: 1},
			DeviceID: "net1", SnapshotTap: "tapnet1", BDF: "0000:01:00.0", Bus: "vmnic-rp0"},
	}
	if renamed {
		n[1].Tap = "tapr0123456789"
	}
	return n
}

func specOrSkip(t *testing.T, name string) *openapi.Spec {
	t.Helper()
	s, err := openapi.LoadNamed(name)
	if err != nil {
		t.Fatalf("spec %s: %v", name, err)
	}
	return s
}

// TestRestoreArgsFirecracker: PUT /snapshot/load, spec-validated, with a
// network override only for the NIC whose TAP has another name.
func TestRestoreArgsFirecracker(t *testing.T) {
	spec := specOrSkip(t, openapi.FirecrackerSpec)
	for _, renamed := range []bool{false, true} {
		r, err := connect.RestoreArgs(vmmadapter.Firecracker, restoreNICs(renamed), connect.RestoreOptions{SnapshotPath: "/s/vm.state", MemPath: "/s/vm.mem", Resume: true})
		if err != nil {
			t.Fatal(err)
		}
		if r.Method != "PUT" || r.Path != "/snapshot/load" {
			t.Errorf("request %s %s", r.Method, r.Path)
		}
		if v := spec.ValidateRequest(r.Method, r.Path, r.Body); len(v) > 0 {
			t.Errorf("renamed=%v: body %s violates the spec: %v", renamed, r.Body, v)
		}
		var body struct {
			NetworkOverrides []struct {
				IfaceID     string `json:"iface_id"`
				HostDevName string `json:"host_dev_name"`
			} `json:"network_overrides"`
		}
		if err := json.Unmarshal(r.Body, &body); err != nil {
			t.Fatal(err)
		}
		switch {
		case !renamed && body.NetworkOverrides != nil:
			t.Errorf("overrides without a renamed TAP: %s", r.Body)
		case renamed && (len(body.NetworkOverrides) != 1 || body.NetworkOverrides[0].IfaceID != "net1" || body.NetworkOverrides[0].HostDevName != "tapr0123456789"):
			t.Errorf("overrides: %s", r.Body)
		}
	}
	if _, err := connect.RestoreArgs(vmmadapter.Firecracker, restoreNICs(false), connect.RestoreOptions{}); err == nil {
		t.Error("no snapshot paths accepted")
	}
}

// TestRestoreArgsCloudHypervisor: vm.restore, spec-validated (net_fds
// through the simulator's gap patch, vmmsim.CHSpecSetup). With the
// snapshot's config known: a NIC CH had on fds gets a net_fds entry and a
// note naming restore-vmm (renamed or not); a renamed NIC CH had by name
// cannot be restored (missing). Unknown: a renamed NIC gets the note.
func TestRestoreArgsCloudHypervisor(t *testing.T) {
	spec := specOrSkip(t, openapi.CloudHypervisorSpec)
	if err := vmmsim.CHSpecSetup(spec); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name           string
		renamed, known bool
		fds            int
		netFds, note   bool
		missing        bool
	}{
		{name: "same names, unknown", note: true},
		{name: "renamed, unknown", renamed: true, note: true},
		{name: "same names, by name", known: true},
		{name: "renamed, by name", renamed: true, known: true, missing: true},
		{name: "renamed, on fds", renamed: true, known: true, fds: 1, netFds: true, note: true},
	} {
		nics := restoreNICs(tc.renamed)
		if tc.known {
			for i := range nics {
				nics[i].SnapshotKnown = true
			}
			nics[1].SnapshotFds = tc.fds
		}
		r, err := connect.RestoreArgs(vmmadapter.CloudHypervisor, nics, connect.RestoreOptions{SourceURL: "file:///s"})
		if err != nil {
			t.Fatal(err)
		}
		if v := spec.ValidateRequest(r.Method, r.Path, r.Body); len(v) > 0 {
			t.Errorf("%s: body %s violates the spec: %v", tc.name, r.Body, v)
		}
		if got := strings.Contains(string(r.Body), `"net_fds":[{"id":"net1","num_fds":1}]`); got != tc.netFds {
			t.Errorf("%s: body %s, net_fds for net1 %v", tc.name, r.Body, tc.netFds)
		}
		if got := strings.Contains(r.Note, "restore-vmm"); got != tc.note {
			t.Errorf("%s: note %q, want restore-vmm named: %v", tc.name, r.Note, tc.note)
		}
		if got := r.Missing != ""; got != tc.missing || tc.missing && !strings.Contains(r.Missing, "tapnet1") {
			t.Errorf("%s: missing %q, want %v naming tapnet1", tc.name, r.Missing, tc.missing)
		}
	}
}

// TestRestoreArgsQEMU: the snapshot's device and netdev ids, the current
// TAPs, each device where it was, and -incoming.
func TestRestoreArgsQEMU(t *testing.T) {
	r, err := connect.RestoreArgs(vmmadapter.QEMU, restoreNICs(true), connect.RestoreOptions{Incoming: "exec:cat /s/vm.mig", RootPorts: 1})
	if err != nil {
		t.Fatal(err)
	}
	a := r.Args
	want := []string{
		"-netdev", "tap,id=netdev-eth0,ifname=tapeth0,script=no,downscript=no,vhost=off",
		"-device", "virtio-net-pci,netdev=netdev-eth0,id=eth0,mac=02:00:0a:00:00:05,host_mtu=1500,rx_queue_size=256,tx_queue_size=256,addr=0x4.0",
		"-netdev", "tap,id=netdev-net1,ifname=tapr0123456789,script=no,downscript=no,vhost=off",
		"-device", "virtio-net-pci,netdev=netdev-net1,id=net1,mac=02:00:0a:00:01:05,bus=vmnic-rp0",
	}
	if len(a) < len(want) || !slices.Equal(a[:len(want)], want) {
		t.Errorf("args %q\nwant prefix %q", a, want)
	}
	if a[len(a)-2] != "-incoming" || a[len(a)-1] != "exec:cat /s/vm.mig" || !slices.Contains(a, "-device") {
		t.Errorf("args end %q", a[len(a)-2:])
	}
}
