package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
)

// A runtime restart cannot be simulated in-process: Adaptation.Stop leaves
// external plugin connections open. So the restart test runs the fake
// runtime as a child process (this test binary, re-executed) and kills it.
// The child reads one JSON command per line on stdin and answers one JSON
// line on stdout.

const (
	childRuntimeEnv  = "VMNIC_NRI_TEST_CHILD_RUNTIME" // the NRI socket path
	childPodsEnv     = "VMNIC_NRI_TEST_CHILD_PODS"    // pods listed at Synchronize (JSON)
	childPluginDir   = "VMNIC_NRI_TEST_CHILD_PLUGINS" // pre-installed plugin dir (optional)
	childPluginConfs = "VMNIC_NRI_TEST_CHILD_CONFS"
)

type childCmd struct {
	Op  string          `json:"op"` // wait-sync, run, stop, remove
	Pod *api.PodSandbox `json:"pod,omitempty"`
}

type childReply struct {
	Err string `json:"err,omitempty"`
}

func childRuntimeMain(socket string) int {
	var pods []*api.PodSandbox
	if s := os.Getenv(childPodsEnv); s != "" {
		if err := json.Unmarshal([]byte(s), &pods); err != nil {
			fmt.Fprintln(os.Stderr, "child runtime: pods:", err)
			return 1
		}
	}
	synced := make(chan struct{}, 16)
	preinstalled := os.Getenv(childPluginDir) != ""
	var started atomic.Bool
	syncFn := func(ctx context.Context, cb adaptation.SyncCB) error {
		_, err := cb(ctx, pods, nil)
		if err == nil && (preinstalled || started.Load()) {
			synced <- struct{}{}
		}
		return err
	}
	updateFn := func(context.Context, []*adaptation.ContainerUpdate) ([]*adaptation.ContainerUpdate, error) {
		return nil, nil
	}
	opts := []adaptation.Option{adaptation.WithSocketPath(socket)}
	if d := os.Getenv(childPluginDir); d != "" {
		opts = append(opts, adaptation.WithPluginPath(d), adaptation.WithPluginConfigPath(os.Getenv(childPluginConfs)))
	} else {
		opts = append(opts, adaptation.WithPluginPath(filepath.Join(filepath.Dir(socket), "no-plugins")))
	}
	r, err := adaptation.New("vmnn-child-runtime", "v0.0.1", syncFn, updateFn, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child runtime:", err)
		return 1
	}
	if err := r.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "child runtime:", err)
		return 1
	}
	started.Store(true)
	enc := json.NewEncoder(os.Stdout)
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		var c childCmd
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			enc.Encode(childReply{Err: err.Error()})
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		switch c.Op {
		case "wait-sync":
			select {
			case <-synced:
				r.BlockPluginSync().Unblock()
			case <-ctx.Done():
				err = fmt.Errorf("no plugin synchronized")
			}
		case "run":
			err = r.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: c.Pod})
		case "stop":
			err = r.StopPodSandbox(ctx, &api.StopPodSandboxRequest{Pod: c.Pod})
		case "remove":
			err = r.RemovePodSandbox(ctx, &api.RemovePodSandboxRequest{Pod: c.Pod})
		default:
			err = fmt.Errorf("unknown op %q", c.Op)
		}
		cancel()
		rep := childReply{}
		if err != nil {
			rep.Err = err.Error()
		}
		enc.Encode(rep)
		err = nil
	}
	r.Stop()
	return 0
}

// childRuntime is the parent's handle on a child fake runtime.
type childRuntime struct {
	t    testing.TB
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *json.Decoder
	done chan struct{}
}

type childOptions struct {
	pods       []pod
	pluginDir  string // pre-installed plugins
	confDir    string
	stderrName string
}

func startChildRuntime(t testing.TB, socket string, o childOptions) *childRuntime {
	t.Helper()
	var pods []*api.PodSandbox
	for _, p := range o.pods {
		pods = append(pods, p.api())
	}
	podsJSON, err := json.Marshal(pods)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childRuntimeEnv+"="+socket, childPodsEnv+"="+string(podsJSON),
		childPluginDir+"="+o.pluginDir, childPluginConfs+"="+o.confDir)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childRuntime{t: t, cmd: cmd, in: in, out: json.NewDecoder(out), done: make(chan struct{})}
	go func() { cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			t.Logf("child runtime stderr:\n%s", stderr.String())
		}
	})
	return c
}

func (c *childRuntime) do(op string, p *pod) error {
	c.t.Helper()
	cmd := childCmd{Op: op}
	if p != nil {
		cmd.Pod = p.api()
	}
	data, _ := json.Marshal(cmd)
	if _, err := c.in.Write(append(data, '\n')); err != nil {
		c.t.Fatalf("child runtime: %v", err)
	}
	var rep childReply
	got := make(chan error, 1)
	go func() { got <- c.out.Decode(&rep) }()
	select {
	case err := <-got:
		if err != nil {
			c.t.Fatalf("child runtime %s: %v", op, err)
		}
	case <-time.After(40 * time.Second):
		c.t.Fatalf("child runtime %s: no answer", op)
	}
	if rep.Err != "" {
		return fmt.Errorf("%s", rep.Err)
	}
	return nil
}

// kill ends the runtime the hard way, as a crash or restart would.
func (c *childRuntime) kill() {
	if c.cmd.Process != nil {
		c.cmd.Process.Kill()
	}
	<-c.done
}
