package netsetup

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestLockWaitsAndHonoursContext(t *testing.T) {
	s := openStore(t)
	tx, err := s.Lock(context.Background(), "sb1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(ctx, "sb1"); err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Lock = %v, want a deadline error", err)
	}
	// Another sandbox is not blocked.
	tx2, err := s.Lock(context.Background(), "sb2")
	if err != nil {
		t.Fatal(err)
	}
	tx2.Unlock()
	tx.Unlock()
}
