package qemuguest

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// requireGuest skips (or, under VMNIC_REQUIRE_ROOT_TESTS=1, fails) when a
// guest cannot be booted here.
func requireGuest(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	if err := Available(); err != nil {
		testenv.Unavailable(t, "QEMU guest: %v", err)
	}
}

// TestGuestConsole boots a guest with no NIC and checks what Run reports.
func TestGuestConsole(t *testing.T) {
	requireGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	g, err := Boot(ctx, Config{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	t.Logf("boot time %s", g.BootTime())

	tests := []struct {
		name    string
		cmd     string
		want    string
		wantErr int // expected exit code, 0 = success
	}{
		{"echo", "echo hello", "hello\n", 0},
		{"stderr merged", "echo oops >&2", "oops\n", 0},
		{"exit code", "echo before; exit 3", "before\n", 3},
		{"false", "false", "", 1},
		{"multi-line", "for i in 1 2 3; do\n  echo line$i\ndone", "line1\nline2\nline3\n", 0},
		{"quotes", `echo "a'b" 'c"d'`, "a'b c\"d\n", 0},
		{"stdin is /dev/null", "cat", "", 0},
		{"markers in output", "echo '@@abc@@E 0'", "@@abc@@E 0\n", 0},
		{"no eth0 at boot", "ls /sys/class/net", "lo\n", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := g.Run(ctx, tt.cmd)
			if out != tt.want {
				t.Errorf("output %q, want %q", out, tt.want)
			}
			var ee *ExitError
			switch {
			case tt.wantErr == 0 && err != nil:
				t.Errorf("error %v", err)
			case tt.wantErr != 0 && !errors.As(err, &ee):
				t.Errorf("error %v, want exit %d", err, tt.wantErr)
			case tt.wantErr != 0 && ee.Code != tt.wantErr:
				t.Errorf("exit %d, want %d", ee.Code, tt.wantErr)
			}
		})
	}

	// A command that outlives its context is interrupted and the console
	// stays usable.
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = g.Run(sctx, "sleep 600")
	scancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("stuck command: error %v, want deadline exceeded", err)
	}
	if out, err := g.Run(ctx, "echo after"); err != nil || out != "after\n" {
		t.Errorf("after interrupt: %q, %v", out, err)
	}
	// The virtio-net driver is ready for a hot-added NIC.
	if out, err := g.Run(ctx, "ls /sys/bus/virtio/drivers"); err != nil || !strings.Contains(out, "virtio_net") {
		t.Errorf("virtio_net driver not loaded: %q, %v\n%s", out, err, g.ConsoleTail())
	}

	lctx, lcancel := context.WithTimeout(ctx, time.Second)
	if err := g.WaitForLink(lctx, "eth0"); err == nil {
		t.Errorf("WaitForLink(eth0) succeeded on a guest without NICs")
	}
	lcancel()

	pid, dir := g.PID(), g.WorkDir()
	if err := g.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("QEMU pid %d still exists after Close (kill 0: %v)", pid, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("work dir %s left behind (%v)", dir, err)
	}
	if _, err := g.Run(ctx, "true"); err == nil {
		t.Errorf("Run after Close succeeded")
	}
}

// TestBootFailsCleanly: a QEMU that exits at once makes Boot fail with its
// stderr in the error, leaving no work dir behind.
func TestBootFailsCleanly(t *testing.T) {
	requireGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir() + "/work"
	g, err := Boot(ctx, Config{WorkDir: dir, ExtraArgs: []string{"-no-such-option"}})
	if err == nil {
		g.Close()
		t.Fatal("Boot with a bad QEMU option succeeded")
	}
	if !strings.Contains(err.Error(), "no-such-option") {
		t.Errorf("error does not show QEMU's complaint: %v", err)
	}
	if _, err := os.Stat(dir + "/qmp.sock"); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}
