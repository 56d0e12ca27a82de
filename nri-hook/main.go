// Command vmnic-nri is vmnic's NRI plugin. It gives every VM pod a sandbox
// network namespace and a NetSetup record (even at zero NICs), wires the VMM
// container (/dev/net/tun, the record, a directory for the VMM's API socket,
// the move into a netns vmnic owns), and tears it all down when the pod
// goes, reconciling with the runtime after every (re)connect.
//
// It runs either pre-installed (/opt/nri/plugins/NN-vmnic, launched by the
// runtime, configuration from /etc/nri/conf.d/NN-vmnic.conf) or as an
// external daemon connecting to the runtime's NRI socket:
//
//	vmnic-nri --socket /var/run/nri/nri.sock --idx 10 --name vmnic --config /etc/vmnic/nri.yaml
//
// An external plugin reconnects (with backoff) when the runtime restarts; a
// pre-installed one exits, and the runtime starts it again.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/nri/pkg/api"
	nrilog "github.com/containerd/nri/pkg/log"
	"github.com/containerd/nri/pkg/stub"

	"github.com/vmnic/vmnic/nri-hook/internal/config"
	"github.com/vmnic/vmnic/nri-hook/internal/hook"
	"github.com/vmnic/vmnic/nri-hook/internal/logging"
)

const (
	defaultName = "vmnic"
	defaultIdx  = "10"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

type options struct {
	socket, idx, name, config string
}

func newFlags() (*flag.FlagSet, *options) {
	o := &options{}
	fs := flag.NewFlagSet("vmnic-nri", flag.ContinueOnError)
	fs.StringVar(&o.socket, "socket", api.DefaultSocketPath, "NRI socket of the runtime (external mode)")
	fs.StringVar(&o.idx, "idx", "", "plugin index, two digits (default: from the runtime, the binary name NN-name, or "+defaultIdx+")")
	fs.StringVar(&o.name, "name", "", "plugin name (default: from the runtime, the binary name NN-name, or "+defaultName+")")
	fs.StringVar(&o.config, "config", "", "configuration file, YAML or JSON (external mode; a pre-installed plugin gets its configuration from the runtime)")
	return fs, o
}

func run(args []string) int {
	fs, o := newFlags()
	if err := fs.Parse(args); err != nil {
		return 2
	}
	socket, idx, name, cfgPath := &o.socket, &o.idx, &o.name, &o.config

	log := logging.New(os.Stderr)
	nrilog.Set(logging.NRI{L: log.Logger})

	base := config.Default()
	if *cfgPath != "" {
		c, err := config.Load(*cfgPath)
		if err != nil {
			log.Error("cannot start", "error", err)
			return 1
		}
		base = c
	}
	if lvl, err := base.Level(); err == nil {
		if err := log.Configure(base.LogFile, lvl); err != nil {
			log.Error("cannot start", "error", err)
			return 1
		}
	}

	preinstalled := os.Getenv(api.PluginSocketEnvVar) != ""
	if !preinstalled {
		// An external plugin gets no configuration from the runtime: refuse
		// one that could never select a VM pod now, not at registration.
		if err := base.Validate(); err != nil {
			log.Error("cannot start (give the configuration with --config)", "error", err)
			return 1
		}
	}
	plugin := &hook.Plugin{Base: base, Log: log}
	opts := []stub.Option{
		stub.WithLogger(logging.NRI{L: log.Logger}),
		stub.WithFailurePolicy(&api.FailurePolicy{FailRequest: true, KeepConnected: true}),
		stub.WithOnClose(func() { log.Warn("connection to the runtime closed") }),
	}
	if !preinstalled {
		opts = append(opts, stub.WithSocketPath(*socket))
	}
	opts = append(opts, identity(*idx, *name)...)

	s, err := stub.New(plugin, opts...)
	if err != nil {
		log.Error("cannot create the NRI stub", "error", err)
		return 1
	}
	plugin.Runtime = s
	defer plugin.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if preinstalled {
		// The runtime owns this process: when the connection goes, exit; the
		// runtime launches the plugin again when it restarts.
		err := s.Run(ctx)
		log.Info("runtime connection ended: exiting", "error", describe(err))
		return 0
	}
	return runExternal(ctx, s, log.Logger, *socket)
}

// identity picks the plugin index and name: flags first, then what the
// runtime set in the environment, then the binary name (NN-name), then the
// defaults.
func identity(idx, name string) []stub.Option {
	envIdx, envName := os.Getenv(api.PluginIdxEnvVar), os.Getenv(api.PluginNameEnvVar)
	if idx == "" && envIdx == "" {
		if i, n, err := api.ParsePluginName(filepath.Base(os.Args[0])); err == nil {
			idx = i
			if name == "" && envName == "" {
				name = n
			}
		} else {
			idx = defaultIdx
		}
	}
	if name == "" && envName == "" {
		name = defaultName
	}
	var opts []stub.Option
	if idx != "" && envIdx == "" {
		opts = append(opts, stub.WithPluginIdx(idx))
	}
	if name != "" {
		opts = append(opts, stub.WithPluginName(name))
	}
	return opts
}

type logger interface {
	Info(msg string, args ...any)
	Warn(msg string, args ...any)
}

// runExternal keeps an external plugin connected: after the runtime goes
// away (or before it is there) it retries with exponential backoff.
func runExternal(ctx context.Context, s stub.Stub, log logger, socket string) int {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 5 * time.Second
	backoff := minBackoff
	for {
		start := time.Now()
		err := s.Run(ctx)
		s.Stop() // make sure the stub can start again
		if ctx.Err() != nil {
			log.Info("stopping", "reason", ctx.Err())
			return 0
		}
		if time.Since(start) > 10*time.Second {
			backoff = minBackoff
		}
		log.Warn("not connected to the runtime; retrying", "socket", socket, "error", describe(err), "in", backoff)
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

func describe(err error) string {
	if err == nil {
		return "connection closed"
	}
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Sprintf("%v (is NRI enabled in the runtime?)", err)
	}
	return err.Error()
}
