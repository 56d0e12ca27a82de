package vmmsim

import (
	"fmt"
)

// loadSnapshot is PUT /snapshot/load: it restores the network of
// FCConfig.Snapshot with the request's network_overrides applied.
// Modelled on Firecracker's src/vmm/src/rpc_interface.rs (load_snapshot is
// refused once boot resources are configured, or after start) and
// src/vmm/src/persist.rs (each override's iface_id must name a network
// device of the snapshot, UnknownNetworkDevice otherwise; network_overrides
// exists from v1.12.0, firecracker #4731, and older versions reject it as
// an unknown field). The fault texts of the override errors follow the
// error kinds; their wording is not Firecracker's to the letter.
func (f *FC) loadSnapshot(w *reply, body []byte) {
	known := []string{"snapshot_path", "mem_file_path", "mem_backend", "enable_diff_snapshots", "track_dirty_pages", "resume_vm"}
	if f.atLeast(1, 12) {
		known = append(known, "network_overrides")
	}
	var req struct {
		SnapshotPath string `json:"snapshot_path"`
		MemFilePath  string `json:"mem_file_path"`
		MemBackend   *struct {
			BackendType string `json:"backend_type"`
			BackendPath string `json:"backend_path"`
		} `json:"mem_backend"`
		ResumeVM         bool `json:"resume_vm"`
		NetworkOverrides []struct {
			IfaceID     string `json:"iface_id"`
			HostDevName string `json:"host_dev_name"`
		} `json:"network_overrides"`
		Diff  bool `json:"enable_diff_snapshots"`
		Dirty bool `json:"track_dirty_pages"`
	}
	if msg := strictDecode(body, known, []string{"snapshot_path"}, &req); msg != "" {
		fault(w, msg)
		return
	}
	if f.state != FCNotStarted || len(f.ifaces) > 0 {
		fault(w, "Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		return
	}
	if (req.MemBackend == nil) == (req.MemFilePath == "") {
		fault(w, "Load snapshot error: either `mem_backend` or `mem_file_path` must be present.")
		return
	}
	ifaces := append([]FCNet(nil), f.cfg.Snapshot...)
	for _, o := range req.NetworkOverrides {
		found := false
		for i := range ifaces {
			if ifaces[i].IfaceID == o.IfaceID {
				ifaces[i].HostDevName = o.HostDevName
				found = true
			}
		}
		if !found {
			fault(w, fmt.Sprintf("Load snapshot error: Failed to restore from snapshot: UnknownNetworkDevice: no network device with iface_id %s in the snapshot", o.IfaceID))
			return
		}
	}
	for _, n := range ifaces {
		if f.held[n.HostDevName] {
			f.tapBusy(w, n.HostDevName)
			return
		}
	}
	for i := range ifaces {
		ifaces[i].GuestBound = true
	}
	f.ifaces = ifaces
	f.state = FCPaused
	if req.ResumeVM {
		f.state = FCRunning
	}
	w.empty(204)
}
