package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// TestGCLeavesUnreadableRecords is issue 16 item 9: vmnicctl gc removed a
// vmnic-* netns whose record exists but cannot be read. That belongs to
// record recovery: gc leaves the netns and the record and says so.
func TestGCLeavesUnreadableRecords(t *testing.T) {
	testenv.RequireRoot(t)
	c := newCtl(t)
	st, err := netsetup.Open(c.state)
	if err != nil {
		t.Fatal(err)
	}
	path, err := netns.Create(c.netnsDir, "vmnic-vmnict-bad")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Remove(path) })
	if err := os.WriteFile(st.Path("vmnict-bad"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, out, errOut := c.run("gc")
	if _, err := netsetup.IdentifyNetns(path); err != nil {
		t.Errorf("gc removed the netns of an unreadable record: %v\n%s%s", err, out, errOut)
	}
	if _, err := os.Lstat(st.Path("vmnict-bad")); err != nil {
		t.Errorf("gc removed an unreadable record: %v", err)
	}
}

// TestGCWaitsForPrepare is issue 16 item 9: Prepare makes the netns before
// it saves the record (holding the sandbox's lock); a gc in that window
// unmounted the live sandbox's netns. gc takes the lock and checks again.
func TestGCWaitsForPrepare(t *testing.T) {
	testenv.RequireRoot(t)
	c := newCtl(t)
	st, err := netsetup.Open(c.state)
	if err != nil {
		t.Fatal(err)
	}
	id := "vmnict-window"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tx, err := st.Lock(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	path, err := netns.Create(c.netnsDir, "vmnic-"+id)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Remove(path) })
	done := make(chan string, 1)
	go func() {
		_, out, errOut := c.run("gc")
		done <- out + errOut
	}()
	select {
	case out := <-done:
		t.Logf("gc finished while the sandbox was locked:\n%s", out)
	case <-time.After(500 * time.Millisecond):
	}
	nsid, err := netsetup.IdentifyNetns(path)
	if err != nil {
		t.Fatalf("gc removed the netns of a sandbox being prepared: %v", err)
	}
	rec := netsetup.New(id)
	rec.NetnsPath, rec.NetnsID, rec.NetnsOwned = path, &nsid, true
	if err := tx.Save(rec); err != nil {
		t.Fatal(err)
	}
	tx.Unlock()
	<-done
	if _, err := netsetup.IdentifyNetns(filepath.Clean(path)); err != nil {
		t.Errorf("gc removed the netns of a prepared sandbox: %v", err)
	}
}
