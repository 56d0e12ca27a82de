package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
)

// DataPath is how a NIC's veth and TAP are joined (recorded per NIC).
type DataPath string

const (
	// DataPathU32 is tc u32 match-all + mirred egress redirect, both ways:
	// the portable fallback (and what a record without a data path means).
	DataPathU32 DataPath = "u32"
	// DataPathBPF is cls_bpf direct action: bpf_redirect veth → TAP,
	// bpf_redirect_peer (or bpf_redirect) TAP → veth. See bpfredirect.go.
	DataPathBPF DataPath = "bpf"
)

// DataPathMode is the configured choice of data path.
type DataPathMode string

const (
	// ModeAuto uses the BPF data path when this kernel can load and attach
	// it, else u32 (logged).
	ModeAuto DataPathMode = "auto"
	// ModeBPF insists on the BPF data path: a kernel without it fails the ADD.
	ModeBPF DataPathMode = "bpf"
	// ModeU32 always uses tc u32 + mirred.
	ModeU32 DataPathMode = "u32"
)

// DataPathEnv, when set, is the mode used where none is configured (so a
// whole test suite, or a node, can be switched without editing confs).
const DataPathEnv = "VMNIC_DATAPATH"

// ParseDataPathMode accepts "", "auto", "bpf" or "u32" ("" = not configured).
func ParseDataPathMode(s string) (DataPathMode, error) {
	switch m := DataPathMode(strings.ToLower(strings.TrimSpace(s))); m {
	case "", ModeAuto, ModeBPF, ModeU32:
		return m, nil
	}
	return "", fmt.Errorf("dataPath %q: must be \"auto\", \"bpf\" or \"u32\"", s)
}

// JoinOptions say how Join picks and sets up the data path.
type JoinOptions struct {
	// Mode: "" means $VMNIC_DATAPATH, or auto when that is unset.
	Mode DataPathMode
	// Log receives the fallback line; nil discards.
	Log *slog.Logger
	// Probe replaces the kernel capability probe (nil: ProbeBPF); tests
	// force a failing probe with it.
	Probe func() error
	// Step, when set, is called with "veth-filter-added" once the veth →
	// TAP filter is in place (the engine's failpoint and step timing); an
	// error it returns fails the Join there, which then rolls back.
	Step func(name string) error
	// Conn carries Join's requests (nil: a socket per request).
	Conn *Conn
	// Preload, when it is for this veth, is the TAP -> veth program,
	// loaded ahead (PreloadJoin); nil: Join loads it.
	Preload *Preload
}

func (o JoinOptions) log() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}

// ResolvedMode is the mode Join uses: Mode, else $VMNIC_DATAPATH, else auto.
func (o JoinOptions) ResolvedMode() (DataPathMode, error) {
	m := o.Mode
	if m == "" {
		env, err := ParseDataPathMode(os.Getenv(DataPathEnv))
		if err != nil {
			return "", fmt.Errorf("$%s: %w", DataPathEnv, err)
		}
		m = env
	}
	if m == "" {
		m = ModeAuto
	}
	if _, err := ParseDataPathMode(string(m)); err != nil {
		return "", err
	}
	return m, nil
}

func (o JoinOptions) probe() error {
	if o.Probe != nil {
		return o.Probe()
	}
	return ProbeBPF()
}

// ErrBPFUnavailable is wrapped by the error of a Join in mode bpf on a
// kernel that cannot run the BPF data path.
var ErrBPFUnavailable = errors.New("the BPF data path is not available on this kernel")

// ChooseDataPath is the data path a Join with o starts with: u32 in mode
// u32; bpf in mode bpf (an error when the probe fails); in mode auto, bpf
// when the probe passes, else u32 with a log line saying why.
func ChooseDataPath(o JoinOptions) (DataPath, error) {
	mode, err := o.ResolvedMode()
	if err != nil {
		return "", err
	}
	if mode == ModeU32 {
		return DataPathU32, nil
	}
	if err := o.probe(); err != nil {
		if mode == ModeBPF {
			return "", fmt.Errorf("dataPath bpf: %w: %v", ErrBPFUnavailable, err)
		}
		o.log().Warn("data path: the BPF redirect is unavailable on this kernel, using tc u32 + mirred", "error", err)
		return DataPathU32, nil
	}
	return DataPathBPF, nil
}

// Joined is what Join set up.
type Joined struct {
	DataPath DataPath
	// VethQdiscOwned: Join added the veth's ingress qdisc (there was none).
	VethQdiscOwned bool
	// TapHelper is the BPF helper of the TAP → veth direction (bpf only).
	TapHelper BPFHelper
}

// Join joins veth and tap both ways on their ingress hooks: frames the veth
// receives leave through the TAP (to the VMM), frames the VMM writes to the
// TAP continue as if the veth had sent them. It uses an existing ingress or
// clsact qdisc and adds one where there is none; filters at other
// priorities (anybody else's) are left alone. The data path is chosen by
// ChooseDataPath, except that in mode auto (with no Probe of its own) the
// two programs Join loads before it changes anything are the probe: a load
// the kernel refuses falls back to u32 as a failed probe does, and no
// third program is loaded just to probe. In mode auto a cls_bpf attach the
// kernel refuses as unsupported falls back to u32 too (logged). On failure
// Join removes what it added.
func Join(veth, tap netlink.Link, o JoinOptions) (j Joined, err error) {
	mode, err := o.ResolvedMode()
	if err != nil {
		return j, err
	}
	dp := DataPathBPF
	if mode != ModeAuto || o.Probe != nil {
		if dp, err = ChooseDataPath(o); err != nil {
			return j, err
		}
	}
	var progs redirectPrograms
	if dp == DataPathBPF {
		j.TapHelper = PeerHelper(veth)
		progs, err = loadRedirects(veth, tap, j.TapHelper, o.Preload)
		if err != nil {
			if mode != ModeAuto || !IsBPFUnsupported(err) {
				return j, err
			}
			o.log().Warn("data path: the BPF redirect is unavailable on this kernel, using tc u32 + mirred", "error", err)
			dp, j.TapHelper = DataPathU32, HelperRedirect
		}
		defer progs.close()
	}
	c := o.Conn
	owned, err := c.EnsureIngress(veth)
	if err != nil {
		return j, err
	}
	j.VethQdiscOwned = owned
	tapOwned := false
	defer func() {
		if err == nil {
			return
		}
		// Roll back (best effort: the caller reports err, and a DEL
		// repeats the removal by priority).
		_ = DelRedirect(veth)
		if owned {
			_ = RemoveIngressIfEmpty(veth)
		}
		_ = DelRedirect(tap)
		if tapOwned {
			_ = RemoveIngressIfEmpty(tap)
		}
	}()
	if tapOwned, err = c.EnsureIngress(tap); err != nil {
		return j, err
	}
	if dp == DataPathBPF {
		err = c.attachBPFRedirect(veth, tap, HelperRedirect, progs.toTap)
		if err != nil && mode == ModeAuto && IsBPFUnsupported(err) {
			o.log().Warn("data path: this kernel refuses the cls_bpf redirect, using tc u32 + mirred", "veth", veth.Attrs().Name, "tap", tap.Attrs().Name, "error", err)
			dp, err = DataPathU32, nil
		}
		if err != nil {
			return j, err
		}
	}
	if dp == DataPathU32 {
		if err = c.AddRedirect(veth, tap); err != nil {
			return j, err
		}
	}
	if o.Step != nil {
		if err = o.Step("veth-filter-added"); err != nil {
			return j, err
		}
	}
	if dp == DataPathBPF {
		err = c.attachBPFRedirect(tap, veth, j.TapHelper, progs.toVeth)
	} else {
		err = c.AddRedirect(tap, veth)
	}
	if err != nil {
		return j, err
	}
	j.DataPath = dp
	if dp != DataPathBPF {
		j.TapHelper = 0
	}
	return j, nil
}

// Unjoin removes vmnic's filters from veth (whatever their data path) and
// the veth's ingress qdisc when j says Join added it and no filter is left
// on it; tap, when not nil, loses vmnic's filter too (deleting the TAP
// takes it along anyway). Nothing left to remove is not an error.
func Unjoin(veth, tap netlink.Link, j Joined) error {
	var errs []error
	if veth != nil {
		if err := DelRedirect(veth); err != nil {
			errs = append(errs, err)
		} else if j.VethQdiscOwned {
			if err := RemoveIngressIfEmpty(veth); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if tap != nil {
		if err := DelRedirect(tap); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CheckJoin reports what is missing from the join of veth and tap with
// data path dp ("" = u32, as recorded before the data path was): each
// direction's filter, redirecting to the right device with the right
// mechanism. No problem: nil.
func CheckJoin(veth, tap netlink.Link, dp DataPath) []error {
	if dp == "" {
		dp = DataPathU32
	}
	var problems []error
	check := func(from, to netlink.Link, h BPFHelper) {
		var ok bool
		var err error
		switch dp {
		case DataPathBPF:
			ok, err = HasBPFRedirect(from, to.Attrs().Index, h)
		case DataPathU32:
			ok, err = hasU32Redirect(from, to.Attrs().Index)
		default:
			err = fmt.Errorf("unknown data path %q recorded", dp)
		}
		if err != nil {
			problems = append(problems, err)
			return
		}
		if ok {
			return
		}
		msg := fmt.Sprintf("tc redirect filter %s -> %s missing (data path %s", from.Attrs().Name, to.Attrs().Name, dp)
		if dp == DataPathBPF {
			msg += ", " + h.String()
		}
		msg += ")"
		if kind, err := redirectFilterKind(from); err == nil && kind != "" {
			msg += fmt.Sprintf("; vmnic's priority holds a %s filter that does not match", kind)
		}
		problems = append(problems, errors.New(msg))
	}
	check(veth, tap, HelperRedirect)
	check(tap, veth, PeerHelper(veth))
	return problems
}

// FilterKind is the tc filter kind of data path dp ("" = u32).
func FilterKind(dp DataPath) string {
	if dp == DataPathBPF {
		return "bpf"
	}
	return "u32"
}
