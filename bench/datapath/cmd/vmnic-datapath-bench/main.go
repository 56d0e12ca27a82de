// Command vmnic-datapath-bench measures vmnic's data path (see package
// bench/datapath) and writes datapath.md, datapath.json and
// datapath-rtt.png into -out. Run it as root:
//
//	go run ./bench/datapath/cmd/vmnic-datapath-bench -out .bench
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vmnic/vmnic/bench/datapath"
)

func main() {
	cfg := datapath.Config{Log: os.Stderr}
	flag.StringVar(&cfg.OutDir, "out", ".bench", "directory for datapath.md, datapath.json and the plot")
	flag.BoolVar(&cfg.Quick, "quick", os.Getenv("BENCH_QUICK") == "1", "smoke run (also BENCH_QUICK=1)")
	flag.IntVar(&cfg.Rounds, "rounds", 0, "interleaved rounds (default 5, quick 1)")
	flag.DurationVar(&cfg.PingDuration, "ping", 0, "duration of each echo run (default 2s, quick 200ms)")
	flag.Int64Var(&cfg.TCPBytes, "tcp-bytes", 0, "bytes per TCP transfer (default 256 MiB, quick 4 MiB)")
	flag.BoolVar(&cfg.NoGSO, "no-gso", false, "open the TCP guest's TAP without offloads")
	variants := flag.String("variants", "", "comma-separated variants to run (default all; bridge always)")
	flag.BoolVar(&cfg.Experiments, "experiments", false, "add the experimental variants (GRO or XDP on eth0)")
	flag.BoolVar(&cfg.EchoOnly, "echo-only", false, "measure only the echo steps")
	flag.Parse()
	if *variants != "" {
		cfg.Variants = strings.Split(*variants, ",")
	}
	cfg.Command = strings.Join(append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...), " ")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := datapath.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmnic-datapath-bench:", err)
		os.Exit(1)
	}
	fmt.Print(rep.Markdown())
}
