package cloudhypervisor_test

import (
	"context"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/cloudhypervisor"
)

// TestConformance drives every call the adapter makes (ping, info, NICs,
// add before and after boot, remove before and after boot, the eject wait)
// against each simulated version and requires every request to match
// ../shared/specs/cloud-hypervisor.yaml: path, method and body.
func TestConformance(t *testing.T) {
	for _, version := range []int{48, 49, 50, 51, 52, 53, vmmsim.CHMain} {
		t.Run("v"+itoa(version), func(t *testing.T) {
			s := vmmsim.NewCH(t, vmmsim.CHConfig{Version: version, State: vmmsim.CHNotCreated, EjectDelay: 20 * time.Millisecond})
			if !s.SpecLoaded() {
				t.Skipf("skipped: the Cloud Hypervisor spec is not available, nothing to conform to: %v", s.SpecError())
			}
			a, err := cloudhypervisor.New(s.Socket(), vmmadapter.Options{CallTimeout: 2 * time.Second, RemoveTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			ctx := context.Background()
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			full := vmmadapter.NIC{ID: "vmnic_1", Tap: "vmnic1", MAC: "02:00:0a:58:00:05", MTU: 1500, QueuePairs: 2, QueueSize: 512}
			bare := vmmadapter.NIC{ID: "vmnic_2", Tap: "vmnic2"}

			_, err = a.Info(ctx) // no VM yet
			must(err)
			_, err = a.NICs(ctx)
			must(err)
			must(a.RemoveNIC(ctx, "vmnic_1"))
			s.Create()
			_, err = a.AddNIC(ctx, full) // cold
			must(err)
			_, err = a.AddNIC(ctx, bare)
			must(err)
			must(a.RemoveNIC(ctx, "vmnic_2")) // config-only
			_, err = a.Info(ctx)
			must(err)
			must(s.Boot())
			_, err = a.AddNIC(ctx, bare) // hot
			must(err)
			_, err = a.NICs(ctx)
			must(err)
			must(a.RemoveNIC(ctx, "vmnic_1")) // remove + eject wait
			must(a.RemoveNIC(ctx, "vmnic_2"))
			must(a.RemoveNIC(ctx, "absent"))
			_, _ = a.AddNIC(ctx, vmmadapter.NIC{ID: "vmnic_3", Tap: "vmnic3", QueuePairs: 8}) // refused: too many queues

			seen := map[string]bool{}
			for _, c := range s.Calls() {
				seen[c.Method+" "+c.Path] = true
			}
			for _, want := range []string{"GET /api/v1/vmm.ping", "GET /api/v1/vm.info", "PUT /api/v1/vm.add-net", "PUT /api/v1/vm.remove-device"} {
				if !seen[want] {
					t.Errorf("the sequence never sent %s", want)
				}
			}
			if v := s.Violations(); len(v) > 0 {
				t.Fatalf("%d requests violate the spec: %v", len(v), v)
			}
			if v := s.ResponseViolations(); len(v) > 0 {
				t.Fatalf("simulator answers violate the spec: %v", v)
			}
		})
	}
}
