// Package reliability holds vmnic's crash, fault and hostile-input tests
// (root): the plugin, vmnicctl and the NRI hook, built with failpoints
// (-tags vmnic_failpoints), are killed at every registered failpoint and
// the following DEL, teardown or GC must leave the host exactly as before;
// VMM faults, a vanished netns, a read-only or full state directory and
// racing calls must give a clear error or the right result, never a corrupt
// record or a leaked device; hostile names and paths are refused.
//
// Names: netns vmnr-*, bridges vmnbrr*, subnets 10.207.0.0/16 and
// 10.217.0.0/16 (see internal/testkit/faultenv).
package reliability

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/faultenv"
	"github.com/vmnic/vmnic/internal/testkit/hostaudit"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

var (
	buildOnce sync.Once
	bins      *faultenv.Binaries
	buildErr  error
	buildDir  string
	slot      atomic.Int32
)

func TestMain(m *testing.M) {
	slot.Store(int32(os.Getpid() % 200))
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// binaries builds the failpoint binaries once per test binary.
func binaries(t *testing.T) *faultenv.Binaries {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vmnr-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		bins, buildErr = faultenv.Build(ctx, dir)
	})
	if buildErr != nil {
		t.Fatalf("build the failpoint binaries: %v", buildErr)
	}
	return bins
}

// newEnv makes an isolated vmnic environment (root only) and removes it at
// the end of the test.
func newEnv(t *testing.T) *faultenv.Env {
	t.Helper()
	testenv.RequireRoot(t)
	ref := testenv.CNIBinDir(t, "bridge", "ptp", "host-local")
	b := binaries(t)
	root, err := os.MkdirTemp("", "vmnr-")
	if err != nil {
		t.Fatal(err)
	}
	e, err := faultenv.NewEnv(root, b, ref, int(slot.Add(1)))
	if err != nil {
		os.RemoveAll(root)
		t.Fatal(err)
	}
	auditing = e
	t.Cleanup(func() {
		auditing = nil
		if t.Failed() {
			if data, err := os.ReadFile(filepath.Join(e.Root, "vmnic.log")); err == nil && len(data) > 0 {
				t.Logf("vmnic log (tail):\n%s", tail(string(data), 4000))
			}
		}
		if err := e.Close(); err != nil {
			t.Errorf("env cleanup: %v", err)
		}
	})
	return e
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// audit takes the env's snapshot.
func audit(t *testing.T, e *faultenv.Env) hostaudit.Snapshot {
	t.Helper()
	s, err := e.Audit()
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	return s
}

// same fails the test when the host differs from before. The kernel
// destroys a removed network namespace (and the veth peers in it)
// asynchronously, so a difference is looked at again for a few seconds
// before it counts.
func same(t *testing.T, what string, before hostaudit.Snapshot, after hostaudit.Snapshot, kinds ...string) {
	t.Helper()
	e := auditing
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, a := before, after
		if len(kinds) > 0 {
			b, a = before.Filter(kinds...), after.Filter(kinds...)
		}
		d := b.Diff(a)
		if d == "" {
			return
		}
		if e == nil || time.Now().After(deadline) {
			t.Errorf("%s: the host is not as before:\n%s", what, d)
			return
		}
		time.Sleep(200 * time.Millisecond)
		after = audit(t, e)
	}
}

// auditing is the env whose audit same repeats (tests run one at a time).
var auditing *faultenv.Env

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

var seq atomic.Int64

// id returns a fresh sandbox id with the harness prefix.
func id(tag string) string {
	return fmt.Sprintf("%s%s-%d", faultenv.NetnsPrefix, tag, seq.Add(1))
}

// allKindsBut lists the audit's kinds except some.
func allKindsBut(except ...string) []string {
	var out []string
	for _, k := range hostaudit.Kinds {
		if !slices.Contains(except, k) {
			out = append(out, k)
		}
	}
	return out
}
