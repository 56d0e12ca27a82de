// Command vmnic-bench measures vmnic's cost at pod start and NIC hot-plug
// next to the reference CNI plugins and writes report.md, report.json and
// PNG plots into -out. Run it as root through `make bench` (BENCH_QUICK=1
// for a smoke run).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/vmnic/vmnic/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vmnic-bench:", err)
		os.Exit(1)
	}
}

func run() error {
	root := findRepoRoot()
	cfg := bench.Config{RepoRoot: root, Log: os.Stderr}
	var sections, pluginEnv string
	flag.StringVar(&cfg.OutDir, "out", filepath.Join(root, ".bench"), "directory for report.md, report.json and the plots")
	flag.BoolVar(&cfg.Quick, "quick", os.Getenv("BENCH_QUICK") == "1", "smoke run: few iterations, small populations (also BENCH_QUICK=1)")
	flag.StringVar(&cfg.CNIBinDir, "cni-bin", envOr("VMNIC_CNI_BIN", filepath.Join(root, ".tools", "cni")), "reference CNI plugins")
	flag.StringVar(&cfg.BinDir, "bin", envOr("VMNIC_BIN", filepath.Join(root, "bin")), "vmnic binaries (vmnic, vmnic-nri)")
	flag.StringVar(&cfg.RefVmnic, "ref-vmnic", "", "a second vmnic plugin binary (e.g. built from an earlier commit), measured as the cycle variant vmnic-prev")
	flag.StringVar(&sections, "sections", "", "comma-separated sections to run (default all): "+strings.Join(bench.SectionNames, ","))
	flag.IntVar(&cfg.Iterations, "iterations", 0, "iterations of the cycle comparison (default 100, quick 8)")
	flag.StringVar(&pluginEnv, "plugin-env", "", "space-separated KEY=VALUE added to every plugin's environment (experiments)")
	flag.Parse()
	cfg.PluginEnv = strings.Fields(pluginEnv)
	if sections != "" {
		cfg.Sections = strings.Split(sections, ",")
		for _, s := range cfg.Sections {
			if !contains(bench.SectionNames, s) {
				return fmt.Errorf("unknown section %q (have %s)", s, strings.Join(bench.SectionNames, ","))
			}
		}
	}
	cfg.Command = strings.Join(append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...), " ")
	if q := os.Getenv("BENCH_QUICK"); q != "" {
		cfg.Command = "BENCH_QUICK=" + q + " " + cfg.Command
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("report: %s\n", filepath.Join(cfg.OutDir, "report.md"))
	for _, t := range rep.Targets {
		fmt.Printf("%-8s %-12s %s\n", t.Status, t.Name, t.Measured)
	}
	if len(rep.Errors) > 0 {
		return errors.New(strings.Join(rep.Errors, "; "))
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// findRepoRoot walks up from the working directory to the vmnic checkout:
// the directory whose go.mod declares the main module (bench/ is a module of
// its own, github.com/vmnic/vmnic/bench, inside it).
func findRepoRoot() string {
	dir, err := os.Getwd()
	if err != nil {
		return "."
	}
	for d := dir; ; d = filepath.Dir(d) {
		if data, err := os.ReadFile(filepath.Join(d, "go.mod")); err == nil && declaresMainModule(data) {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

func declaresMainModule(gomod []byte) bool {
	for _, line := range strings.Split(string(gomod), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return f[1] == "github.com/vmnic/vmnic"
		}
	}
	return false
}
