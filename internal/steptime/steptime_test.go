package steptime

import (
	"errors"
	"path/filepath"
	"sync"
	"testing"
)

func TestNilRecorderDoesNothing(t *testing.T) {
	t.Setenv(EnvVar, "")
	r := FromEnv("ADD")
	if r != nil {
		t.Fatalf("FromEnv with %s unset = %v, want nil", EnvVar, r)
	}
	r.Step("parse")
	r.Label("sb", "eth0")
	if err := r.Finish(errors.New("x")); err != nil {
		t.Fatalf("Finish on nil: %v", err)
	}
}

func TestRecordsAppendOneLinePerCall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "steps.jsonl")
	t.Setenv(EnvVar, path)
	tests := []struct {
		cmd   string
		steps []string
		err   error
	}{
		{"ADD", []string{"parse", "lock", "netlink", "vmm", "save"}, nil},
		{"DEL", []string{"parse"}, errors.New("boom")},
	}
	for _, tc := range tests {
		r := FromEnv(tc.cmd)
		r.Label("sb1", "eth0")
		for _, s := range tc.steps {
			r.Step(s)
		}
		if err := r.Finish(tc.err); err != nil {
			t.Fatal(err)
		}
		if err := r.Finish(nil); err != nil { // second Finish: no second line
			t.Fatal(err)
		}
	}
	recs, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(tests) {
		t.Fatalf("got %d records, want %d", len(recs), len(tests))
	}
	for i, tc := range tests {
		rec := recs[i]
		if rec.Cmd != tc.cmd || rec.Sandbox != "sb1" || rec.IfName != "eth0" {
			t.Errorf("record %d = %+v", i, rec)
		}
		names := []string{}
		var sum int64
		for _, s := range rec.Steps {
			names = append(names, s.Name)
			sum += s.NS
		}
		want := append(append([]string{}, tc.steps...), "other")
		if len(names) < len(tc.steps) || len(names) > len(want) {
			t.Errorf("record %d steps %v, want %v", i, names, want)
		}
		for j, n := range tc.steps {
			if names[j] != n {
				t.Errorf("record %d step %d = %s, want %s", i, j, names[j], n)
			}
		}
		if sum != rec.TotalNS || rec.EndUnix < rec.StartUnix {
			t.Errorf("record %d: steps sum %d, total %d, start %d end %d", i, sum, rec.TotalNS, rec.StartUnix, rec.EndUnix)
		}
		if (tc.err != nil) != (rec.Error != "") {
			t.Errorf("record %d error = %q", i, rec.Error)
		}
	}
}

func TestConcurrentWritersKeepLinesWhole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "steps.jsonl")
	const n = 50
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := New(path, "ADD")
			for _, s := range []string{"a", "b", "c", "d", "e", "f"} {
				r.Step(s)
			}
			if err := r.Finish(nil); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	recs, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n {
		t.Fatalf("got %d records, want %d", len(recs), n)
	}
}
