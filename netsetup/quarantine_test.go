package netsetup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// unreadableKinds makes, for each kind of unreadable record, the file (or
// link, or directory) at the record path of sandbox id.
func unreadableKinds(t *testing.T) map[string]func(s *Store, id string) {
	t.Helper()
	write := func(data string) func(s *Store, id string) {
		return func(s *Store, id string) {
			if err := os.WriteFile(s.Path(id), []byte(data), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return map[string]func(s *Store, id string){
		"empty":         write(""),
		"truncated":     write(`{"schema": 2, "sandbox_id": "x", "pha`),
		"not json":      write("\x00\x01garbage"),
		"future schema": write(`{"schema": 99, "sandbox_id": "x"}`),
		"other id":      write(`{"schema": 2, "sandbox_id": "someone-else", "phase": "prepared", "network_configs": []}`),
		"symlink": func(s *Store, id string) {
			target := filepath.Join(t.TempDir(), "target.json")
			os.WriteFile(target, []byte(`{"schema": 2, "sandbox_id": "`+id+`", "phase": "prepared", "network_configs": []}`), 0o600)
			if err := os.Symlink(target, s.Path(id)); err != nil {
				t.Fatal(err)
			}
		},
		"directory": func(s *Store, id string) {
			if err := os.Mkdir(s.Path(id), 0o700); err != nil {
				t.Fatal(err)
			}
		},
	}
}

func TestUnreadableRecordIsQuarantined(t *testing.T) {
	for kind, mk := range unreadableKinds(t) {
		t.Run(kind, func(t *testing.T) {
			s := openStore(t)
			id := "sb-1"
			mk(s, id)
			ids, err := s.IDs()
			if err != nil || len(ids) != 1 || ids[0] != id {
				t.Fatalf("IDs = %v, %v: the unreadable record must be listed", ids, err)
			}
			_, err = s.Get(id)
			if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "quarantined") {
				t.Fatalf("Get = %v, want ErrNotFound saying it was quarantined", err)
			}
			if _, err := os.Lstat(s.Path(id)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the record is still in place: %v", err)
			}
			q, err := s.Quarantine()
			if err != nil || len(q) != 1 || q[0].ID != id || q[0].Reason == "" {
				t.Fatalf("Quarantine = %+v, %v", q, err)
			}
			if _, err := os.Lstat(q[0].Path); err != nil {
				t.Fatalf("quarantined file: %v", err)
			}
			// The sandbox is usable again, and nothing is left locked.
			recs, err := s.List()
			if err != nil || len(recs) != 0 {
				t.Fatalf("List = %v, %v", recs, err)
			}
			if err := s.Create(context.Background(), New(id)); err != nil {
				t.Fatalf("Create after the quarantine: %v", err)
			}
		})
	}
}

func TestQuarantinedRecordIsRebuilt(t *testing.T) {
	for kind, mk := range unreadableKinds(t) {
		t.Run(kind, func(t *testing.T) {
			s := openStore(t)
			var hints []string
			s.SetRebuild(func(_ context.Context, id, hint string) (*NetSetup, error) {
				hints = append(hints, hint)
				rec := New(id)
				rec.PutNIC(NIC{IfName: "eth0", Tap: "tapeth0", State: NICPending, HostReady: true, Recovered: true})
				return rec, nil
			})
			mk(s, "sb-1")
			tx, err := s.Lock(context.Background(), "sb-1")
			if err != nil {
				t.Fatal(err)
			}
			tx.SetHint("/run/netns/x")
			rec, err := tx.Load()
			if err != nil {
				t.Fatal(err)
			}
			r := tx.Recovery()
			tx.Unlock()
			if r == nil || !r.Rebuilt || r.Reason == "" || rec.Quarantined != r.Quarantined || len(rec.NetworkConfigs) != 1 {
				t.Fatalf("Load = %+v, recovery %+v", rec, r)
			}
			if len(hints) != 1 || hints[0] != "/run/netns/x" {
				t.Fatalf("rebuild hints = %q", hints)
			}
			got, err := s.Get("sb-1")
			if err != nil || got.Quarantined == "" || got.Phase != PhaseConfigured {
				t.Fatalf("Get after the rebuild = %+v, %v", got, err)
			}
		})
	}
}

// TestTruncatedRecordAtEveryByte cuts a real two-NIC record at every byte
// offset: each load either reads the whole record (a cut that leaves valid
// JSON, the trailing newline) or quarantines it, and never fails.
func TestTruncatedRecordAtEveryByte(t *testing.T) {
	s := openStore(t)
	rec := New("sb-2")
	rec.NetnsPath = "/var/run/netns/vmnic-sb-2"
	for _, n := range []string{"eth0", "net1"} {
		rec.PutNIC(NIC{ID: n, IfName: n, Tap: "tap" + n, MAC: "02:00:00:00:00:01", MTU: 1500, IPs: []string{"10.0.0.2/24"}, State: NICAttached, HostReady: true})
	}
	if err := s.Create(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	full, err := os.ReadFile(s.Path("sb-2"))
	if err != nil {
		t.Fatal(err)
	}
	quarantined := 0
	for n := 0; n < len(full); n++ {
		if err := os.WriteFile(s.Path("sb-2"), full[:n], 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get("sb-2")
		switch {
		case err == nil:
			if len(got.NetworkConfigs) != 2 {
				t.Fatalf("cut at %d: read %d NICs", n, len(got.NetworkConfigs))
			}
		case errors.Is(err, ErrNotFound):
			quarantined++
		default:
			t.Fatalf("cut at %d: %v", n, err)
		}
	}
	q, _ := s.Quarantine()
	if quarantined < len(full)-2 || len(q) != quarantined {
		t.Fatalf("%d of %d cuts quarantined, %d files in the quarantine", quarantined, len(full), len(q))
	}
}
