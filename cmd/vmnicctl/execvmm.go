package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/connect"
)

// firstFd is where exec-vmm puts the inherited TAP fds (after stdio).
const firstFd = 3

// fdLayout numbers the queue fds of nics from firstFd on, one per queue
// pair, in NIC order: the layout exec-vmm makes.
func fdLayout(nics []vmmadapter.NIC) [][]int {
	out := make([][]int, len(nics))
	next := firstFd
	for i, n := range nics {
		for range max(n.QueuePairs, 1) {
			out[i] = append(out[i], next)
			next++
		}
	}
	return out
}

// cmdExecVMM opens the TAP queue fds of the sandbox's host-ready NICs in
// its netns (sandbox.OpenTapFds: only TAPs of the record, in the recorded
// netns) and runs the VMM command with them inherited as fd 3, 4, … and
// the fd handoff NIC arguments appended. Every other fd of vmnicctl is
// close-on-exec (Go opens all files so), so the VMM inherits exactly stdio
// and the TAP queues; vmnicctl closes its own copies once the VMM runs,
// passes SIGINT/SIGTERM/SIGHUP on, and ends with it. The VMM needs no
// /dev/net/tun, no CAP_NET_ADMIN and need not run in the sandbox netns.
//
// It starts the VMM as a child rather than exec'ing in place: moving fds
// onto 3, 4, … inside a running Go process could overwrite the runtime's
// own (its netpoller's epoll fd); the child's fds are set up between fork
// and exec instead.
func cmdExecVMM(_ context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	if len(pos) < 2 {
		return errors.New("want <sandbox-id> -- <vmm command…>")
	}
	kind, err := connect.ParseKind(o.kind)
	if err != nil {
		return fmt.Errorf("--kind: %w", err)
	}
	if !vmmadapter.TakesFds(kind) {
		return fmt.Errorf("--kind %s: %w (launch it with vmm-args, by name)", kind, vmmadapter.ErrFdsUnsupported)
	}
	rec, err := c.loadRecord(pos[0])
	if err != nil {
		return err
	}
	var nics []vmmadapter.NIC
	var files []*os.File
	defer func() { hostnet.CloseFiles(files) }()
	for _, n := range rec.NetworkConfigs {
		if !n.HostReady {
			continue
		}
		f, err := sandbox.OpenTapFds(rec, n)
		if err != nil {
			return err
		}
		files = append(files, f...)
		nics = append(nics, sandbox.AdapterNIC(n))
	}
	launch, err := connect.LaunchNICs(kind, nics, connect.LaunchOptions{Fds: fdLayout(nics), RootPorts: o.rootPorts})
	if err != nil {
		return fmt.Errorf("--kind %s: %w", kind, err)
	}
	// Not CommandContext: the VMM outlives vmnicctl's own timeout.
	cmd := exec.Command(pos[1], append(append([]string{}, pos[2:]...), launch.Args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, c.stdout, c.stderr
	cmd.ExtraFiles = files // fd 3 + i in the child (firstFd)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the VMM: %w", err)
	}
	hostnet.CloseFiles(files) // the VMM has its copies
	files = nil
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case s := <-sigs:
			cmd.Process.Signal(s)
		case err := <-done:
			if err != nil {
				return fmt.Errorf("the VMM %s: %w", pos[1], err)
			}
			return nil
		}
	}
}
