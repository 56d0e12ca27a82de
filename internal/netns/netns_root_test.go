package netns

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

func TestCreateRemove(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	p, err := Create(dir, "vmnic-a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Remove(p) })
	id, err := netsetup.IdentifyNetns(p)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := netsetup.IdentifyNetns("/proc/self/ns/net")
	if id == self {
		t.Fatal("the new netns is the test's own")
	}
	again, err := Create(dir, "vmnic-a")
	if err != nil || again != p {
		t.Fatalf("Create again: %q %v", again, err)
	}
	if id2, _ := netsetup.IdentifyNetns(again); id2 != id {
		t.Error("Create again made a new namespace")
	}
	// A leftover mount point (no namespace) is replaced.
	stale := filepath.Join(dir, "vmnic-b")
	os.WriteFile(stale, nil, 0o444)
	if p2, err := Create(dir, "vmnic-b"); err != nil {
		t.Fatal(err)
	} else if _, err := netsetup.IdentifyNetns(p2); err != nil {
		t.Errorf("leftover not replaced: %v", err)
	}
	got, err := List(dir, "vmnic-")
	if err != nil || !slices.Equal(got, []string{p, stale}) {
		t.Errorf("List = %v %v", got, err)
	}
	for _, q := range []string{p, stale, p} {
		if err := Remove(q); err != nil {
			t.Errorf("Remove %s: %v", q, err)
		}
	}
	if got, _ := List(dir, "vmnic-"); len(got) != 0 {
		t.Errorf("left: %v", got)
	}
	if _, err := Create(dir, "../x"); err == nil {
		t.Error("a name with '/' was accepted")
	}
	if got, err := List(filepath.Join(dir, "missing"), ""); err != nil || got != nil {
		t.Errorf("List of a missing dir: %v %v", got, err)
	}
}

func TestDo(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	p, err := Create(dir, "vmnic-do")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Remove(p) })
	want, err := netsetup.IdentifyNetns(p)
	if err != nil {
		t.Fatal(err)
	}
	home, err := netsetup.IdentifyNetns("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	var inside netsetup.NetnsID
	errFn := errors.New("from fn")
	err = Do(p, func() error {
		inside, err = netsetup.IdentifyNetns("/proc/thread-self/ns/net")
		if err != nil {
			t.Error(err)
		}
		return errFn
	})
	if !errors.Is(err, errFn) || IsGone(err) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if IsGone(Do(p, func() error { return fs.ErrNotExist })) {
		t.Error("IsGone took fn's ENOENT for a missing netns")
	}
	if inside != want {
		t.Errorf("fn ran in netns %v, want %v", inside, want)
	}
	// Every thread of the process is back home: run many goroutines and
	// look at the netns of each one's thread.
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			if got, _ := netsetup.IdentifyNetns("/proc/thread-self/ns/net"); got != home {
				t.Errorf("a thread is in netns %v after Do, want %v", got, home)
			}
		}()
	}
	wg.Wait()

	tests := []struct {
		name string
		path string
		want error
	}{
		{"missing", filepath.Join(dir, "missing"), fs.ErrNotExist},
		{"plain file", filepath.Join(dir, "plain"), ErrNotNetns},
		{"mount namespace", "/proc/self/ns/mnt", ErrNotNetns},
	}
	os.WriteFile(filepath.Join(dir, "plain"), nil, 0o644)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			err := Do(tc.path, func() error { ran = true; return nil })
			if !errors.Is(err, tc.want) || !IsGone(err) {
				t.Errorf("Do(%s) = %v, want %v (and IsGone)", tc.path, err, tc.want)
			}
			if ran {
				t.Error("fn ran")
			}
		})
	}
}

func TestMountedFindsBindMountedNetns(t *testing.T) {
	testenv.RequireRoot(t)
	dir := filepath.Join(t.TempDir(), "with space")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := Create(dir, "vmnict-mounted")
	if err != nil {
		t.Fatal(err)
	}
	defer Remove(p)
	got, err := Mounted()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, p) {
		t.Fatalf("Mounted() = %q, want %s among them", got, p)
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := UnescapeMount(`/a\040b\134c`); got != `/a b\c` {
		t.Fatalf("unescapeMount = %q", got)
	}
}
