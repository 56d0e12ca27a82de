// Package timedexec is a libcni plugin executor that runs plugins as
// libcni's default executor does (same environment, stdin, stdout and error
// decoding) and records each exec: plugin, CNI command, pid, and wall-clock
// start and end. The log is carried in the context given to libcni, so
// concurrent operations each get their own.
package timedexec

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// Call is one plugin exec.
type Call struct {
	Plugin string // base name of the binary
	Cmd    string // CNI_COMMAND
	PID    int
	Start  time.Time // before fork
	End    time.Time // after wait
	Err    error
}

// Duration is how long the exec took, from before fork to after wait.
func (c Call) Duration() time.Duration { return c.End.Sub(c.Start) }

// Log collects calls; safe for concurrent use.
type Log struct {
	mu    sync.Mutex
	calls []Call
}

// Calls returns a copy of the calls recorded so far.
func (l *Log) Calls() []Call {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Call(nil), l.calls...)
}

// Total is the summed duration of the calls of plugin for cmd ("" matches all).
func (l *Log) Total(plugin, cmd string) time.Duration {
	var d time.Duration
	for _, c := range l.Calls() {
		if (plugin == "" || c.Plugin == plugin) && (cmd == "" || c.Cmd == cmd) {
			d += c.Duration()
		}
	}
	return d
}

type ctxKey struct{}

// WithLog returns a context whose plugin execs are recorded in l.
func WithLog(ctx context.Context, l *Log) context.Context {
	return context.WithValue(ctx, ctxKey{}, l)
}

// Exec implements invoke.Exec.
type Exec struct {
	version.PluginDecoder
	// Env is added to every plugin's environment (e.g. VMNIC_STEP_TIMES=...).
	Env []string
}

var _ invoke.Exec = (*Exec)(nil)

// ExecPlugin runs the plugin and records the call in the context's log.
func (e *Exec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	c := exec.CommandContext(ctx, pluginPath)
	c.Env = append(append([]string(nil), environ...), e.Env...)
	c.Stdin = bytes.NewReader(stdinData)
	c.Stdout = &stdout
	c.Stderr = &stderr

	start := time.Now()
	err := c.Run()
	end := time.Now()
	if err != nil {
		err = pluginErr(err, stdout.Bytes(), stderr.Bytes())
	}
	if l, ok := ctx.Value(ctxKey{}).(*Log); ok {
		call := Call{Plugin: filepath.Base(pluginPath), Start: start, End: end, Err: err}
		if c.Process != nil {
			call.PID = c.Process.Pid
		}
		for _, kv := range environ {
			if v, ok := strings.CutPrefix(kv, "CNI_COMMAND="); ok {
				call.Cmd = v
			}
		}
		l.mu.Lock()
		l.calls = append(l.calls, call)
		l.mu.Unlock()
	}
	if err != nil {
		return nil, err
	}
	return stdout.Bytes(), nil
}

// pluginErr decodes a failed plugin's error as libcni does.
func pluginErr(err error, stdout, stderr []byte) error {
	emsg := types.Error{}
	switch {
	case len(stdout) == 0 && len(stderr) == 0:
		emsg.Msg = fmt.Sprintf("netplugin failed with no error message: %v", err)
	case len(stdout) == 0:
		emsg.Msg = fmt.Sprintf("netplugin failed: %q: %v", string(stderr), err)
	default:
		if perr := json.Unmarshal(stdout, &emsg); perr != nil {
			emsg.Msg = fmt.Sprintf("netplugin failed but error parsing its diagnostic message %q: %v", string(stdout), perr)
		}
	}
	return &emsg
}

// FindInPath finds a plugin binary as libcni does.
func (e *Exec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}
