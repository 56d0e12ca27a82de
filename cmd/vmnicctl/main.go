// Command vmnicctl manages vmnic sandboxes: prepare a sandbox netns and its
// NetSetup record, show and list records, tear sandboxes down, garbage
// collect, attach a VMM, print a VMM's pre-boot NIC arguments and render the
// guest's network config.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/netsetup"
	"github.com/vmnic/vmnic/vmmadapter"
)

func init() { runtime.LockOSThread() }

// globals are the flags every subcommand accepts.
type globals struct {
	stateDir string
	netnsDir string
	timeout  time.Duration
	// socketDirs: more directories VMM API sockets may be in.
	socketDirs string
	verbose    bool
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.stateDir, "state-dir", envOr("VMNIC_STATE_DIR", netsetup.DefaultStateDir), "directory of the NetSetup records ($VMNIC_STATE_DIR)")
	fs.StringVar(&g.netnsDir, "netns-dir", envOr("VMNIC_NETNS_DIR", sandbox.DefaultNetnsDir), "directory of the network namespaces vmnic creates ($VMNIC_NETNS_DIR)")
	fs.DurationVar(&g.timeout, "timeout", 2*time.Minute, "overall deadline of the command")
	fs.StringVar(&g.socketDirs, "vmm-socket-dirs", "", "':'-separated directories VMM API sockets may be in, besides "+strings.Join(sandbox.DefaultVMMSocketDirs, " and ")+" and $"+sandbox.VMMSocketDirsEnv)
	fs.BoolVar(&g.verbose, "v", false, "log what is done to stderr")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

type command struct {
	name, args, help string
	run              func(ctx context.Context, c *cli, fs *flag.FlagSet, pos []string) error
	flags            func(fs *flag.FlagSet)
	npos             int // exact number of positional arguments
}

// cli carries the streams and the engine for a run (tests call run()).
type cli struct {
	g      globals
	stdout io.Writer
	stderr io.Writer
	m      *sandbox.Manager
}

// loadRecord is the manager's record of sandbox id.
func (c *cli) loadRecord(id string) (*netsetup.NetSetup, error) {
	m, err := c.manager()
	if err != nil {
		return nil, err
	}
	return m.Store.Get(id)
}

func (c *cli) manager() (*sandbox.Manager, error) {
	if c.m != nil {
		return c.m, nil
	}
	st, err := netsetup.Open(c.g.stateDir)
	if err != nil {
		return nil, err
	}
	level := slog.LevelWarn
	if c.g.verbose {
		level = slog.LevelInfo
	}
	c.m = sandbox.New(sandbox.Config{
		Store:         st,
		NetnsDir:      c.g.netnsDir,
		Logger:        slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: level})),
		VMMSocketDirs: sandbox.SocketDirs(strings.FieldsFunc(c.g.socketDirs, func(r rune) bool { return r == ':' })...),
	})
	return c.m, nil
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one vmnicctl command line and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	c := &cli{stdout: stdout, stderr: stderr}
	top := flag.NewFlagSet("vmnicctl", flag.ContinueOnError)
	top.SetOutput(stderr)
	c.g.register(top)
	top.Usage = func() { usage(stderr) }
	if err := top.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	rest := top.Args()
	if len(rest) == 0 {
		usage(stderr)
		return 2
	}
	if rest[0] == "help" || rest[0] == "-h" {
		usage(stdout)
		return 0
	}
	var cmd *command
	for i := range commands {
		if commands[i].name == rest[0] {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "vmnicctl: unknown command %q\n\n", rest[0])
		usage(stderr)
		return 2
	}
	fs := flag.NewFlagSet("vmnicctl "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	// Globals may come after the command too: parse them into a second
	// set and take the ones given there.
	var late globals
	late.register(fs)
	o = opts{}
	if cmd.flags != nil {
		cmd.flags(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: vmnicctl %s %s\n\n%s\n\nflags:\n", cmd.name, cmd.args, cmd.help)
		fs.PrintDefaults()
	}
	pos, err := parseInterleaved(fs, rest[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "state-dir":
			c.g.stateDir = late.stateDir
		case "netns-dir":
			c.g.netnsDir = late.netnsDir
		case "timeout":
			c.g.timeout = late.timeout
		case "vmm-socket-dirs":
			c.g.socketDirs = late.socketDirs
		case "v":
			c.g.verbose = late.verbose
		}
	})
	if cmd.npos >= 0 && len(pos) != cmd.npos {
		fmt.Fprintf(stderr, "vmnicctl %s: want %d argument(s) (%s), got %d\n", cmd.name, cmd.npos, cmd.args, len(pos))
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.g.timeout)
	defer cancel()
	if err := cmd.run(ctx, c, fs, pos); err != nil {
		fmt.Fprintf(stderr, "vmnicctl %s: %v\n", cmd.name, err)
		return 1
	}
	return 0
}

// parseInterleaved parses flags anywhere among the positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	// Everything after the first "--" is positional, flags or not (the
	// VMM command of exec-vmm).
	var tail []string
	for i, a := range args {
		if a == "--" {
			args, tail = args[:i], args[i+1:]
			break
		}
	}
	pos, err := parseFlagsAndPos(fs, args)
	if err != nil {
		return nil, err
	}
	return append(pos, tail...), nil
}

func parseFlagsAndPos(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: vmnicctl [--state-dir DIR] [--netns-dir DIR] <command> [arguments]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-12s %-28s %s\n", c.name, c.args, strings.SplitN(c.help, "\n", 2)[0])
	}
	fmt.Fprintf(w, "\nRun `vmnicctl <command> -h` for the flags of a command.\n")
}

var kindHelp = func() string {
	s := make([]string, len(vmmadapter.Kinds))
	for i, k := range vmmadapter.Kinds {
		s[i] = string(k)
	}
	return strings.Join(s, ", ")
}()
