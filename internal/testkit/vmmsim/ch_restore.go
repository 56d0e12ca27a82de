package vmmsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmnic/vmnic/internal/testkit/openapi"
)

// chSnapshotConfigFile is the VM config a Cloud Hypervisor snapshot
// directory holds (vmm/src/migration/mod.rs SNAPSHOT_CONFIG_FILE).
const chSnapshotConfigFile = "config.json"

// chRestoreGap is the spec-vs-server gap of vm.restore's body: the server
// reads RestoreConfig.net_fds (vmm/src/config.rs RestoreConfig,
// RestoredNetConfig {id, num_fds}) but the YAML does not list it
// (reference §0). The simulator's spec gets the field (CHSpecSetup) and
// every request that uses it is recorded as a gap hit.
const chRestoreGap = "RestoreConfig.net_fds is not in the YAML (reference §0)"

// CHSpecSetup adds to the Cloud Hypervisor spec what the server reads and
// the YAML lacks, as far as vmnic sends it: RestoreConfig.net_fds as
// vmm/src/config.rs RestoredNetConfig has it. Its fds field stays out, as
// NetConfig.fds does: fd numbers in a body are discarded by the server
// (deserialize_restorednetconfig_fds), only SCM_RIGHTS fds count, so vmnic
// never sends them.
// Conformance tests that load the spec themselves apply it too.
func CHSpecSetup(s *openapi.Spec) error {
	return s.AddProperty("RestoreConfig", "net_fds", map[string]any{
		"type": "array",
		"items": map[string]any{
			"type":     "object",
			"required": []any{"id"},
			"properties": map[string]any{
				"id":      map[string]any{"type": "string"},
				"num_fds": map[string]any{"type": "integer", "minimum": float64(0)},
			},
		},
	})
}

// WriteCHSnapshotConfig writes dir/config.json as a Cloud Hypervisor
// snapshot holds it (the VmConfig, vmm/src/vm_config.rs), with nets as its
// net list. A NIC with Fds > 0 was backed by TAP fds: its "fds" are
// serialised (the numbers mean nothing after the snapshot, the count does;
// vm_config.rs deserialize_netconfig_fds). vm.restore with
// file://<dir> on a simulator without CHConfig.Snapshot reads it.
func WriteCHSnapshotConfig(dir string, nets []CHNet) error {
	list := make([]map[string]any, 0, len(nets))
	for _, n := range nets {
		e := map[string]any{"id": n.ID, "mac": n.MAC, "num_queues": n.NumQueues, "queue_size": n.QueueSize}
		if n.Tap != "" {
			e["tap"] = n.Tap
		}
		if n.Fds > 0 {
			fds := make([]int, n.Fds)
			for i := range fds {
				fds[i] = 3 + i
			}
			e["fds"] = fds
		}
		list = append(list, e)
	}
	b, err := json.Marshal(map[string]any{
		"cpus":    map[string]any{"boot_vcpus": 2, "max_vcpus": 2},
		"memory":  map[string]any{"size": 512 << 20},
		"payload": map[string]any{"kernel": "/simulated/vmlinux"},
		"net":     list,
	})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, chSnapshotConfigFile), b, 0o600)
}

// snapshotNets is the net list of the snapshot at sourceURL: CHConfig.Snapshot
// when set, else the snapshot directory's config.json.
func (c *CH) snapshotNets(sourceURL string) ([]CHNet, error) {
	if c.cfg.Snapshot != nil {
		return append([]CHNet(nil), c.cfg.Snapshot...), nil
	}
	dir := strings.TrimPrefix(sourceURL, "file://")
	data, err := os.ReadFile(filepath.Join(dir, chSnapshotConfigFile))
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Net []struct {
			ID        string `json:"id"`
			Tap       string `json:"tap"`
			MAC       string `json:"mac"`
			NumQueues int    `json:"num_queues"`
			QueueSize int    `json:"queue_size"`
			Fds       []int  `json:"fds"`
		} `json:"net"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, err
	}
	var nets []CHNet
	for _, n := range cfg.Net {
		nets = append(nets, CHNet{ID: n.ID, Tap: n.Tap, MAC: n.MAC, NumQueues: n.NumQueues, QueueSize: n.QueueSize, Fds: len(n.Fds)})
	}
	return nets, nil
}

// restore is PUT /api/v1/vm.restore {source_url, prefault, resume,
// net_fds}: the VM of the snapshot comes back paused (running with
// resume). Modelled on Cloud Hypervisor:
//   - vmm/src/api/http/http_endpoint.rs (PutHandler for VmRestore): the
//     request's SCM_RIGHTS fds must be exactly the sum of net_fds' num_fds
//     (else HttpError::BadRequest: 400 "Bad Request", whatever the
//     version), and are handed out in order: the first num_fds to the first
//     net_fds entry, and so on (fds_helper attach_fds_to_cfgs);
//   - vmm/src/lib.rs vm_restore: refused when a VM exists
//     (VmAlreadyCreated); the config is the snapshot's; RestoreConfig::validate
//     (vmm/src/config.rs) then requires, for every NIC the snapshot had
//     backed by fds, a net_fds entry of its id (RestoreMissingRequiredNetId)
//     with as many fds as it had (RestoreNetFdCountMismatch), and unique ids
//     (IdentifierNotUnique); net_fds of other ids are ignored ("Ignoring
//     unused 'net_fds'"), and a NIC the snapshot opened by name is reopened
//     by that name whatever net_fds says;
//   - the devices are made again: a NIC on fds learns its TAP from them
//     (Net::from_tap_fds, TUNGETIFF; checkFds), one by name opens it
//     (openTap). A failure deletes the half-restored VM (vm_delete).
//
// The message list follows CH's error chain shape; the texts of the
// validation errors are CH's, the others are not to the letter.
func (c *CH) restore(w *reply, body []byte) {
	const top = "The VM could not be restored"
	var req struct {
		SourceURL string `json:"source_url"`
		Prefault  bool   `json:"prefault"`
		Resume    bool   `json:"resume"`
		NetFDs    []struct {
			ID     string `json:"id"`
			NumFds int    `json:"num_fds"`
		} `json:"net_fds"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.SourceURL == "" {
		c.fail(w, "bad-request", "Error from API", top, "Invalid restore config: source_url is required")
		return
	}
	total := 0
	for _, n := range req.NetFDs {
		total += n.NumFds
	}
	if req.NetFDs != nil {
		c.gapHits = append(c.gapHits, fmt.Sprintf("PUT /api/v1/vm.restore (%s)", chRestoreGap))
	}
	files := w.files
	if len(files) != total {
		// "Expected {expected} FDs in VmRestore request, received {n}" is
		// only logged; the answer is HttpError::BadRequest.
		w.json(http.StatusBadRequest, jsonList("Bad Request"))
		return
	}
	if !strings.HasPrefix(req.SourceURL, "file://") {
		c.fail(w, "other", "Error from API", top, "Invalid source URL: only file:// is supported")
		return
	}
	if c.state != CHNotCreated {
		c.fail(w, "other", "Error from API", top, "The VM is already created")
		return
	}
	nets, err := c.snapshotNets(req.SourceURL)
	if err != nil {
		c.fail(w, "other", "Error from API", top, "Error restoring VM", "Error receiving the VM configuration", err.Error())
		return
	}
	// The fds of each net_fds entry, in the request's order.
	given := map[string][]*os.File{}
	next := 0
	for _, n := range req.NetFDs {
		if _, dup := given[n.ID]; dup {
			c.fail(w, "config-duplicate", "Error from API", top, "Failed to validate config", fmt.Sprintf("Identifier %s is not unique", n.ID))
			return
		}
		given[n.ID] = files[next : next+n.NumFds]
		next += n.NumFds
	}
	invalid := func(msg string) {
		c.fail(w, "config-invalid", "Error from API", top, "Failed to validate config", msg)
	}
	for _, n := range nets {
		if n.Fds == 0 {
			continue
		}
		got, ok := given[n.ID]
		switch {
		case !ok:
			invalid(fmt.Sprintf("Net id %s is associated with FDs and is required", n.ID))
			return
		case len(got) != n.Fds:
			invalid(fmt.Sprintf("Number of Net FDs passed for '%s' during Restore: %d. Expected: %d", n.ID, len(got), n.Fds))
			return
		}
	}
	restored := make([]CHNet, 0, len(nets))
	for _, n := range nets {
		if n.Fds > 0 {
			if msgs := c.checkFds(&n, given[n.ID]); msgs != nil {
				c.fail(w, "other", append([]string{"Error from API", top}, msgs[2:]...)...)
				return
			}
		} else if msgs := c.openTap(n, false); msgs != nil {
			c.fail(w, "other", append([]string{"Error from API", top}, msgs[2:]...)...)
			return
		}
		restored = append(restored, n)
	}
	c.net = restored
	for _, n := range c.net {
		c.attach(n)
		if n.Fds > 0 {
			c.files[n.ID] = given[n.ID]
		}
	}
	// Every fd is the VMM's now: those of the restored NICs are kept, the
	// ignored ones (net_fds of ids not backed by fds) closed.
	kept := map[*os.File]bool{}
	for _, f := range c.files {
		for _, x := range f {
			kept[x] = true
		}
	}
	for _, f := range files {
		if !kept[f] {
			f.Close()
		}
	}
	w.files = nil
	c.state = CHPaused
	if req.Resume {
		c.state = CHRunning
	}
	w.empty(http.StatusNoContent)
}
