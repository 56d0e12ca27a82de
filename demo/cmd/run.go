package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// failure unwinds the demo to its cleanup (see main).
type failure struct{ err error }

// Terminal styles, empty when stdout is not a terminal (a CI log).
var bold, green, red, reset = "\033[1m", "\033[32m", "\033[31m", "\033[0m"

func init() {
	if _, err := unix.IoctlGetTermios(int(os.Stdout.Fd()), unix.TCGETS); err != nil {
		bold, green, red, reset = "", "", "", ""
	}
}

func (d *demo) fail(format string, args ...any) {
	panic(failure{fmt.Errorf(format, args...)})
}

func (d *demo) check(err error, format string, args ...any) {
	if err != nil {
		d.fail("%s: %w", fmt.Sprintf(format, args...), err)
	}
}

// header starts a numbered step.
func (d *demo) header(title string) {
	d.endStep()
	d.step++
	d.stepTitle = title
	d.stepStart = time.Now()
	fmt.Printf("\n%s==> [%d] %s%s\n", bold, d.step, title, reset)
}

// endStep prints the time the current step took and keeps it for the summary.
func (d *demo) endStep() {
	if d.step == 0 || d.stepTitle == "" {
		return
	}
	took := time.Since(d.stepStart)
	d.timings = append(d.timings, timing{d.step, d.stepTitle, took})
	fmt.Printf("    (step %d took %s)\n", d.step, took.Round(time.Millisecond))
	d.stepTitle = ""
}

func (d *demo) note(format string, args ...any) {
	fmt.Printf("    %s\n", fmt.Sprintf(format, args...))
}

func (d *demo) ok(format string, args ...any) {
	fmt.Printf("    %sok%s  %s\n", green, reset, fmt.Sprintf(format, args...))
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "      " + strings.ReplaceAll(s, "\n", "\n      ") + "\n"
}

// display shortens the command for printing: binaries by base name.
func display(name string, args []string) string {
	parts := append([]string{filepath.Base(name)}, args...)
	for i, p := range parts {
		if strings.ContainsAny(p, " \t;'\"") {
			parts[i] = "'" + p + "'"
		}
	}
	return strings.Join(parts, " ")
}

// exec runs a command, prints it and its output, and returns the output.
// env entries are added to the environment (and the interesting ones shown).
func (d *demo) exec(env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(d.ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	shown := ""
	for _, e := range env {
		if strings.HasPrefix(e, "CNI_IFNAME=") || strings.HasPrefix(e, "CNI_ARGS=") {
			shown += e + " "
		}
	}
	fmt.Printf("    $ %s%s\n", shown, display(name, args))
	err := cmd.Run()
	fmt.Print(indent(out.String()))
	if err != nil {
		return out.String(), fmt.Errorf("%s: %w", display(name, args), err)
	}
	return out.String(), nil
}

// mustExec is exec that fails the demo on error.
func (d *demo) mustExec(env []string, name string, args ...string) string {
	out, err := d.exec(env, name, args...)
	d.check(err, "command failed")
	return out
}

// quiet runs a command without printing (cleanup, probes).
func (d *demo) quiet(env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// shell runs a shell pipeline (for display commands such as
// `ip netns list | grep …`), printing it and its output.
func (d *demo) shell(pipeline string) string {
	ctx, cancel := context.WithTimeout(d.ctx, time.Minute)
	defer cancel()
	fmt.Printf("    $ %s\n", pipeline)
	out, err := exec.CommandContext(ctx, "bash", "-c", pipeline).CombinedOutput()
	fmt.Print(indent(string(out)))
	d.check(err, "command failed")
	return string(out)
}

var receivedRE = regexp.MustCompile(`(\d+) (packets )?received`)

// received is the reply count in a ping summary (iputils or busybox).
func received(out string) int {
	m := receivedRE.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
