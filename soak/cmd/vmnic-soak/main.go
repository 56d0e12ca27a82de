// Command vmnic-soak runs vmnic through many ADD/DEL cycles with random
// faults (plugin crashes at every failpoint, VMM faults, racing DELs, GC
// racing ADD, both backends) and audits the host after every cycle: links,
// TAPs, qdiscs, filters, netns and their mounts, state files, lock files,
// iptables rules, host-local leases, leftover processes and the runner's
// own file descriptors. It exits 1 when anything leaked or misbehaved.
// Root only. `make soak` runs 2000 cycles, `make soak-short` 200.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/faultenv"
	"github.com/vmnic/vmnic/soak"
)

func main() {
	cycles := flag.Int("cycles", 2000, "ADD/DEL cycles")
	seed := flag.Int64("seed", 0, "random seed (0: from the clock; printed)")
	cni := flag.String("cni-bin", envOr("VMNIC_CNI_BIN", filepath.Join(faultenv.RepoRoot(), ".tools", "cni")), "reference CNI plugins (bridge, ptp, host-local)")
	out := flag.String("out", "", "write the report as JSON to this file")
	timeout := flag.Duration("timeout", 60*time.Minute, "bound on the whole run")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "vmnic-soak needs root (network namespaces, links, tc, iptables)")
		os.Exit(2)
	}
	for _, p := range []string{"bridge", "ptp", "host-local"} {
		if _, err := os.Stat(filepath.Join(*cni, p)); err != nil {
			fmt.Fprintf(os.Stderr, "vmnic-soak: CNI plugin %s not in %s (run `make tools`)\n", p, *cni)
			os.Exit(2)
		}
	}
	if *seed == 0 {
		*seed = time.Now().UnixNano() % 1_000_000
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fmt.Printf("vmnic-soak: %d cycles, seed %d\n", *cycles, *seed)
	rep, err := soak.Run(ctx, soak.Config{Cycles: *cycles, Seed: *seed, RefCNI: *cni, Timeout: *timeout, Log: os.Stdout})
	if rep != nil {
		fmt.Print(rep.Summary())
		if *out != "" {
			if werr := os.WriteFile(*out, rep.JSON(), 0o644); werr != nil {
				fmt.Fprintln(os.Stderr, "vmnic-soak:", werr)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmnic-soak:", err)
		os.Exit(1)
	}
	if !rep.OK() {
		os.Exit(1)
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
