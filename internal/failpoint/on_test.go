//go:build vmnic_failpoints

package failpoint

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The failpoint build is tested by running this test binary again as a
// child (TestHelperProcess) with VMNIC_FAILPOINTS set: crash must kill it
// with SIGKILL, error must come back from Inject, and every firing must be
// logged before it acts.

const helperEnv = "VMNIC_FAILPOINT_HELPER"

func TestHelperProcess(t *testing.T) {
	name := os.Getenv(helperEnv)
	if name == "" {
		t.Skip("helper process only")
	}
	for i := 0; i < 3; i++ {
		if err := Inject(name); err != nil {
			os.Stdout.WriteString("error: " + err.Error() + "\n")
			os.Exit(3)
		}
	}
	os.Stdout.WriteString("passed\n")
	os.Exit(0)
}

func runHelper(t *testing.T, point, spec string) (string, *exec.ExitError, string) {
	t.Helper()
	log := filepath.Join(t.TempDir(), "fp.log")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+point, Env+"="+spec, LogEnv+"="+log)
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("run helper: %v", err)
	}
	data, _ := os.ReadFile(log)
	return string(out), ee, string(data)
}

func TestOnCrash(t *testing.T) {
	if !Enabled {
		t.Fatal("Enabled is false in a vmnic_failpoints build")
	}
	_, ee, log := runHelper(t, "tap-created", "tap-created=crash")
	if ee == nil {
		t.Fatal("crash: the helper exited normally")
	}
	ws := ee.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("crash: helper ended with %v, want SIGKILL", ee)
	}
	if !strings.HasPrefix(log, "tap-created crash ") {
		t.Errorf("crash not logged before it acted: %q", log)
	}
}

func TestOnError(t *testing.T) {
	out, ee, log := runHelper(t, "host-ready", "host-ready=error")
	if ee == nil || ee.ExitCode() != 3 || !strings.Contains(out, "failpoint host-ready: injected error") {
		t.Fatalf("error: exit %v, output %q", ee, out)
	}
	if strings.Count(log, "host-ready error") != 1 {
		t.Errorf("log = %q", log)
	}
}

func TestOnNthHit(t *testing.T) {
	// Fires only on the third hit: two passes, then the crash.
	_, ee, log := runHelper(t, "teardown-nic", "teardown-nic=crash@3")
	if ee == nil || !ee.Sys().(syscall.WaitStatus).Signaled() {
		t.Fatalf("crash@3: helper ended with %v", ee)
	}
	if strings.Count(log, "teardown-nic") != 1 {
		t.Errorf("log = %q", log)
	}
	out, ee, _ := runHelper(t, "teardown-nic", "teardown-nic=crash@4")
	if ee != nil || !strings.Contains(out, "passed") {
		t.Fatalf("crash@4 fired within three hits: %v %q", ee, out)
	}
}

func TestOnOtherPointUntouched(t *testing.T) {
	out, ee, log := runHelper(t, "tap-created", "host-ready=crash")
	if ee != nil || !strings.Contains(out, "passed") || log != "" {
		t.Fatalf("an unarmed point acted: %v %q %q", ee, out, log)
	}
}

func TestOnBadSpecFailsLoudly(t *testing.T) {
	out, ee, _ := runHelper(t, "tap-created", "tap-creatd=crash")
	if ee == nil || !strings.Contains(out, "unknown failpoint") {
		t.Fatalf("a misspelt point did not fail the run: %v %q", ee, out)
	}
}

func TestOnUnregisteredPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Inject of an unregistered name did not panic")
		}
	}()
	Inject("not-registered")
}
