package hook

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/netsetup"
)

// procRoot is where processes are looked up (the host's /proc: a plugin
// run as a DaemonSet needs hostPID).
const procRoot = "/proc"

// errNoProcess: the process does not exist (or is a zombie).
var errNoProcess = errors.New("no such process")

// procStart reads a process's start time (clock ticks after boot, field 22
// of /proc/<pid>/stat). A pid names one process only together with its start
// time: pids are reused. A process that does not exist, or that is a zombie,
// is errNoProcess.
func procStart(pid int) (uint64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("pid %d: %w", pid, errNoProcess)
	}
	data, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return 0, fmt.Errorf("pid %d: %w", pid, errNoProcess)
		}
		return 0, fmt.Errorf("pid %d: %w", pid, err)
	}
	// "pid (comm) state ppid …": comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: malformed stat %q", pid, data)
	}
	f := strings.Fields(string(data[i+1:]))
	const stateField, startField = 3, 22 // 1-based, as in proc(5)
	if len(f) <= startField-stateField {
		return 0, fmt.Errorf("pid %d: malformed stat %q", pid, data)
	}
	if s := f[0]; s == "Z" || s == "X" || s == "x" {
		return 0, fmt.Errorf("pid %d exited: %w", pid, errNoProcess)
	}
	start, err := strconv.ParseUint(f[startField-stateField], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("pid %d: start time: %w", pid, err)
	}
	return start, nil
}

// podProcess returns the pod sandbox's process, when the runtime reported
// a pid and this plugin sees that process as a process of the sandbox: its
// cgroup names the sandbox id (containerd and CRI-O put the sandbox process
// in a cgroup named after it, with either cgroup driver). That check guards
// against a plugin that does not share the runtime's pid namespace, where
// the same pid is some other process. The process comes with the pid
// namespace its pid is valid in. ok is false, with the reason, when the pod
// process cannot be used.
func podProcess(pid uint32, sandboxID string) (proc podProc, why string) {
	if pid == 0 {
		return podProc{}, "the runtime reported no pod pid"
	}
	p := int(pid)
	ns, err := pidNamespace()
	if err != nil {
		return podProc{}, fmt.Sprintf("cannot tell which pid namespace %s shows: %v", procRoot, err)
	}
	start, err := procStart(p)
	if err != nil {
		return podProc{}, err.Error()
	}
	cg, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(p), "cgroup"))
	if err != nil {
		return podProc{}, fmt.Sprintf("pid %d: %v", p, err)
	}
	if !strings.Contains(string(cg), sandboxID) {
		return podProc{}, fmt.Sprintf("pid %d is not in a cgroup of the sandbox (is the plugin in the runtime's pid namespace?)", p)
	}
	// The process may have been replaced between the two reads.
	if again, err := procStart(p); err != nil || again != start {
		return podProc{}, fmt.Sprintf("pid %d exited meanwhile", p)
	}
	return podProc{pid: p, start: start, ns: ns}, ""
}

// podProc is a pod's sandbox process: its pid, start time and the pid
// namespace the pid is valid in.
type podProc struct {
	pid   int
	start uint64
	ns    netsetup.NetnsID
}

// pidNamespace identifies the pid namespace the plugin sees pids in: its
// own (nsfs dev:ino, as NetnsID), which is that of the /proc it reads
// (pre-installed it shares the runtime's; a DaemonSet with hostPID the
// host's; without hostPID its container's, with that container's /proc).
func pidNamespace() (netsetup.NetnsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(procRoot, "self", "ns", "pid"), &st); err != nil {
		return netsetup.NetnsID{}, err
	}
	return netsetup.NetnsID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

// inOwnNetns says whether process pid is in this plugin's network
// namespace (the host's: the plugin runs in it), as a host-network pod's
// sandbox process is.
func inOwnNetns(pid int) (bool, error) {
	own, err := netsetup.IdentifyNetns(filepath.Join(procRoot, "self", "ns", "net"))
	if err != nil {
		return false, err
	}
	theirs, err := netsetup.IdentifyNetns(filepath.Join(procRoot, strconv.Itoa(pid), "ns", "net"))
	if err != nil {
		return false, err
	}
	return own == theirs, nil
}

// processGone says whether the process recorded as (pid, start) in pid
// namespace ns has exited: it no longer exists, is a zombie, or the pid now
// names another process. A pid is judged only from the namespace it was
// recorded in (a plugin redeployed into another pid namespace, e.g. a
// DaemonSet without hostPID, cannot see it), and an error reading /proc is
// not taken as gone either.
func processGone(pid int, start uint64, ns netsetup.NetnsID) (bool, string) {
	if now, err := pidNamespace(); err != nil || now != ns {
		return false, ""
	}
	now, err := procStart(pid)
	if errors.Is(err, errNoProcess) {
		return true, fmt.Sprintf("pod process %d exited", pid)
	}
	if err != nil {
		return false, ""
	}
	if now != start {
		return true, fmt.Sprintf("pod process %d exited (the pid now names another process)", pid)
	}
	return false, ""
}
