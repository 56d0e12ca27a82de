package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
)

// NetConf is vmnic's network configuration (one entry of a conflist).
// Unknown keys are ignored, as CNI convention has it.
type NetConf struct {
	types.PluginConf

	// StateDir holds the NetSetup records (default /var/lib/vmnic).
	StateDir string `json:"stateDir,omitempty"`
	// Fsync makes every record write durable across a power loss (fsync of
	// the file and the directory). Off by default: writes are atomic either
	// way, and what a record describes does not survive a power loss.
	Fsync bool `json:"fsync,omitempty"`
	// Backend is "cni" (default: TAP joined to the veth by tc redirect in
	// the sandbox netns) or "bridge" (TAP as a port of a host bridge).
	Backend string `json:"backend,omitempty"`
	// Bridge is the host bridge of the bridge backend.
	Bridge string `json:"bridge,omitempty"`
	// DataPath is how the cni backend joins veth and TAP: "auto" (default:
	// the cls_bpf redirect where the kernel can run it, else tc u32 +
	// mirred), "bpf" (fail the ADD where it cannot) or "u32". Unset: the
	// VMNIC_DATAPATH environment variable, else auto.
	DataPath string `json:"dataPath,omitempty"`
	// Queues is the number of TAP queue pairs (> 1 makes a multiqueue TAP;
	// the VMM must then use num_queues = 2 × queues).
	Queues int `json:"queues,omitempty"`
	// QueueSize is the virtqueue size recorded for the VMM (0 = 256).
	QueueSize int `json:"queueSize,omitempty"`
	// TapOwner and TapGroup (uid/gid, or user/group name) own the TAP, so an
	// unprivileged VMM can open it. Unset: no owner/group is set.
	TapOwner *ID `json:"tapOwner,omitempty"`
	TapGroup *ID `json:"tapGroup,omitempty"`
	// TapHandoff is how the VMM gets the TAP: "fd" (vmnic opens the TAP's
	// queues and passes the fds over the VMM's control socket; the VMM
	// needs no /dev/net/tun, no CAP_NET_ADMIN, no tapOwner), "name" (the
	// VMM opens it by name in its netns) or "auto" (default: fd where the
	// VMM takes fds, Cloud Hypervisor and QEMU; name for Firecracker).
	TapHandoff string `json:"tapHandoff,omitempty"`
	// LogFile receives the plugin's log (default stderr); never stdout.
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is debug, info, warn (default) or error.
	LogLevel string `json:"logLevel,omitempty"`
	// VMMTimeout bounds each VMM API call; RemoveTimeout bounds the wait for
	// the guest to eject a NIC. Go durations ("5s") or seconds; unset means
	// vmmadapter.DefaultCallTimeout and vmmadapter.DefaultRemoveTimeout.
	VMMTimeout    Duration `json:"vmmTimeout,omitempty"`
	RemoveTimeout Duration `json:"removeTimeout,omitempty"`
	// VMMSocketDirs are directories (besides /run/vmnic and /var/lib/vmnic,
	// and those in $VMNIC_VMM_SOCKET_DIRS) a VMM's API socket may be in:
	// vmnic dials no socket outside them.
	VMMSocketDirs []string `json:"vmmSocketDirs,omitempty"`

	// LegacyAttachments is the GC key of the released spec-1.1.0 text.
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`
}

// ID is a uid or gid: a JSON number, or a string holding a number or a
// user/group name.
type ID struct {
	Value int
	Name  string
}

// UnmarshalJSON accepts 107, "107" or "qemu".
func (i *ID) UnmarshalJSON(b []byte) error {
	var n int64
	if err := json.Unmarshal(b, &n); err == nil {
		if n < 0 || n > 1<<32-2 {
			return fmt.Errorf("id %d out of range", n)
		}
		i.Value = int(n)
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a number or a name, got %s", b)
	}
	if s == "" {
		return fmt.Errorf("empty id")
	}
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		i.Value = int(n)
		return nil
	}
	i.Name = s
	i.Value = -1
	return nil
}

// resolve turns a name into an id (group when group is true).
func (i *ID) resolve(group bool) (int, error) {
	if i == nil {
		return -1, nil
	}
	if i.Name == "" {
		return i.Value, nil
	}
	var idStr string
	if group {
		g, err := user.LookupGroup(i.Name)
		if err != nil {
			return -1, err
		}
		idStr = g.Gid
	} else {
		u, err := user.Lookup(i.Name)
		if err != nil {
			return -1, err
		}
		idStr = u.Uid
	}
	n, err := strconv.Atoi(idStr)
	if err != nil {
		return -1, err
	}
	return n, nil
}

// Duration is a time.Duration read from "5s" or a number of seconds.
type Duration struct{ time.Duration }

// UnmarshalJSON accepts a Go duration string or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err == nil {
		if f < 0 {
			return fmt.Errorf("negative duration %v", f)
		}
		d.Duration = time.Duration(f * float64(time.Second))
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration like \"5s\" or seconds, got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %s", s)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// SupportedVersions are the CNI spec versions vmnic speaks.
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// Resolved is a validated conf with derived values.
type Resolved struct {
	*NetConf
	Backend  netsetup.Backend
	Handoff  netsetup.Handoff // "" = auto
	DataPath hostnet.DataPathMode
	TapOwner int
	TapGroup int
	Level    slog.Level
}

// parseConf decodes and validates stdin. Errors carry the CNI code: 6 for
// JSON that does not decode, 7 for values that are not valid.
func parseConf(stdin []byte) (*Resolved, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode the vmnic network configuration", fieldError(stdin, err).Error())
	}
	r := &Resolved{NetConf: conf}
	bad := func(format string, args ...any) error {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, args...), "")
	}
	if conf.CNIVersion == "" {
		return nil, bad("cniVersion is missing: vmnic supports %s", strings.Join(SupportedVersions, ", "))
	}
	switch conf.Backend {
	case "", string(netsetup.BackendCNI):
		r.Backend = netsetup.BackendCNI
		if conf.Bridge != "" {
			return nil, bad("bridge %q is set, but backend is %q: set \"backend\": \"bridge\" to use a host bridge", conf.Bridge, netsetup.BackendCNI)
		}
	case string(netsetup.BackendBridge):
		r.Backend = netsetup.BackendBridge
		if conf.Bridge == "" {
			return nil, bad("backend \"bridge\" needs \"bridge\": the host bridge the TAPs join")
		}
		if len(conf.Bridge) > hostnet.MaxIfNameLen || strings.ContainsAny(conf.Bridge, "/: \t") {
			return nil, bad("bridge %q is not a valid interface name", conf.Bridge)
		}
	default:
		return nil, bad("backend %q: must be \"cni\" or \"bridge\"", conf.Backend)
	}
	dp, err := hostnet.ParseDataPathMode(conf.DataPath)
	if err != nil {
		return nil, bad("%v", err)
	}
	if r.Backend == netsetup.BackendBridge && dp != "" && dp != hostnet.ModeAuto {
		return nil, bad("dataPath %q applies to the cni backend only: the bridge backend's TAP is a bridge port", conf.DataPath)
	}
	r.DataPath = dp
	if conf.Queues < 0 || conf.Queues > hostnet.MaxQueuePairs {
		return nil, bad("queues %d: must be 1 to %d queue pairs", conf.Queues, hostnet.MaxQueuePairs)
	}
	if conf.Queues == 0 {
		conf.Queues = 1
	}
	if err := sandbox.ValidateQueueSize(conf.QueueSize); err != nil {
		return nil, bad("%v", err)
	}
	if r.Handoff, err = sandbox.ParseHandoff(conf.TapHandoff); err != nil {
		return nil, bad("%v", err)
	}
	if r.TapOwner, err = conf.TapOwner.resolve(false); err != nil {
		return nil, bad("tapOwner %q: %v", conf.TapOwner.Name, err)
	}
	if r.TapGroup, err = conf.TapGroup.resolve(true); err != nil {
		return nil, bad("tapGroup %q: %v", conf.TapGroup.Name, err)
	}
	switch strings.ToLower(conf.LogLevel) {
	case "", "warn", "warning":
		r.Level = slog.LevelWarn
	case "debug":
		r.Level = slog.LevelDebug
	case "info":
		r.Level = slog.LevelInfo
	case "error":
		r.Level = slog.LevelError
	default:
		return nil, bad("logLevel %q: must be debug, info, warn or error", conf.LogLevel)
	}
	for _, d := range conf.VMMSocketDirs {
		if !filepath.IsAbs(d) {
			return nil, bad("vmmSocketDirs: %q is not an absolute path", d)
		}
	}
	if conf.StateDir == "" {
		conf.StateDir = netsetup.DefaultStateDir
	}
	return r, nil
}

// parsePrevResult decodes prevResult (nil when absent or empty).
func parsePrevResult(conf *NetConf) error {
	if len(conf.RawPrevResult) == 0 {
		conf.RawPrevResult = nil
		return nil
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "decode prevResult", err.Error())
	}
	return nil
}

// logger opens the conf's log destination: logFile (appended) or stderr.
func (r *Resolved) logger() (*slog.Logger, io.Closer) {
	var w io.Writer = os.Stderr
	var c io.Closer = io.NopCloser(nil)
	if r.LogFile != "" {
		f, err := os.OpenFile(r.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err == nil {
			w, c = f, f
		} else {
			fmt.Fprintf(os.Stderr, "vmnic: log file %s: %v (logging to stderr)\n", r.LogFile, err)
		}
	}
	h := slog.NewTextHandler(w, &slog.HandlerOptions{Level: r.Level})
	return slog.New(h).With("plugin", "vmnic", "network", r.Name), c
}

// fieldError names the key whose value failed to decode when the JSON
// decoder could not (the custom types' errors carry no field name).
func fieldError(stdin []byte, err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		return err
	}
	var raw map[string]json.RawMessage
	if json.Unmarshal(stdin, &raw) != nil {
		return err
	}
	for key, target := range map[string]json.Unmarshaler{
		"tapOwner": &ID{}, "tapGroup": &ID{}, "vmmTimeout": &Duration{}, "removeTimeout": &Duration{},
	} {
		if v, ok := raw[key]; ok {
			if ferr := target.UnmarshalJSON(v); ferr != nil {
				return fmt.Errorf("%s: %w", key, ferr)
			}
		}
	}
	return err
}
