package vmmsim

import (
	"net/http"
	"strings"
	"testing"
)

// TestCHRestoreFds: vm.restore with SCM_RIGHTS fds, as Cloud Hypervisor
// takes them (ch_restore.go): the fds must be the sum of net_fds' num_fds
// (else 400 "Bad Request", any version); every NIC the snapshot had on fds
// needs a net_fds entry with its count (ConfigValidation: 400 on main, 500
// up to v53); duplicate ids are refused; net_fds of a NIC the snapshot had
// by name are ignored; a fd that is not a TAP queue fails TUNGETIFF. Every
// refused restore leaves no VM and closes the fds; the requests are
// spec-valid (net_fds through the recorded gap). The snapshot comes from
// the snapshot directory's config.json.
func TestCHRestoreFds(t *testing.T) {
	byName := []CHNet{{ID: "n1", Tap: "tapa", MAC: "02:00:00:00:00:01", NumQueues: 2, QueueSize: 256}}
	onFds := []CHNet{{ID: "n1", Tap: "tapa", MAC: "02:00:00:00:00:01", NumQueues: 4, QueueSize: 256, Fds: 2}}
	for _, tc := range []struct {
		name    string
		version int
		snap    []CHNet
		netFds  string // the net_fds JSON ("" for none)
		fds     int
		status  int
		msg     string
		state   CHState
	}{
		{"fds without net_fds", 53, byName, "", 1, 400, "Bad Request", CHNotCreated},
		{"fewer fds than net_fds", 53, onFds, `[{"id":"n1","num_fds":2}]`, 1, 400, "Bad Request", CHNotCreated},
		{"missing required id v53", 53, onFds, "", 0, 500, "Net id n1 is associated with FDs and is required", CHNotCreated},
		{"missing required id main", CHMain, onFds, `[{"id":"other","num_fds":2}]`, 2, 400, "Net id n1 is associated with FDs and is required", CHNotCreated},
		{"count mismatch", CHMain, onFds, `[{"id":"n1","num_fds":1}]`, 1, 400, "Number of Net FDs passed for 'n1' during Restore: 1. Expected: 2", CHNotCreated},
		{"duplicate id main", CHMain, onFds, `[{"id":"n1","num_fds":1},{"id":"n1","num_fds":1}]`, 2, 409, "Identifier n1 is not unique", CHNotCreated},
		{"not a TAP", 53, onFds, `[{"id":"n1","num_fds":2}]`, 2, 500, "Unable to get the TAP interface name", CHNotCreated},
		{"net_fds of a NIC by name ignored", 53, byName, `[{"id":"n1","num_fds":1}]`, 1, 204, "", CHRunning},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := WriteCHSnapshotConfig(dir, tc.snap); err != nil {
				t.Fatal(err)
			}
			s := NewCH(t, CHConfig{Version: tc.version, State: CHNotCreated})
			files := devNulls(t, tc.fds)
			before := countFds(t)
			body := `{"source_url":"file://` + dir + `","resume":true`
			if tc.netFds != "" {
				body += `,"net_fds":` + tc.netFds
			}
			body += "}"
			status, got := rawWithFds(t, s.Socket(), http.MethodPut, "/api/v1/vm.restore", body, files)
			if status != tc.status || !strings.Contains(got, tc.msg) {
				t.Fatalf("vm.restore with %d fds = %d %s; want %d with %q", tc.fds, status, got, tc.status, tc.msg)
			}
			if st := s.State(); st != tc.state {
				t.Errorf("state %s after the restore, want %s", st, tc.state)
			}
			if v := s.Violations(); len(v) > 0 {
				t.Errorf("spec violations: %v", v)
			}
			if tc.netFds != "" && (len(s.GapHits()) != 1 || !strings.Contains(s.GapHits()[0], "net_fds")) {
				t.Errorf("gap hits %v, want the net_fds one", s.GapHits())
			}
			if got := countFds(t); got != before {
				t.Errorf("%d fds open after the restore, %d before: the simulator kept fds it did not use", got, before)
			}
			if tc.status == 204 {
				if n := s.Net(); len(n) != 1 || n[0].Tap != "tapa" || n[0].Fds != 0 {
					t.Errorf("restored net %+v, want n1 reopened by name on tapa", n)
				}
			}
		})
	}
	t.Run("fds in the body are a spec violation", func(t *testing.T) {
		dir := t.TempDir()
		if err := WriteCHSnapshotConfig(dir, byName); err != nil {
			t.Fatal(err)
		}
		s := NewCH(t, CHConfig{State: CHNotCreated})
		rawWithFds(t, s.Socket(), http.MethodPut, "/api/v1/vm.restore", `{"source_url":"file://`+dir+`","net_fds":[{"id":"n1","num_fds":0,"fds":[3]}]}`, nil)
		if v := s.Violations(); len(v) != 1 || !strings.Contains(v[0].String(), `"fds"`) {
			t.Errorf("violations %v, want the body's fds", v)
		}
	})
	t.Run("a VM exists", func(t *testing.T) {
		s := NewCH(t, CHConfig{Snapshot: byName})
		files := devNulls(t, 1)
		before := countFds(t)
		status, got := rawWithFds(t, s.Socket(), http.MethodPut, "/api/v1/vm.restore", `{"source_url":"file:///snap","net_fds":[{"id":"n1","num_fds":1}]}`, files)
		if status != 500 || !strings.Contains(got, "already created") {
			t.Fatalf("vm.restore on a running VM = %d %s", status, got)
		}
		if got := countFds(t); got != before {
			t.Errorf("%d fds open after the refused restore, %d before", got, before)
		}
	})
}
