package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestRuntimeRestart: the external plugin outlives a runtime crash. It
// re-registers with the new runtime on the same socket, reconciles the
// events it missed (the sandbox that vanished with the old runtime is torn
// down) and handles the next RunPodSandbox.
func TestRuntimeRestart(t *testing.T) {
	e := newEnv(t)
	dir, err := os.MkdirTemp("", "vmnn-nri-")
	mustOK(t, "temp dir", err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "nri.sock")
	cfg := filepath.Join(dir, "vmnic-nri.yaml")
	mustOK(t, "config", os.WriteFile(cfg, []byte(e.config()), 0o644))

	first := startChildRuntime(t, socket, childOptions{})
	plugin := startPluginProcess(t, "--socket", socket, "--config", cfg) // idx/name default to 10-vmnic
	mustOK(t, "first runtime: plugin synchronized", first.do("wait-sync", nil))
	a := vmPod("vmnn-rs-a", e.fixture("rs-a"))
	mustOK(t, "first runtime: RunPodSandbox", first.do("run", &a))
	e.record(a.id)

	first.kill() // the runtime crashes; pod a goes with it
	second := startChildRuntime(t, socket, childOptions{})
	mustOK(t, "second runtime: plugin re-registered", second.do("wait-sync", nil))
	eventually(t, "the vanished sandbox torn down", func() bool { _, err := e.store.Get(a.id); return err != nil })

	b := vmPod("vmnn-rs-b", e.fixture("rs-b"))
	mustOK(t, "second runtime: RunPodSandbox", second.do("run", &b))
	if rec := e.record(b.id); rec.NetnsPath != b.netns || rec.Origin != "nri" {
		t.Errorf("record after reconnect: %+v", rec)
	}
	mustOK(t, "second runtime: RemovePodSandbox", second.do("remove", &b))
	e.noRecord(b.id)
	if err := plugin.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the external plugin exited instead of reconnecting: %v", err)
	}
}

// TestPreinstalledExitsWithRuntime: a pre-installed plugin exits when its
// runtime goes away (the runtime launches it again when it restarts), and
// it is configured from the runtime's conf.d file.
func TestPreinstalledExitsWithRuntime(t *testing.T) {
	e := newEnv(t)
	dir, err := os.MkdirTemp("", "vmnn-nri-")
	mustOK(t, "temp dir", err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	plugins, confs := filepath.Join(dir, "plugins"), filepath.Join(dir, "conf.d")
	mustOK(t, "dirs", os.MkdirAll(plugins, 0o755))
	mustOK(t, "dirs", os.MkdirAll(confs, 0o755))
	mustOK(t, "install", os.Symlink(pluginBin, filepath.Join(plugins, "42-vmnic")))
	mustOK(t, "conf", os.WriteFile(filepath.Join(confs, "42-vmnic.conf"), []byte(e.config()), 0o644))

	rt := startChildRuntime(t, filepath.Join(dir, "nri.sock"), childOptions{pluginDir: plugins, confDir: confs})
	mustOK(t, "plugin synchronized", rt.do("wait-sync", nil))
	p := vmPod("vmnn-pre", e.fixture("pre"))
	mustOK(t, "RunPodSandbox", rt.do("run", &p))
	e.record(p.id) // proves the conf.d configuration (state dir) was used
	rt.kill()
	eventually(t, "the pre-installed plugin exits", func() bool {
		data, _ := os.ReadFile(e.logFile)
		return strings.Contains(string(data), "exiting")
	})
}
