package faultenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// Exec runs CNI plugins for libcni like invoke.RawExec, adds environment
// variables to the vmnic plugin (failpoints) and tells a plugin that was
// killed from one that failed.
type Exec struct {
	mu  sync.Mutex
	env []string // extra environment of the next vmnic runs
}

var _ invoke.Exec = (*Exec)(nil)

// SetEnv replaces the extra environment given to vmnic runs.
func (e *Exec) SetEnv(env ...string) {
	e.mu.Lock()
	e.env = append([]string(nil), env...)
	e.mu.Unlock()
}

// CrashError is a plugin that died of a signal (an injected crash).
type CrashError struct {
	Plugin string
	Signal syscall.Signal
	Stderr string
}

func (e *CrashError) Error() string {
	return fmt.Sprintf("plugin %s killed by %v (exit status %d)", e.Plugin, e.Signal, 128+int(e.Signal))
}

// ExecPlugin runs one plugin.
func (e *Exec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	env := append([]string(nil), environ...)
	if filepath.Base(pluginPath) == "vmnic" {
		e.mu.Lock()
		env = append(env, e.env...)
		e.mu.Unlock()
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pluginPath)
	cmd.Env = env
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return nil, &CrashError{Plugin: filepath.Base(pluginPath), Signal: ws.Signal(), Stderr: stderr.String()}
		}
		var te types.Error
		if json.Unmarshal(stdout.Bytes(), &te) == nil && te.Msg != "" {
			return nil, &te
		}
	}
	return nil, fmt.Errorf("plugin %s: %v (stdout %q, stderr %q)", filepath.Base(pluginPath), err, stdout.Bytes(), stderr.Bytes())
}

// FindInPath finds a plugin like libcni does.
func (e *Exec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

// Decode reads a plugin's VERSION answer.
func (e *Exec) Decode(b []byte) (version.PluginInfo, error) {
	var d version.PluginDecoder
	return d.Decode(b)
}

// IsCrash reports whether err is (or wraps) a plugin killed by a signal.
func IsCrash(err error) bool {
	var ce *CrashError
	return errors.As(err, &ce)
}

// Chain is one CNI network (a conflist) run through libcni.
type Chain struct {
	Name string
	List *libcni.NetworkConfigList
	CNI  *libcni.CNIConfig
	Exec *Exec
}

// NewChain loads a conflist. paths is the plugin search path (the
// failpoint build's directory first), cacheDir libcni's result cache.
func NewChain(conflist []byte, paths []string, cacheDir string) (*Chain, error) {
	list, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return nil, fmt.Errorf("conflist: %w", err)
	}
	ex := &Exec{}
	return &Chain{Name: list.Name, List: list, CNI: libcni.NewCNIConfigWithCacheDir(paths, cacheDir, ex), Exec: ex}, nil
}

// Attachment is one ADD's runtime parameters.
type Attachment struct {
	ContainerID string
	Netns       string
	IfName      string
	SandboxID   string // VMNIC_SANDBOX_ID, when set
	// Args are more CNI_ARGS pairs (e.g. MAC and IP for a restored NIC).
	Args [][2]string
}

// RuntimeConf is the attachment as libcni runtime parameters.
func (a Attachment) RuntimeConf() *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: a.Netns, IfName: a.IfName}
	if a.IfName == "" {
		rt.IfName = "eth0"
	}
	if a.SandboxID != "" || len(a.Args) > 0 {
		rt.Args = [][2]string{{"IgnoreUnknown", "1"}}
	}
	if a.SandboxID != "" {
		rt.Args = append(rt.Args, [2]string{"VMNIC_SANDBOX_ID", a.SandboxID})
	}
	rt.Args = append(rt.Args, a.Args...)
	return rt
}

// Add runs ADD of the chain.
func (c *Chain) Add(ctx context.Context, a Attachment) (types.Result, error) {
	return c.CNI.AddNetworkList(ctx, c.List, a.RuntimeConf())
}

// Del runs DEL of the chain.
func (c *Chain) Del(ctx context.Context, a Attachment) error {
	return c.CNI.DelNetworkList(ctx, c.List, a.RuntimeConf())
}

// Check runs CHECK of the chain.
func (c *Chain) Check(ctx context.Context, a Attachment) error {
	return c.CNI.CheckNetworkList(ctx, c.List, a.RuntimeConf())
}

// GC runs GC of the chain with the given attachments still valid.
func (c *Chain) GC(ctx context.Context, valid ...Attachment) error {
	args := &libcni.GCArgs{}
	for _, a := range valid {
		ifn := a.IfName
		if ifn == "" {
			ifn = "eth0"
		}
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: a.ContainerID, IfName: ifn})
	}
	return c.CNI.GCNetworkList(ctx, c.List, args)
}

// BridgeConflist is bridge (gateway on the bridge, no masquerade) +
// host-local + vmnic. vmnic holds vmnic's own keys (stateDir, backend, …).
func BridgeConflist(name, bridge, subnet, ipamDir string, vmnic map[string]any) []byte {
	return conflist(name, map[string]any{
		"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
		"ipam": map[string]any{"type": "host-local", "dataDir": ipamDir, "ranges": []any{[]any{map[string]any{"subnet": subnet}}}},
	}, vmnic)
}

// PtpConflist is ptp + host-local + vmnic.
func PtpConflist(name, subnet, ipamDir string, vmnic map[string]any) []byte {
	return conflist(name, map[string]any{
		"type": "ptp", "ipMasq": false,
		"ipam": map[string]any{"type": "host-local", "dataDir": ipamDir, "ranges": []any{[]any{map[string]any{"subnet": subnet}}}},
	}, vmnic)
}

func conflist(name string, first, vmnic map[string]any) []byte {
	v := map[string]any{"type": "vmnic"}
	for k, x := range vmnic {
		v[k] = x
	}
	data, _ := json.MarshalIndent(map[string]any{"cniVersion": "1.1.0", "name": name, "plugins": []any{first, v}}, "", "  ")
	return data
}

// WriteFile writes data to path, creating its directory.
func WriteFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}
