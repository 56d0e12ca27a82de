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

// podProcess returns the pod sandbox's pid and start time, when the runtime
// reported a pid and this plugin sees that process as a process of the
// sandbox: its cgroup names the sandbox id (containerd and CRI-O put the
// sandbox process in a cgroup named after it, with either cgroup driver).
// That check guards against a plugin that does not share the runtime's pid
// namespace, where the same pid is some other process. (0, 0, reason) when
// the pod process cannot be used.
func podProcess(pid uint32, sandboxID string) (int, uint64, string) {
	if pid == 0 {
		return 0, 0, "the runtime reported no pod pid"
	}
	p := int(pid)
	start, err := procStart(p)
	if err != nil {
		return 0, 0, err.Error()
	}
	cg, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(p), "cgroup"))
	if err != nil {
		return 0, 0, fmt.Sprintf("pid %d: %v", p, err)
	}
	if !strings.Contains(string(cg), sandboxID) {
		return 0, 0, fmt.Sprintf("pid %d is not in a cgroup of the sandbox (is the plugin in the runtime's pid namespace?)", p)
	}
	// The process may have been replaced between the two reads.
	if again, err := procStart(p); err != nil || again != start {
		return 0, 0, fmt.Sprintf("pid %d exited meanwhile", p)
	}
	return p, start, ""
}

// processGone says whether the process recorded as (pid, start) has
// exited: it no longer exists, is a zombie, or the pid now names another
// process. An error reading /proc is not taken as gone.
func processGone(pid int, start uint64) (bool, string) {
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
