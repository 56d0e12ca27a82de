package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// This file splits the bench's pod starts by containerd's and vmnic-nri's
// log timestamps, to show where a VM pod's RunPodSandbox differs from a
// plain pod's. containerd 2.4 (internal/cri/server/sandbox_run.go) logs
// "RunPodSandbox for <metadata>" first, sets up the pod network (the CNI
// chain) before it starts the sandbox's shim ("connecting to shim <id>"),
// and calls the NRI plugins' RunPodSandbox after the sandbox started, just
// before it logs "… returns sandbox id".

// podPhases are one pod start's parts, from the logs.
type podPhases struct {
	// ToShim: RunPodSandbox begun → shim connect (netns, CNI chain).
	ToShim time.Duration
	// FromShim: shim connect → RunPodSandbox returned (the sandbox
	// container's start, then the NRI RunPodSandbox of every plugin).
	FromShim time.Duration
	// NRI is vmnic-nri's own RunPodSandbox handler time (its log's
	// "took"); 0 for a plain pod.
	NRI time.Duration
}

var (
	reLogTime   = regexp.MustCompile(`^time="?([0-9T:.\-]+)Z"?`)
	reRunBegin  = regexp.MustCompile(`msg="RunPodSandbox for name:\\"([^\\]+)\\"`)
	reRunEnd    = regexp.MustCompile(`returns sandbox id \\"([0-9a-f]+)\\"`)
	reShim      = regexp.MustCompile(`msg="connecting to shim ([0-9a-f]+)"`)
	reNRIPrep   = regexp.MustCompile(`msg="VM pod prepared".*\(sandbox ([0-9a-f]+)\).* took=(\S+)`)
	timeLayouts = []string{"2006-01-02T15:04:05.999999999", "2006-01-02T15:04:05"}
)

func logTime(line string) (time.Time, bool) {
	m := reLogTime.FindStringSubmatch(line)
	if m == nil {
		return time.Time{}, false
	}
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, m[1]); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// phasesFromLogs reads the run dir's containerd.log and vmnic-nri.log and
// returns the phases of the pods named in ids (sandbox id → pod name).
func phasesFromLogs(dir string, ids map[string]string) (map[string]podPhases, error) {
	begin, shim, end := map[string]time.Time{}, map[string]time.Time{}, map[string]time.Time{}
	err := eachLine(filepath.Join(dir, "containerd.log"), func(l string) {
		t, ok := logTime(l)
		if !ok {
			return
		}
		if m := reRunEnd.FindStringSubmatch(l); m != nil {
			end[m[1]] = t
		} else if m := reRunBegin.FindStringSubmatch(l); m != nil {
			begin[m[1]] = t
		} else if m := reShim.FindStringSubmatch(l); m != nil {
			shim[m[1]] = t
		}
	})
	if err != nil {
		return nil, err
	}
	nri := map[string]time.Duration{}
	err = eachLine(filepath.Join(dir, "vmnic-nri.log"), func(l string) {
		if m := reNRIPrep.FindStringSubmatch(l); m != nil {
			if d, err := time.ParseDuration(strings.Trim(m[2], `"`)); err == nil {
				nri[m[1]] = d
			}
		}
	})
	if err != nil {
		return nil, err
	}
	out := map[string]podPhases{}
	for id, name := range ids {
		b, s, e := begin[name], shim[id], end[id]
		if b.IsZero() || s.IsZero() || e.IsZero() {
			continue
		}
		out[id] = podPhases{ToShim: s.Sub(b), FromShim: e.Sub(s), NRI: nri[id]}
	}
	return out, nil
}

func eachLine(path string, fn func(string)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<16)
	for {
		l, err := r.ReadString('\n')
		if l != "" {
			fn(l)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// printPhases prints the medians of each phase for the plain and the VM
// pods (sandbox ids).
func printPhases(w io.Writer, dir string, plain, vm []string) {
	ids := map[string]string{}
	for _, l := range [][]string{plain, vm} {
		for _, id := range l {
			ids[id] = ""
		}
	}
	names, err := podNamesFromLog(dir, ids)
	if err != nil {
		fmt.Fprintf(w, "  (no phase split: %v)\n", err)
		return
	}
	ph, err := phasesFromLogs(dir, names)
	if err != nil {
		fmt.Fprintf(w, "  (no phase split: %v)\n", err)
		return
	}
	row := func(what string, ids []string) {
		var toShim, fromShim, nri []time.Duration
		for _, id := range ids {
			if p, ok := ph[id]; ok {
				toShim, fromShim = append(toShim, p.ToShim), append(fromShim, p.FromShim)
				if p.NRI > 0 {
					nri = append(nri, p.NRI)
				}
			}
		}
		ms := func(ds []time.Duration) string {
			if len(ds) == 0 {
				return "    —"
			}
			m, _ := stats(ds)
			return strconv.FormatFloat(float64(m.Microseconds())/1000, 'f', 1, 64)
		}
		fmt.Fprintf(w, "  %-6s %3d pods: begin → shim (netns, CNI chain) %7s ms   shim → return (sandbox start, NRI) %7s ms   vmnic-nri handler %5s ms\n",
			what, len(toShim), ms(toShim), ms(fromShim), ms(nri))
	}
	fmt.Fprintf(w, "Where the time goes (medians, from containerd.log and vmnic-nri.log):\n")
	row("plain", plain)
	row("VM", vm)
}

// podNamesFromLog maps the sandbox ids to their pod names through
// containerd's "RunPodSandbox for name:… returns sandbox id" lines.
func podNamesFromLog(dir string, ids map[string]string) (map[string]string, error) {
	reName := regexp.MustCompile(`RunPodSandbox for name:\\"([^\\]+)\\".*returns sandbox id \\"([0-9a-f]+)\\"`)
	err := eachLine(filepath.Join(dir, "containerd.log"), func(l string) {
		if m := reName.FindStringSubmatch(l); m != nil {
			if _, ok := ids[m[2]]; ok {
				ids[m[2]] = m[1]
			}
		}
	})
	return ids, err
}
