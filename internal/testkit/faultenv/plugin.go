package faultenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"github.com/containernetworking/cni/pkg/types"
)

// PluginCall is one direct run of a CNI plugin binary (no libcni): the
// environment is exactly what is given, so hostile values reach the plugin
// as they are.
type PluginCall struct {
	Command     string // ADD, DEL, CHECK, GC, STATUS, VERSION
	ContainerID string
	Netns       string
	IfName      string
	Args        string // CNI_ARGS
	Path        string // CNI_PATH
	Stdin       []byte
	ExtraEnv    []string
	// Env, when set, replaces the CNI_* variables above entirely.
	Env []string
}

// PluginResult is what the plugin did.
type PluginResult struct {
	Stdout, Stderr []byte
	Err            *types.Error // the CNI error it printed
	Crashed        bool
	ExitCode       int
}

// RunPlugin runs the plugin binary bin once.
func RunPlugin(ctx context.Context, bin string, c PluginCall) (PluginResult, error) {
	env := c.Env
	if env == nil {
		env = []string{
			"CNI_COMMAND=" + c.Command, "CNI_CONTAINERID=" + c.ContainerID, "CNI_NETNS=" + c.Netns,
			"CNI_IFNAME=" + c.IfName, "CNI_ARGS=" + c.Args, "CNI_PATH=" + c.Path,
		}
	}
	env = append(append([]string{"PATH=" + os.Getenv("PATH")}, env...), c.ExtraEnv...)
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = env
	cmd.Stdin = bytes.NewReader(c.Stdin)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := PluginResult{Stdout: so.Bytes(), Stderr: se.Bytes()}
	if err == nil {
		return r, nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return r, fmt.Errorf("run %s: %w", bin, err)
	}
	r.ExitCode = ee.ExitCode()
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		r.Crashed, r.ExitCode = true, 128+int(ws.Signal())
		return r, nil
	}
	var te types.Error
	if json.Unmarshal(r.Stdout, &te) == nil && (te.Code != 0 || te.Msg != "") {
		r.Err = &te
	}
	return r, nil
}

// VmnicStdin is a vmnic network config with a prevResult naming ifname in
// the netns (the interface a previous plugin made), for direct runs.
func VmnicStdin(name, cniVersion string, vmnic map[string]any, ifname, mac, netns, ip, gw string) []byte {
	conf := map[string]any{"cniVersion": cniVersion, "name": name, "type": "vmnic"}
	for k, v := range vmnic {
		conf[k] = v
	}
	if ifname != "" {
		idx := 0
		conf["prevResult"] = map[string]any{
			"cniVersion": cniVersion,
			"interfaces": []any{map[string]any{"name": ifname, "mac": mac, "sandbox": netns}},
			"ips":        []any{map[string]any{"address": ip, "gateway": gw, "interface": idx}},
		}
	}
	data, _ := json.Marshal(conf)
	return data
}
