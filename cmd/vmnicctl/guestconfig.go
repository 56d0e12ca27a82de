package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmnic/vmnic/netsetup/guestconfig"
)

var guestConfigCommand = command{
	name: "guest-config", args: "<sandbox-id> --format F", npos: 1, run: cmdGuestConfig, flags: guestConfigFlags,
	help: "Render the sandbox's NICs for the guest: --format cloud-init (NoCloud network-config v2), networkd (.network files), kernel (ip=) or json (versioned document for agents). " +
		"What a format cannot express is listed on stderr and fails the command unless --lossy.",
}

// guestConfigOpts are guest-config's flags (set anew by guestConfigFlags).
var guestConfigOpts struct {
	format string
	lossy  bool
	dir    string
}

func guestConfigFlags(fs *flag.FlagSet) {
	guestConfigOpts.format, guestConfigOpts.lossy, guestConfigOpts.dir = "", false, ""
	names := make([]string, 0, 4)
	for _, f := range guestconfig.Formats() {
		names = append(names, string(f))
	}
	fs.StringVar(&guestConfigOpts.format, "format", "", "output format: "+strings.Join(names, ", "))
	fs.BoolVar(&guestConfigOpts.lossy, "lossy", false, "print what the format can express even when it cannot express everything (still listed on stderr)")
	fs.StringVar(&guestConfigOpts.dir, "dir", "", "write the files into this directory (networkd: one .network per NIC) instead of stdout")
}

func cmdGuestConfig(_ context.Context, c *cli, _ *flag.FlagSet, pos []string) error {
	if guestConfigOpts.format == "" {
		return errors.New("--format is required")
	}
	f, err := guestconfig.ParseFormat(guestConfigOpts.format)
	if err != nil {
		return err
	}
	rec, err := c.loadRecord(pos[0])
	if err != nil {
		return err
	}
	out, err := guestconfig.Render(rec, f)
	if err != nil {
		return err
	}
	for _, l := range out.Lost {
		fmt.Fprintf(c.stderr, "vmnicctl guest-config: %s cannot express: %s\n", f, l)
	}
	if !out.Lossless() && !guestConfigOpts.lossy {
		return fmt.Errorf("the %s format cannot express %d item(s) of sandbox %s (listed above); use another format, or --lossy to print it anyway", f, len(out.Lost), rec.SandboxID)
	}
	if guestConfigOpts.dir == "" {
		_, err := c.stdout.Write(out.Bytes())
		return err
	}
	for _, file := range out.Files {
		p := filepath.Join(guestConfigOpts.dir, file.Name)
		if err := os.WriteFile(p, file.Data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
		fmt.Fprintln(c.stdout, p)
	}
	return nil
}
