package sandbox

import (
	"errors"
	"fmt"
	"os"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

// ParseHandoff reads a tapHandoff setting: "auto" or "" (fd where the VMM
// takes fds, else name), "fd" or "name". It returns "" for auto.
func ParseHandoff(s string) (netsetup.Handoff, error) {
	switch s {
	case "", "auto":
		return "", nil
	case string(netsetup.HandoffFd):
		return netsetup.HandoffFd, nil
	case string(netsetup.HandoffName):
		return netsetup.HandoffName, nil
	}
	return "", fmt.Errorf("tapHandoff %q: must be \"auto\", \"fd\" or \"name\"", s)
}

// handoffFor is the handoff a NIC that asks for want gets from a VMM of
// kind: fd when asked for or (auto) when the VMM takes fds, else name.
// Asking for fd from a VMM that takes none is an error.
func handoffFor(kind vmmadapter.Kind, want netsetup.Handoff) (netsetup.Handoff, error) {
	switch {
	case want == netsetup.HandoffName:
		return netsetup.HandoffName, nil
	case vmmadapter.TakesFds(kind):
		return netsetup.HandoffFd, nil
	case want == netsetup.HandoffFd:
		return "", fmt.Errorf("tapHandoff fd: the %s VMM cannot take TAP fds (it opens the TAP by name): %w", kind, vmmadapter.ErrFdsUnsupported)
	}
	return netsetup.HandoffName, nil
}

// OpenTapFds opens the queue fds of NIC n's TAP (one per queue pair,
// IFF_VNET_HDR, IFF_MULTI_QUEUE when there are several) for a VMM that
// takes its TAPs as fds: at VM restore (Cloud Hypervisor's vm.restore
// net_fds), at a hot-add, or for a launcher that passes them at boot. The
// caller owns the files (close-on-exec) and closes them once the VMM has
// its copies.
//
// Only a TAP vmnic made is opened: n must be a NIC of rec that is set up on
// the host, and the TAP is looked up where vmnic made it, in the sandbox's
// recorded netns (checked to still be the recorded namespace, by nsfs
// dev:ino) for the cni backend, on the host for the bridge backend.
func OpenTapFds(rec *netsetup.NetSetup, n netsetup.NIC) ([]*os.File, error) {
	if rec == nil {
		return nil, errors.New("open TAP fds: no record")
	}
	have, ok := rec.NIC(n.IfName)
	if !ok || have.Tap == "" || have.Tap != n.Tap {
		return nil, fmt.Errorf("open TAP fds of %s: sandbox %s has no NIC %s with TAP %q", n.IfName, rec.SandboxID, n.IfName, n.Tap)
	}
	pairs := have.QueuePairs()
	open := func() ([]*os.File, error) { return hostnet.OpenTapQueues(have.Tap, pairs) }
	if rec.ResolvedNetBackend() == netsetup.BackendBridge {
		return open()
	}
	path := rec.ResolvedNetnsPath()
	if path == "" {
		return nil, fmt.Errorf("open TAP fds of %s: sandbox %s has no netns recorded", n.IfName, rec.SandboxID)
	}
	if rec.NetnsID != nil {
		id, err := netsetup.IdentifyNetns(path)
		if err != nil {
			return nil, fmt.Errorf("open TAP fds of %s: netns %s: %w", n.IfName, path, err)
		}
		if id != *rec.NetnsID {
			return nil, fmt.Errorf("open TAP fds of %s: %s is no longer the netns of sandbox %s (recorded %v, now %v)", n.IfName, path, rec.SandboxID, *rec.NetnsID, id)
		}
	}
	var files []*os.File
	err := netns.Do(path, func() error {
		var err error
		files, err = open()
		return err
	})
	if err != nil {
		hostnet.CloseFiles(files)
		return nil, fmt.Errorf("open TAP fds of %s in netns %s: %w", n.IfName, path, err)
	}
	return files, nil
}
