package netsetup

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestPruneRemovesOnlyLeftovers(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	self, err := IdentifyNetns("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	// A live sandbox: its record and netns index entry stay.
	live := New("live")
	live.NetnsPath = "/proc/self/ns/net"
	live.NetnsID = &self
	if err := s.Create(ctx, live); err != nil {
		t.Fatal(err)
	}
	// Leftovers of killed processes: an index entry naming a sandbox
	// without a record, an index entry with garbage, an old temp file of an
	// interrupted write, and a fresh temp file (a write that may still be
	// running: kept); and an older vmnic's per-sandbox lock files (of a
	// sandbox without a record and of a live one: nothing locks them now).
	write := func(p, data string, age time.Duration) {
		t.Helper()
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		if age > 0 {
			old := time.Now().Add(-age)
			os.Chtimes(p, old, old)
		}
	}
	dir := s.Dir()
	if err := os.Mkdir(filepath.Join(dir, "locks"), 0o700); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(dir, "locks", "dead.lock"), "", 0)
	write(filepath.Join(dir, "locks", "live.lock"), "", 0)
	// An older vmnic still running holds its flock on held.lock: it stays.
	write(filepath.Join(dir, "locks", "held.lock"), "", 0)
	held, err := os.Open(filepath.Join(dir, "locks", "held.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := unix.Flock(int(held.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	write(filepath.Join(dir, "netns", "1-2"), "dead\n", 0)
	write(filepath.Join(dir, "netns", "3-4"), "../x\n", 0)
	write(filepath.Join(dir, "sandboxes", ".tmp-old"), "{", 2*time.Minute)
	write(filepath.Join(dir, "sandboxes", ".tmp-new"), "{", 0)

	removed, err := s.Prune(ctx, time.Second)
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	var got []string
	for _, p := range removed {
		rel, _ := filepath.Rel(dir, p)
		got = append(got, rel)
	}
	sort.Strings(got)
	want := []string{"locks/dead.lock", "locks/live.lock", "netns/1-2", "netns/3-4", "sandboxes/.tmp-old"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("Prune removed %v, want %v", got, want)
	}
	for _, keep := range []string{"sandboxes/live.json", "sandboxes/.tmp-new", "netns/" + strings.ReplaceAll(self.String(), ":", "-")} {
		if _, err := os.Stat(filepath.Join(dir, keep)); err != nil {
			t.Errorf("Prune removed %s, which a live sandbox or a running write uses: %v", keep, err)
		}
	}
	// The old lock directory stays (an older vmnic opens files in it
	// without making it), with the held file in it.
	if _, err := os.Lstat(filepath.Join(dir, "locks", "held.lock")); err != nil {
		t.Errorf("Prune removed an old lock file a process holds: %v", err)
	}
	if id, err := s.FindByNetns(self); err != nil || id != "live" {
		t.Fatalf("the live sandbox is no longer found by its netns: %q, %v", id, err)
	}

	// A lock held by a live process is skipped, not waited on forever: the
	// entry of a busy sandbox without a record stays.
	tx, err := s.Lock(ctx, "busy")
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Unlock()
	write(filepath.Join(dir, "netns", "5-6"), "busy\n", 0)
	if _, err := s.Prune(ctx, 50*time.Millisecond); err != nil {
		t.Fatalf("Prune with a busy lock: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "netns", "5-6")); err != nil {
		t.Fatalf("Prune removed an entry of a sandbox whose lock a live process holds: %v", err)
	}
}

func TestPruneContainerIndex(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	live := New("live")
	live.PutNIC(NIC{ID: "eth0", IfName: "eth0", Tap: "tapeth0", ContainerID: "used", State: NICPending})
	if err := s.Create(ctx, live); err != nil {
		t.Fatal(err)
	}
	// Entries a killed process left: one naming a sandbox without a record,
	// one naming a live sandbox none of whose NICs is the container's; and
	// one still in use.
	for cid, id := range map[string]string{"dead-c": "dead", "unused": "live", "used": "live"} {
		if err := s.IndexContainer(cid, id); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(s.Dir(), "cni-containers")
	old := filepath.Join(dir, ".tmp-old")
	if err := os.WriteFile(old, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	then := time.Now().Add(-2 * time.Minute)
	os.Chtimes(old, then, then)

	// A sandbox whose lock a live process holds keeps its entries.
	if err := s.IndexContainer("busy-c", "busy"); err != nil {
		t.Fatal(err)
	}
	tx, err := s.Lock(ctx, "busy")
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Unlock()

	removed, err := s.Prune(ctx, 50*time.Millisecond)
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	var got []string
	for _, p := range removed {
		rel, _ := filepath.Rel(s.Dir(), p)
		got = append(got, rel)
	}
	sort.Strings(got)
	want := []string{"cni-containers/.tmp-old", "cni-containers/dead-c", "cni-containers/unused"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("Prune removed %v, want %v", got, want)
	}
	if s.ContainerSandbox("used") != "live" || s.ContainerSandbox("busy-c") != "busy" {
		t.Fatalf("Prune removed an entry in use: used=%q busy-c=%q", s.ContainerSandbox("used"), s.ContainerSandbox("busy-c"))
	}
}
