package probe

// CHSocketName is the API socket `vmmprobe ch` serves in $VMNIC_RUNTIME_DIR.
const CHSocketName = "ch.sock"

// CHStatusName is the file `vmmprobe ch` keeps its status in, in
// $VMNIC_RUNTIME_DIR (so the host reads it at the same path).
const CHStatusName = "vmmprobe-ch.json"

// CHStatus is what `vmmprobe ch` (the Cloud Hypervisor simulator serving
// its API in the VMM container, with a stand-in guest on every NIC it was
// handed TAP fds for) reports. It rewrites the file on every change.
type CHStatus struct {
	// Instance is random per process: a new VMM container writes a new one.
	Instance string `json:"instance"`
	Socket   string `json:"socket"`
	PID      int    `json:"pid"` // in the container's pid namespace
	// SpecLoaded: every request is validated against the Cloud Hypervisor
	// API spec (shipped in the image); SpecError says why not.
	SpecLoaded bool     `json:"spec_loaded"`
	SpecError  string   `json:"spec_error,omitempty"`
	Violations []string `json:"violations,omitempty"`
	Nets       []CHNet  `json:"nets"`
	Errors     []string `json:"errors,omitempty"`
	// Closed: the simulator stopped (SIGTERM) and closed its fds.
	Closed bool `json:"closed,omitempty"`
}

// CHNet is one NIC of the simulated VM.
type CHNet struct {
	ID  string `json:"id"`
	Tap string `json:"tap"` // with fds: the name learned by TUNGETIFF
	MAC string `json:"mac"`
	Fds int    `json:"fds"` // TAP fds that came with vm.add-net (0: by name)
	// Guest is the stand-in guest answering ARP and ping on the NIC's fd.
	Guest *Guest `json:"guest,omitempty"`
}

// Guest is the state of a stand-in guest.
type Guest struct {
	IP           string `json:"ip"` // from the NetSetup file, by the NIC's MAC
	Tap          string `json:"tap"`
	Error        string `json:"error,omitempty"`
	FramesIn     uint64 `json:"frames_in"`
	ARPAnswered  uint64 `json:"arp_answered"`
	EchoAnswered uint64 `json:"echo_answered"`
}
