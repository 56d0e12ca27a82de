package sandbox

import (
	"errors"
	"fmt"
	"testing"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/netsetup"
)

// addNICs gives sandbox id of e (cni backend) n NICs eth0..eth<n-1>.
func addNICs(t *testing.T, e *env, id string, n int) {
	t.Helper()
	for i := 1; i < n; i++ {
		netfixture.Veth(t, e.netns, fmt.Sprintf("eth%d", i), e.peer, fmt.Sprintf("peer%d", i+10), 1400, "")
	}
	for i := 0; i < n; i++ {
		s := e.spec(id)
		s.IfName = fmt.Sprintf("eth%d", i)
		if i > 0 {
			s.IPs, s.Gateway = nil, ""
		}
		if _, err := e.m.AddNIC(ctx(t), s); err != nil {
			t.Fatalf("AddNIC %s: %v", s.IfName, err)
		}
	}
}

// groupOf lists the links of sandbox id's TAP link group in e's netns.
func groupOf(t *testing.T, e *env, id string) []string {
	t.Helper()
	var names []string
	netfixture.In(t, e.netns, func() error {
		ls, err := hostnet.LinksInGroup(tapGroup(id))
		for _, l := range ls {
			names = append(names, l.Attrs().Name)
		}
		return err
	})
	return names
}

// TestTeardownDeletesTapsInOneBatch: a 4-NIC sandbox's TAPs share its link
// group, and the teardown deletes them in one batch (the taps-deleted
// point is reached once) after each NIC is out of the VMM; the veths stay.
func TestTeardownDeletesTapsInOneBatch(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-batch"
	addNICs(t, e, id, 4)
	if got := groupOf(t, e, id); len(got) != 4 {
		t.Fatalf("link group %d holds %v, want the 4 TAPs", tapGroup(id), got)
	}
	var steps []string
	e.hook = func(s string) error { steps = append(steps, s); return nil }
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err != nil {
		t.Fatal(err)
	}
	e.hook = nil
	batch := 0
	for i, s := range steps {
		if s == "taps-deleted" {
			batch++
			if i > 0 && steps[i-1] != "teardown-nic" {
				t.Errorf("the batch delete came after %s, want right after the NICs were taken from the VMM: %v", steps[i-1], steps)
			}
		}
	}
	if batch != 1 {
		t.Errorf("taps-deleted reached %d times, want once: %v", batch, steps)
	}
	for i := 0; i < 4; i++ {
		if l := netfixture.LinkIn(t, e.netns, fmt.Sprintf("tapeth%d", i)); l != nil {
			t.Errorf("TAP tapeth%d left after teardown", i)
		}
		if l := netfixture.LinkIn(t, e.netns, fmt.Sprintf("eth%d", i)); l == nil {
			t.Errorf("veth eth%d removed by the teardown", i)
		}
	}
	if _, err := e.m.Store.Get(id); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("record after teardown: %v", err)
	}
}

// TestTeardownBatchCrashThenRetry: a teardown stopped right after the
// batch delete leaves the NICs recorded without TAPs; the retry finishes.
func TestTeardownBatchCrashThenRetry(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-batchc"
	addNICs(t, e, id, 3)
	e.hook = func(s string) error {
		if s == "taps-deleted" {
			return errors.New("injected " + s)
		}
		return nil
	}
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err == nil {
		t.Fatal("teardown with a failing taps-deleted succeeded")
	}
	e.hook = nil
	rec, err := e.m.Store.Get(id)
	if err != nil || len(rec.NetworkConfigs) != 3 || rec.Phase != netsetup.PhaseInvalid {
		t.Fatalf("after the failed teardown: %v %+v", err, rec)
	}
	if got := groupOf(t, e, id); len(got) != 0 {
		t.Errorf("TAPs left after the batch: %v", got)
	}
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err != nil {
		t.Fatalf("retried teardown: %v", err)
	}
	if _, err := e.m.Store.Get(id); !errors.Is(err, netsetup.ErrNotFound) {
		t.Errorf("record after the retried teardown: %v", err)
	}
}

// TestTeardownBatchLeavesForeignGroupMember: a device that is not one of
// the sandbox's TAPs in the group stops the batch; each TAP is deleted on
// its own and the foreign device stays.
func TestTeardownBatchLeavesForeignGroupMember(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-batchf"
	addNICs(t, e, id, 2)
	netfixture.In(t, e.netns, func() error {
		// A TAP no NIC of the sandbox names (dummy links are not in
		// every kernel).
		l, err := hostnet.CreateTap(hostnet.TapSpec{Name: "foreign0", Owner: -1, Group: -1})
		if err != nil {
			return err
		}
		return hostnet.SetLinkGroup(l, tapGroup(id))
	})
	var steps []string
	e.hook = func(s string) error { steps = append(steps, s); return nil }
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err != nil {
		t.Fatal(err)
	}
	e.hook = nil
	for _, s := range steps {
		if s == "taps-deleted" {
			t.Errorf("batch delete with a foreign device in the group: %v", steps)
		}
	}
	if l := netfixture.LinkIn(t, e.netns, "foreign0"); l == nil {
		t.Error("the foreign device in the group was deleted")
	}
	for i := 0; i < 2; i++ {
		if l := netfixture.LinkIn(t, e.netns, fmt.Sprintf("tapeth%d", i)); l != nil {
			t.Errorf("TAP tapeth%d left after teardown", i)
		}
	}
}

// TestDelOfOneNICLeavesTheGroup: a CNI DEL removes only its own TAP.
func TestDelOfOneNICLeavesTheGroup(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-batchd"
	addNICs(t, e, id, 2)
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth1"}); err != nil {
		t.Fatal(err)
	}
	if got := groupOf(t, e, id); len(got) != 1 || got[0] != "tapeth0" {
		t.Errorf("after DEL of eth1 the group holds %v, want [tapeth0]", got)
	}
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{}); err != nil {
		t.Fatal(err)
	}
}
