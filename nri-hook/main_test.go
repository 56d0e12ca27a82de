package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	nrilog "github.com/containerd/nri/pkg/log"
)

// pluginBin is the vmnic-nri binary built for this test run.
var pluginBin string

// TestMain builds the real vmnic-nri binary (the tests drive it over a real
// NRI socket), or, when started as the child fake runtime of the restart
// test, runs that instead.
func TestMain(m *testing.M) {
	if sock := os.Getenv(childRuntimeEnv); sock != "" {
		os.Exit(childRuntimeMain(sock))
	}
	if bin := os.Getenv(pidnsExecEnv); bin != "" {
		os.Exit(pidnsExecMain(bin))
	}
	nrilog.Set(quietLog{})
	dir, err := os.MkdirTemp("", "vmnn-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pluginBin = filepath.Join(dir, "vmnic-nri")
	if err := buildPlugin(pluginBin); err != nil {
		fmt.Fprintln(os.Stderr, "build vmnic-nri:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildPlugin(out string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(gobin, "build", "-o", out, ".")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

// quietLog drops the fake runtime's (NRI adaptation's) info chatter and
// keeps its warnings and errors.
type quietLog struct{}

func (quietLog) Debugf(context.Context, string, ...interface{}) {}
func (quietLog) Infof(context.Context, string, ...interface{})  {}
func (quietLog) Warnf(_ context.Context, f string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "fake runtime: warning: "+f+"\n", a...)
}
func (quietLog) Errorf(_ context.Context, f string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "fake runtime: error: "+f+"\n", a...)
}
