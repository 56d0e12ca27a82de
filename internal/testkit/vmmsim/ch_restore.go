package vmmsim

import (
	"encoding/json"
	"strings"
)

// restore is PUT /api/v1/vm.restore {source_url, resume}: the VM of
// CHConfig.Snapshot comes back paused (running with resume), each NIC on
// the TAP named in the snapshot's config, opened as vm.add-net would
// (openTap). Modelled on Cloud Hypervisor's vmm/src/lib.rs vm_restore
// (refused when a VM is already created: VmAlreadyCreated; the config is
// the snapshot's, net fds only from net_fds, which this simulator does not
// take) and vmm/src/api/http/http_endpoint.rs (VmRestore). The message
// list follows CH's error chain shape; the texts are not CH's to the
// letter.
func (c *CH) restore(w *reply, body []byte) {
	var req struct {
		SourceURL string `json:"source_url"`
		Prefault  bool   `json:"prefault"`
		Resume    bool   `json:"resume"`
		NetFDs    []any  `json:"net_fds"`
	}
	if err := json.Unmarshal(body, &req); err != nil || req.SourceURL == "" {
		c.fail(w, "bad-request", "Error from API", "The VM could not be restored", "Invalid restore config: source_url is required")
		return
	}
	if !strings.HasPrefix(req.SourceURL, "file://") {
		c.fail(w, "other", "Error from API", "The VM could not be restored", "Invalid source URL: only file:// is supported")
		return
	}
	if c.state != CHNotCreated {
		c.fail(w, "other", "Error from API", "The VM could not be restored", "The VM is already created")
		return
	}
	if len(req.NetFDs) > 0 {
		c.fail(w, "other", "Error from API", "The VM could not be restored", "net_fds are not simulated")
		return
	}
	for _, n := range c.cfg.Snapshot {
		if msgs := c.openTap(n, false); msgs != nil {
			c.fail(w, "other", append([]string{"Error from API", "The VM could not be restored"}, msgs[1:]...)...)
			return
		}
	}
	c.net = append([]CHNet(nil), c.cfg.Snapshot...)
	for _, n := range c.net {
		c.attach(n)
	}
	c.state = CHPaused
	if req.Resume {
		c.state = CHRunning
	}
	w.empty(204)
}
