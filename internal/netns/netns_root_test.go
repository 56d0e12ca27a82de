package netns

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/vmnic/vmnic/internal/testenv"
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
