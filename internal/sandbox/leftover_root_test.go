package sandbox

import (
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
)

// What an ADD killed before its one record write leaves in the sandbox
// netns (its TAP, the ingress qdiscs, the redirects; no record) is found by
// name: DEL with the conf's netns removes it, a DEL without a netns to look
// in leaves it alone, and teardown of a prepared sandbox whose record does
// not list the NIC removes it too. (test/reliability's TestCrashEveryFailpoint
// kills the real plugin at every ADD step, both backends.)
func TestUnrecordedLeftovers(t *testing.T) {
	e := newEnv(t)
	id := "vmnict-left"
	// leave makes what a killed ADD leaves; its TAP carries the marker
	// CreateTap sets with the TAP's link up (unmarked: what another
	// program made under that name).
	leave := func(marked bool) {
		t.Helper()
		var mark hostnet.Marker
		if marked {
			mark = e.m.marker(id, "eth0", hostnet.MarkerCNI)
			mark.QdiscOwned = true // it adds the veth's ingress qdisc below
		}
		netfixture.In(t, e.netns, func() error {
			veth, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			tap, err := hostnet.CreateTap(hostnet.TapSpec{Name: hostnet.TapNameInNetns("eth0"), MTU: veth.Attrs().MTU, Owner: -1, Group: -1, Marker: mark})
			if err != nil {
				return err
			}
			for _, l := range []netlink.Link{veth, tap} {
				if _, err := hostnet.EnsureIngress(l); err != nil {
					return err
				}
			}
			if err := hostnet.AddRedirect(veth, tap); err != nil {
				return err
			}
			return hostnet.AddRedirect(tap, veth)
		})
	}
	before := netfixture.Take(t, e.scope())
	// A TAP of vmnic's name without vmnic's marker is never removed.
	netfixture.In(t, e.netns, func() error {
		_, err := hostnet.CreateTap(hostnet.TapSpec{Name: hostnet.TapNameInNetns("eth0"), Owner: -1, Group: -1})
		return err
	})
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0", NetnsPath: e.netns}); err != nil {
		t.Fatal(err)
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") == nil {
		t.Fatal("a DEL removed an unmarked TAP it had no record of")
	}
	netfixture.In(t, e.netns, func() error { return hostnet.DeleteTap("tapeth0") })
	leave(true)
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if netfixture.LinkIn(t, e.netns, "tapeth0") == nil {
		t.Fatal("a DEL without CNI_NETNS removed a TAP it had no record of")
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0", NetnsPath: e.netns}); err != nil {
		t.Fatal(err)
	}
	if d := before.Diff(netfixture.Take(t, e.scope())); d != "" {
		t.Errorf("DEL left the unrecorded NIC's objects:\n%s", d)
	}

	if _, err := e.m.Prepare(ctx(t), id, PrepareOptions{NetnsPath: e.netns}); err != nil {
		t.Fatal(err)
	}
	prepared := netfixture.Take(t, e.scope())
	leave(true)
	if err := e.m.Teardown(ctx(t), id, TeardownOptions{KeepNetns: true}); err != nil {
		t.Fatal(err)
	}
	if d := prepared.Diff(netfixture.Take(t, e.scope())); d != "" {
		t.Errorf("teardown left the unrecorded NIC's objects:\n%s", d)
	}
	if _, err := e.m.AddNIC(ctx(t), e.spec(id)); err != nil {
		t.Fatalf("ADD after the repair: %v", err)
	}
	if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: id, IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if d := prepared.Diff(netfixture.Take(t, e.scope())); d != "" {
		t.Errorf("ADD/DEL after the repair left changes:\n%s", d)
	}
}
