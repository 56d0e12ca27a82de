package cloudhypervisor_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/cloudhypervisor"
)

func nullFiles(t *testing.T, n int) []*os.File {
	t.Helper()
	var out []*os.File
	for range n {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		out = append(out, f)
	}
	return out
}

// TestAddNICPassesFds: a NIC with Fds sends them as SCM_RIGHTS with the
// vm.add-net request (the simulator counts them and, since /dev/null is
// no TAP, refuses as CH's TUNGETIFF would), the body stays spec-valid,
// and a count that does not match the queue pairs is refused before any
// request (CH's VnetQueueFdMismatch, checked client-side).
func TestAddNICPassesFds(t *testing.T) {
	s := vmmsim.NewCH(t, vmmsim.CHConfig{})
	a, err := cloudhypervisor.New(s.Socket(), vmmadapter.Options{CallTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx := context.Background()
	_, err = a.AddNIC(ctx, vmmadapter.NIC{ID: "eth0", Tap: "tap0", QueuePairs: 2, Fds: nullFiles(t, 2)})
	if err == nil || !strings.Contains(err.Error(), "Unable to get the TAP interface name") || !strings.Contains(err.Error(), "2 fds") {
		t.Fatalf("AddNIC with non-TAP fds = %v", err)
	}
	calls := s.Calls()
	if len(calls) != 1 || calls[0].Fds != 2 || calls[0].Method != http.MethodPut || calls[0].Path != "/api/v1/vm.add-net" {
		t.Fatalf("calls %+v: want one vm.add-net carrying 2 fds", calls)
	}
	if v := s.Violations(); len(v) > 0 {
		t.Errorf("spec violations: %v", v)
	}
	for _, tc := range []struct {
		pairs, fds int
	}{{1, 2}, {2, 1}, {3, 1}} {
		_, err := a.AddNIC(ctx, vmmadapter.NIC{ID: "eth1", Tap: "tap1", QueuePairs: tc.pairs, Fds: nullFiles(t, tc.fds)})
		if !errors.Is(err, vmmadapter.ErrFdCount) {
			t.Errorf("AddNIC with %d fds for %d pairs = %v, want ErrFdCount", tc.fds, tc.pairs, err)
		}
	}
	if n := len(s.Calls()); n != 1 {
		t.Errorf("%d requests, want none for the refused counts", n-1)
	}
}
