package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The vmnic NRI plugin's name and index as a pre-installed plugin.
const nriPluginFile = "10-vmnic"

// runtimeDirSize bounds each VM pod's runtime dir (a tmpfs of its own).
const runtimeDirSize = "512Ki"

// nriConfig is vmnic-nri's configuration for this suite: VM pods are those of
// the vm runtime handler or annotated vmnic.io/vm: "true"; every path is
// under the suite's directory.
func (e *Env) nriConfig() map[string]any {
	return map[string]any{
		"runtimeHandlers": []string{vmHandler, fdHandler},
		"vmAnnotation":    true,
		"stateDir":        e.VmnicState,
		"netnsDir":        e.OwnedNetnsDir(),
		"runtimeDir":      e.VmnicRun,
		"runtimeDirSize":  runtimeDirSize,
		"logFile":         e.NRILog(),
		"logLevel":        "debug",
		// The sweep tears down VM pods that went without an NRI event
		// (containerd sends none for pods older than its last restart);
		// short here so the tests need not wait long for it.
		"sweepInterval": sweepInterval.String(),
	}
}

// sweepInterval is vmnic-nri's sweep interval in this suite.
const sweepInterval = time.Second

// waitSwept waits (bounded) until vmnic-nri's sweep has torn down removed VM
// pods that it got no NRI event for: no record, no owned netns, no runtime
// dir. It reports what is left.
func (e *Env) waitSwept(t testing.TB, pods ...*Pod) {
	t.Helper()
	type leftover struct{ owned, rtDir string }
	left := map[string]leftover{}
	for _, p := range pods {
		if rec := e.Record(t, p.ID); rec != nil {
			l := leftover{rtDir: rec.RuntimeDir}
			if rec.NetnsOwned {
				l.owned = rec.NetnsPath
			}
			left[p.ID] = l
		}
	}
	clean := func() bool {
		for id, l := range left {
			if e.Record(t, id) != nil || (l.owned != "" && exists(l.owned)) || (l.rtDir != "" && exists(l.rtDir)) {
				return false
			}
		}
		return true
	}
	if waitFor(context.Background(), 20*sweepInterval, clean) {
		return
	}
	for _, p := range pods {
		l, ok := left[p.ID]
		if !ok {
			continue
		}
		if e.Record(t, p.ID) != nil {
			t.Errorf("record of removed pod %s left %s after its removal: the sweep did not tear it down", p.Name, 20*sweepInterval)
		}
		if l.owned != "" && exists(l.owned) {
			t.Errorf("owned netns %s of removed pod %s left", l.owned, p.Name)
		}
		if l.rtDir != "" && exists(l.rtDir) {
			t.Errorf("runtime dir %s of removed pod %s left", l.rtDir, p.Name)
		}
	}
}

// OwnedNetnsDir is where vmnic bind-mounts the netns it owns.
func (e *Env) OwnedNetnsDir() string { return filepath.Join(e.Dir, "netns") }

// NRILog is vmnic-nri's log file.
func (e *Env) NRILog() string { return filepath.Join(e.Dir, "vmnic-nri.log") }

func (e *Env) nriPluginPath() string { return filepath.Join(e.Dir, "nri", "plugins", nriPluginFile) }

// installNRIPlugin installs bin/vmnic-nri as a pre-installed NRI plugin of
// this containerd (plugin_path/10-vmnic, its config in
// plugin_config_path/10-vmnic.conf); containerd launches it at start.
func (e *Env) installNRIPlugin() error {
	for _, d := range []string{e.OwnedNetnsDir(), e.VmnicRun} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := writeJSON(filepath.Join(e.Dir, "nri", "conf.d", nriPluginFile+".conf"), e.nriConfig()); err != nil {
		return err
	}
	// The same configuration, for running the plugin as an external daemon.
	if err := writeJSON(filepath.Join(e.Dir, "nri", "vmnic-nri.json"), e.nriConfig()); err != nil {
		return err
	}
	os.Remove(e.nriPluginPath())
	return os.Symlink(e.p.vmnic("vmnic-nri"), e.nriPluginPath())
}

// uninstallNRIPlugin removes the pre-installed plugin; it goes at the next
// containerd restart.
func (e *Env) uninstallNRIPlugin() error {
	return os.Remove(e.nriPluginPath())
}

// nriPluginPIDs lists the running pre-installed vmnic-nri processes.
func (e *Env) nriPluginPIDs() []int {
	var pids []int
	for _, pid := range procsNaming(e.Dir) {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.HasPrefix(string(cmdline), e.nriPluginPath()+"\x00") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ExternalNRI is vmnic-nri run as an external daemon on the NRI socket.
type ExternalNRI struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// StartExternalNRI starts vmnic-nri as an external plugin; it stops at t.Cleanup.
func (e *Env) StartExternalNRI(t testing.TB) *ExternalNRI {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(e.Dir, "vmnic-nri-external.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(e.p.vmnic("vmnic-nri"), "--socket", e.NRISock, "--idx", "10", "--name", "vmnic",
		"--config", filepath.Join(e.Dir, "nri", "vmnic-nri.json"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start vmnic-nri: %v", err)
	}
	x := &ExternalNRI{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(x.done) }()
	t.Cleanup(x.Stop)
	return x
}

// Stop stops the daemon (SIGTERM, then SIGKILL after 10 s).
func (x *ExternalNRI) Stop() {
	select {
	case <-x.done:
		return
	default:
	}
	x.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-x.done:
	case <-time.After(10 * time.Second):
		x.cmd.Process.Kill()
		<-x.done
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return cond()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// nriLogCount counts the lines of vmnic-nri's log that contain s.
func (e *Env) nriLogCount(s string) int {
	data, _ := os.ReadFile(e.NRILog())
	return strings.Count(string(data), s)
}
