package main

import (
	"context"
	"flag"

	"github.com/vmnic/vmnic/internal/sandbox"
)

// quiesceOpts are the flags of vmnicctl quiesce.
var quiesceOpts struct {
	reason  string
	vmmGone bool
}

var quiesceCommand = command{name: "quiesce", args: "<sandbox-id>", npos: 1, run: cmdQuiesce,
	flags: func(fs *flag.FlagSet) {
		fs.StringVar(&quiesceOpts.reason, "reason", "vmnicctl quiesce", "why (recorded on each NIC)")
		fs.BoolVar(&quiesceOpts.vmmGone, "vmm-gone", false, "the VMM process is gone (stopped, killed): its NICs come back pending on resume, for the next VMM")
		jsonFlag(fs)
	},
	help: "Take the sandbox's NICs out of the data path while its VMM is paused, stopped or gone: frames for the guest are dropped at the veth instead of being redirected into a TAP nobody reads. Idempotent."}

var resumeCommand = command{name: "resume", args: "<sandbox-id>", npos: 1, run: cmdResume, flags: jsonFlag,
	help: "Put the sandbox's quiesced NICs back into the data path (when its VMM runs again). Idempotent."}

func init() { commands = append(commands, quiesceCommand, resumeCommand) }

func cmdQuiesce(ctx context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	m, err := c.manager()
	if err != nil {
		return err
	}
	rec, err := m.Quiesce(ctx, pos[0], sandbox.QuiesceOptions{Reason: quiesceOpts.reason, VMMGone: quiesceOpts.vmmGone})
	if err != nil {
		return err
	}
	return showRecord(c, rec)
}

func cmdResume(ctx context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	m, err := c.manager()
	if err != nil {
		return err
	}
	rec, err := m.Resume(ctx, pos[0])
	if err != nil {
		return err
	}
	return showRecord(c, rec)
}
