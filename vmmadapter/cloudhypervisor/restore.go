package cloudhypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/internal/apiclient"
)

// ErrVMExists: vm.restore was refused because the VMM has a VM already
// (VmError::VmAlreadyCreated, vmm/src/lib.rs vm_restore).
var ErrVMExists = errors.New("the VMM has a VM already: vm.restore needs a VMM without one")

// RestoreNet is one NIC of a vm.restore that Cloud Hypervisor gets new TAP
// fds for: its device id in the snapshot and the TAP's queue fds (one per
// queue pair).
type RestoreNet struct {
	ID  string
	Fds []*os.File
}

// RestoreConfig is a vm.restore request (vmm/src/config.rs RestoreConfig).
type RestoreConfig struct {
	// SourceURL is the snapshot directory as file:///dir.
	SourceURL string
	Prefault  bool
	Resume    bool
	// Nets are the NICs the snapshot had backed by TAP fds, each with its
	// new fds (net_fds).
	Nets []RestoreNet
}

type restoredNet struct {
	ID     string `json:"id"`
	NumFds int    `json:"num_fds"`
}

type restoreBody struct {
	SourceURL string        `json:"source_url"`
	Prefault  bool          `json:"prefault,omitempty"`
	Resume    bool          `json:"resume,omitempty"`
	NetFds    []restoredNet `json:"net_fds,omitempty"`
}

func (rc RestoreConfig) body() restoreBody {
	b := restoreBody{SourceURL: rc.SourceURL, Prefault: rc.Prefault, Resume: rc.Resume}
	for _, n := range rc.Nets {
		b.NetFds = append(b.NetFds, restoredNet{ID: n.ID, NumFds: len(n.Fds)})
	}
	return b
}

// files are the fds of rc in the order Cloud Hypervisor hands them out:
// the request's fds go to net_fds' entries in turn, each taking num_fds
// (vmm/src/api/http/http_endpoint.rs, PutHandler for VmRestore and
// fds_helper::attach_fds_to_cfgs).
func (rc RestoreConfig) files() []*os.File {
	var out []*os.File
	for _, n := range rc.Nets {
		out = append(out, n.Fds...)
	}
	return out
}

func (rc RestoreConfig) validate() error {
	if !strings.HasPrefix(rc.SourceURL, "file://") || len(rc.SourceURL) == len("file://") {
		return fmt.Errorf("cloud-hypervisor restore: source URL %q: want file:///DIR (the snapshot directory)", rc.SourceURL)
	}
	seen := map[string]bool{}
	for _, n := range rc.Nets {
		switch {
		case n.ID == "":
			return errors.New("cloud-hypervisor restore: a net_fds entry without a device id")
		case seen[n.ID]:
			return fmt.Errorf("cloud-hypervisor restore: device %q twice in net_fds", n.ID)
		case len(n.Fds) == 0:
			return fmt.Errorf("cloud-hypervisor restore: device %q without fds", n.ID)
		}
		for i, f := range n.Fds {
			if f == nil {
				return fmt.Errorf("cloud-hypervisor restore: device %q: fd %d is nil", n.ID, i)
			}
		}
		seen[n.ID] = true
	}
	if len(rc.files()) > apiclient.MaxFiles {
		return fmt.Errorf("cloud-hypervisor restore: %d fds: at most %d fit in one request", len(rc.files()), apiclient.MaxFiles)
	}
	return nil
}

// RestoreBody is the vm.restore body of rc (for tools and tests; the fds
// are not part of it).
func RestoreBody(rc RestoreConfig) (json.RawMessage, error) {
	if err := rc.validate(); err != nil {
		return nil, err
	}
	return json.Marshal(rc.body())
}

// Restore sends PUT /api/v1/vm.restore: the VMM, which must have no VM yet,
// loads the snapshot of rc.SourceURL. The fds of rc.Nets ride with the
// request as SCM_RIGHTS (apiclient.CallWithFiles, with the SO_PEERCRED
// check of Options.PeerPID), in net_fds' order. Cloud Hypervisor gives
// them to the NICs that the snapshot had backed by fds; those NICs need
// them (a missing id or another count is refused: RestoreConfig::validate,
// vmm/src/config.rs), while a NIC the snapshot opened by name is reopened
// by that name (vmm/src/lib.rs vm_restore updates only fd-backed NICs).
// The caller keeps its copies of the fds and closes them when Restore
// returns. On failure CH deletes the half-restored VM, so a retry is safe.
func (a *Adapter) Restore(ctx context.Context, rc RestoreConfig) error {
	if err := rc.validate(); err != nil {
		return err
	}
	files := rc.files()
	what := fmt.Sprintf("restore the VM from %s", rc.SourceURL)
	if len(files) > 0 {
		what = fmt.Sprintf("restore the VM from %s (%d TAP fds for %d NICs)", rc.SourceURL, len(files), len(rc.Nets))
	}
	path := apiPrefix + "/vm.restore"
	call := http.MethodPut + " " + path
	resp, err := a.c.CallWithFiles(ctx, http.MethodPut, path, rc.body(), files)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if resp.OK() {
		return nil
	}
	apiErr := a.c.NewAPIError(call, resp)
	switch {
	case resp.Status == http.StatusBadRequest && apiErr.Contains("Bad Request") && len(apiErr.Chain) <= 1:
		// http_endpoint.rs: the fds of the request are not the sum of
		// net_fds' num_fds (HttpError::BadRequest).
		return fmt.Errorf("%s: Cloud Hypervisor received another number of fds than net_fds announce (%d): %w: %w", what, len(files), vmmadapter.ErrFdCount, apiErr)
	case apiErr.Contains("is associated with FDs and is required"):
		// RestoreMissingRequiredNetId.
		return fmt.Errorf("%s: the snapshot has a NIC backed by TAP fds that got none: %w: %w", what, vmmadapter.ErrFdCount, apiErr)
	case apiErr.Contains("Number of Net FDs passed"):
		// RestoreNetFdCountMismatch.
		return fmt.Errorf("%s: %w: %w", what, vmmadapter.ErrFdCount, apiErr)
	case apiErr.Contains("already created", "VmAlreadyCreated"):
		return fmt.Errorf("%s: %w: %w", what, ErrVMExists, apiErr)
	case apiErr.Contains("multiqueue support"):
		return fmt.Errorf("%s: %w: %w", what, vmmadapter.ErrTapQueueMismatch, apiErr)
	case apiErr.Contains("resource busy", "os error 16", "EBUSY"):
		return fmt.Errorf("%s: %w: %w", what, vmmadapter.ErrTapBusy, apiErr)
	}
	return fmt.Errorf("%s: %w", what, apiErr)
}

// SnapshotNet is one NIC of a Cloud Hypervisor snapshot's VM config.
type SnapshotNet struct {
	ID, Tap   string
	NumQueues int
	// Fds is how many TAP fds the NIC was backed by (0: CH opened the TAP
	// by name, and reopens it by that name at restore).
	Fds int
}

// snapshotConfigFile is the VM config a snapshot directory holds
// (vmm/src/migration/mod.rs SNAPSHOT_CONFIG_FILE, read by recv_vm_config).
const snapshotConfigFile = "config.json"

// ReadSnapshotNets reads the NICs of the snapshot at sourceURL
// (file:///dir) from dir/config.json, the VmConfig Cloud Hypervisor saved:
// its net list with each NIC's id, TAP and, for one backed by fds, the
// fds' count (the numbers are meaningless after the snapshot,
// vmm/src/vm_config.rs deserialize_netconfig_fds; the count is what
// RestoreConfig::validate compares).
func ReadSnapshotNets(sourceURL string) ([]SnapshotNet, error) {
	dir, ok := strings.CutPrefix(sourceURL, "file://")
	if !ok || dir == "" {
		return nil, fmt.Errorf("snapshot %q: want file:///DIR", sourceURL)
	}
	path := filepath.Join(dir, snapshotConfigFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the snapshot's VM config: %w", err)
	}
	var cfg struct {
		Net []struct {
			ID        string `json:"id"`
			Tap       string `json:"tap"`
			NumQueues *int   `json:"num_queues"`
			Fds       []int  `json:"fds"`
		} `json:"net"`
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("snapshot VM config %s: %w", path, err)
	}
	nets := make([]SnapshotNet, 0, len(cfg.Net))
	for _, n := range cfg.Net {
		q := 2 // vm_config.rs default_netconfig_num_queues
		if n.NumQueues != nil {
			q = *n.NumQueues
		}
		nets = append(nets, SnapshotNet{ID: n.ID, Tap: n.Tap, NumQueues: q, Fds: len(n.Fds)})
	}
	return nets, nil
}
