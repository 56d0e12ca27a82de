package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/vmnic/vmnic/netsetup"
)

// needVmnic skips (fails when root tests are required) a test that needs the
// vmnic CNI plugin and/or the vmnic NRI plugin.
func needVmnic(t testing.TB, cni, nri bool) *Env {
	t.Helper()
	e := needSuite(t)
	var missing []string
	if cni && !e.HasVmnicCNI {
		missing = append(missing, e.p.vmnic("vmnic"))
	}
	if nri && !e.HasVmnicNRI {
		missing = append(missing, e.p.vmnic("vmnic-nri"))
	}
	if len(missing) > 0 {
		if required() {
			t.Fatalf("required (VMNIC_REQUIRE_ROOT_TESTS=1): %v not built (run `make build`)", missing)
		}
		t.Skipf("skipped: %v not built (run `make build`)", missing)
	}
	return e
}

// needBinary skips (fails when root tests are required) when path is missing.
func needBinary(t testing.TB, path string) {
	t.Helper()
	if !exists(path) {
		if required() {
			t.Fatalf("required (VMNIC_REQUIRE_ROOT_TESTS=1): %s not built (run `make build`)", path)
		}
		t.Skipf("skipped: %s not built (run `make build`)", path)
	}
}

// Store opens the vmnic state store the suite's plugins share.
func (e *Env) Store(t testing.TB) *netsetup.Store {
	t.Helper()
	s, err := netsetup.Open(e.VmnicState)
	if err != nil {
		t.Fatalf("open vmnic state %s: %v", e.VmnicState, err)
	}
	return s
}

// Record returns the NetSetup record of sandbox id, or nil when there is none.
func (e *Env) Record(t testing.TB, id string) *netsetup.NetSetup {
	t.Helper()
	rec, err := e.Store(t).Get(id)
	if errors.Is(err, netsetup.ErrNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("read record %s: %v", id, err)
	}
	return rec
}

// RecordIDs lists the sandboxes that have a record.
func (e *Env) RecordIDs(t testing.TB) []string {
	t.Helper()
	if !exists(filepath.Join(e.VmnicState, "sandboxes")) {
		return nil
	}
	ids, err := e.Store(t).IDs()
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func dirEntries(dir string) []string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var names []string
	for _, ent := range ents {
		names = append(names, ent.Name())
	}
	return names
}

// AssertClean checks that nothing of any pod is left on the host: no pod in
// the runtime, no IPAM lease, no bridge port, no pod netns (containerd's or
// vmnic's), no NetSetup record or netns index entry, no runtime dir, no TAP
// in the host namespace.
func (e *Env) AssertClean(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	pods, err := e.RS.ListPodSandbox(ctx, nil)
	if err != nil {
		t.Fatalf("ListPodSandbox: %v", err)
	}
	for _, p := range pods {
		t.Errorf("pod left in the runtime: %s %s/%s (%s)", p.Id, p.Metadata.Namespace, p.Metadata.Name, p.State)
	}
	for _, n := range []string{net0Name, net1Name} {
		if l := e.Leases(t, n); len(l) > 0 {
			t.Errorf("IPAM leases left in network %s: %v", n, l)
		}
	}
	for _, br := range []string{net0Bridge, net1Bridge} {
		if p := BridgePorts(t, br); len(p) > 0 {
			t.Errorf("ports left on bridge %s: %v", br, p)
		}
	}
	if f := e.PodNetnsFiles(t); len(f) > 0 {
		t.Errorf("containerd pod netns left: %v", f)
	}
	if f := dirEntries(e.OwnedNetnsDir()); len(f) > 0 {
		t.Errorf("vmnic-owned netns left in %s: %v", e.OwnedNetnsDir(), f)
	}
	if ids := e.RecordIDs(t); len(ids) > 0 {
		t.Errorf("NetSetup records left: %v", ids)
	}
	if f := dirEntries(filepath.Join(e.VmnicState, "netns")); len(f) > 0 {
		t.Errorf("netns index entries left in the vmnic state dir: %v", f)
	}
	if f := dirEntries(e.VmnicRun); len(f) > 0 {
		t.Errorf("per-sandbox runtime dirs left in %s: %v", e.VmnicRun, f)
	}
	if taps := Taps(HostLinks(t)); len(taps) > 0 {
		for _, tap := range taps {
			if len(tap.Name) > 5 && tap.Name[:5] == "vmnic" {
				t.Errorf("TAP left in the host namespace: %v", tap)
			}
		}
	}
}
