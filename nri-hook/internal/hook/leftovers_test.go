package hook

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/internal/sandbox"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// TestLeftoversKeepUnreadableRecords is issue 16 item 9 under issue 11's
// record recovery: the hook's leftover cleanup deleted the record and the
// owned netns on any load error other than not-found. Now an unreadable
// record is never deleted (it goes to the quarantine, its bytes kept), a
// netns the rebuild makes a record for again stays, and so does an owned
// netns when the rebuild failed. What a pod the runtime is done with leaves
// is removed once its record is rebuilt and torn down (the Stop/Remove
// path: Teardown, then removeLeftovers); a plain file at the owned path (a
// mount point without a namespace) is a leftover.
func TestLeftoversKeepUnreadableRecords(t *testing.T) {
	testenv.RequireRoot(t)
	const unreadable = `{"schema": 2, "sandbox_id": `
	for _, tc := range []struct {
		name         string
		namespace    bool // a real netns at the owned path, else a plain file
		failRebuild  bool
		teardown     bool // the Stop/Remove path: Teardown first
		wantNetns    bool
		wantRecorded bool
	}{
		{name: "rebuilt", namespace: true, wantNetns: true, wantRecorded: true},
		{name: "rebuild failed", namespace: true, failRebuild: true, wantNetns: true},
		{name: "no namespace", namespace: false},
		{name: "torn down after the rebuild", namespace: true, teardown: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _, store := newPlugin(t, "0.10.0")
			st, err := p.state()
			if err != nil {
				t.Fatal(err)
			}
			id := "vmnict-unreadable"
			path := ownedNetnsPath(st.cfg, id)
			if tc.namespace {
				if _, err := netns.Create(st.cfg.NetnsDir, sandbox.OwnedNetnsPrefix+id); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = netns.Remove(path) })
			} else if err := os.WriteFile(path, nil, 0o444); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(store.Path(id), []byte(unreadable), 0o600); err != nil {
				t.Fatal(err)
			}
			if tc.failRebuild {
				st.mgr.Store.SetRebuild(func(context.Context, string, string) (*netsetup.NetSetup, error) {
					return nil, errors.New("the host cannot be read")
				})
			}
			ctx := context.Background()
			if tc.teardown {
				if err := st.mgr.Teardown(ctx, id, sandbox.TeardownOptions{}); err != nil {
					t.Fatalf("Teardown of the damaged sandbox: %v", err)
				}
			}
			if err := p.removeLeftovers(ctx, st, id); err != nil {
				t.Fatalf("removeLeftovers: %v", err)
			}

			q, err := store.Quarantine()
			if err != nil {
				t.Fatal(err)
			}
			if len(q) != 1 || q[0].ID != id {
				t.Fatalf("quarantine = %+v, want the unreadable record of %s", q, id)
			}
			if data, err := os.ReadFile(q[0].Path); err != nil || string(data) != unreadable {
				t.Errorf("quarantined file = %q, %v; want the unreadable bytes kept", data, err)
			}
			_, nserr := netsetup.IdentifyNetns(path)
			if _, lerr := os.Lstat(path); tc.wantNetns && nserr != nil {
				t.Errorf("the owned netns was removed (%v, %v)", nserr, lerr)
			} else if !tc.wantNetns && lerr == nil {
				t.Errorf("the owned path %s stayed", path)
			}
			rec, err := store.Get(id)
			switch {
			case tc.wantRecorded && err != nil:
				t.Errorf("no rebuilt record: %v", err)
			case tc.wantRecorded && (!rec.NetnsOwned || rec.Quarantined == ""):
				t.Errorf("rebuilt record: owned %v, quarantined %q; want the owned netns and the quarantined file", rec.NetnsOwned, rec.Quarantined)
			case !tc.wantRecorded && !errors.Is(err, netsetup.ErrNotFound):
				t.Errorf("record after removeLeftovers = %v, want none", err)
			}
		})
	}
}
