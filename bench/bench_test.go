package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// TestQuickRun runs the whole benchmark in quick mode and checks that the
// report has every section, the targets and the plots, so `make bench`
// cannot rot. It asserts no timing: speed is what the report is for.
func TestQuickRun(t *testing.T) {
	testenv.RequireRoot(t)
	if testing.Short() {
		t.Skip("skipped in -short mode: the quick bench takes a minute or two")
	}
	cniBin := testenv.CNIBinDir(t, referencePlugins...)
	vmnic := testenv.Binary(t, "vmnic")
	out := t.TempDir()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var log bytes.Buffer
	rep, err := Run(ctx, Config{Quick: true, OutDir: out, RepoRoot: testenv.RepoRoot(t),
		CNIBinDir: cniBin, BinDir: filepath.Dir(vmnic), Log: &log, Command: "make bench-test"})
	t.Log(log.String())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(rep.Errors) > 0 {
		t.Errorf("sections failed: %v", rep.Errors)
	}

	md, err := os.ReadFile(filepath.Join(out, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range Headings {
		if !strings.Contains(string(md), "\n"+h+"\n") {
			t.Errorf("report.md lacks section %q", h)
		}
	}
	// Sections that need nothing beyond the plugins must have run; the
	// others may skip only when root tests are not required.
	mustRun := map[string]bool{SecProcStart: true, SecCycle: true, SecSteps: true, SecConcurrency: true, SecScale: true, SecTeardown: true}
	for sec, why := range rep.Skipped {
		if mustRun[sec] || testenv.Required() {
			t.Errorf("section %s skipped: %s", sec, why)
		} else {
			t.Logf("section %s skipped: %s", sec, why)
		}
	}

	var back Report
	data, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	wantVariants := 8 // baseline, tuning, vmnic, vmnic-fsync, baseline-4nic, vmnic-4nic, peer-tcredirect, tap
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		wantVariants++ // vmnic-tmpfs
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(vmnic), prevVmnic)); err == nil {
		wantVariants++ // vmnic-prev
	}
	if back.Cycle == nil || len(back.Cycle.Variants) != wantVariants {
		t.Errorf("cycle section: %+v, want %d variants", back.Cycle, wantVariants)
	} else {
		for _, v := range back.Cycle.Variants {
			if v.Cycle.N == 0 || v.Ratio <= 0 {
				t.Errorf("variant %s: %d samples, ratio %v", v.Name, v.Cycle.N, v.Ratio)
			}
		}
	}
	if back.Cycle != nil && (len(back.Cycle.AddVsPeer) == 0 || back.Cycle.AddVsPeer[0].Ratio <= 0) {
		t.Errorf("cycle section: no ADD ratio against peer-tcredirect: %+v", back.Cycle.AddVsPeer)
	}
	if len(back.Targets) != 7 {
		t.Errorf("targets: %+v", back.Targets)
	}
	for _, tg := range back.Targets {
		if tg.Status == "n/a" && !(tg.Name == "NRI RunPodSandbox" && rep.Skipped[SecNRI] != "" && !testenv.Required()) {
			t.Errorf("target %s not measured: %s", tg.Name, tg.Measured)
		}
	}
	if sc := back.Steps; sc == nil || len(sc.Contexts) == 0 || sc.Contexts[0].Recorded == 0 {
		t.Errorf("no step times recorded by the vmnic plugin: %+v", sc)
	}

	for _, name := range []string{PlotScale, PlotConcurrency} {
		f, err := os.Open(filepath.Join(out, name))
		if err != nil {
			t.Errorf("plot %s: %v", name, err)
			continue
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Errorf("plot %s: %v", name, err)
			continue
		}
		if img.Bounds().Dx() < 400 {
			t.Errorf("plot %s is %v", name, img.Bounds())
		}
		if !strings.Contains(string(md), "("+name+")") {
			t.Errorf("report.md does not show %s", name)
		}
	}
}
