package hook

import (
	"context"
	"os"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// TestLeftoversKeepUnreadableRecords is issue 16 item 9: the hook's
// leftover cleanup deleted the record and the owned netns on any load
// error other than not-found. An unreadable record belongs to record
// recovery: both stay.
func TestLeftoversKeepUnreadableRecords(t *testing.T) {
	testenv.RequireRoot(t)
	p, _, store := newPlugin(t, "0.10.0")
	st, err := p.state()
	if err != nil {
		t.Fatal(err)
	}
	id := "vmnict-unreadable"
	if err := os.WriteFile(store.Path(id), []byte(`{"schema": 2, "sandbox_id": `), 0o600); err != nil {
		t.Fatal(err)
	}
	// A stand-in for the owned netns (a leftover mount point).
	path := ownedNetnsPath(st.cfg, id)
	if err := os.WriteFile(path, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	err = p.removeLeftovers(context.Background(), st, id)
	if _, serr := os.Lstat(store.Path(id)); serr != nil {
		t.Errorf("removeLeftovers (%v) removed an unreadable record: %v", err, serr)
	}
	if _, serr := os.Lstat(path); serr != nil {
		t.Errorf("removeLeftovers (%v) removed the netns of an unreadable record: %v", err, serr)
	}
}
