package netns

import (
	"errors"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// TestDoExpected: the namespace at a path is entered only when it is the
// expected one; a namespace made anew at the path is not (issue 16 item 8).
func TestDoExpected(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	p, err := Create(dir, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Remove(p) })
	want, err := netsetup.IdentifyNetns(p)
	if err != nil {
		t.Fatal(err)
	}
	ran := 0
	if err := DoExpected(p, &want, func() error { ran++; return nil }); err != nil || ran != 1 {
		t.Fatalf("DoExpected of the expected namespace: %v, ran %d", err, ran)
	}
	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(dir, "vm1"); err != nil {
		t.Fatal(err)
	}
	err = DoExpected(p, &want, func() error { ran++; return nil })
	if !errors.Is(err, ErrReplaced) || !IsGone(err) || ran != 1 {
		t.Fatalf("DoExpected of a replaced namespace: %v (gone %v), ran %d", err, IsGone(err), ran)
	}
	if err := Do(p, func() error { ran++; return nil }); err != nil || ran != 2 {
		t.Fatalf("Do: %v, ran %d", err, ran)
	}
	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	err = DoExpected(p, &want, func() error { ran++; return nil })
	if !IsGone(err) || ran != 2 {
		t.Fatalf("DoExpected of a removed namespace: %v, ran %d", err, ran)
	}
}
