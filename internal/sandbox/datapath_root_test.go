package sandbox

import (
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/vmnic/vmnic/internal/hostnet"
	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// Each data path, asked for explicitly: recorded, checked (a missing filter
// is reported), and undone by DEL to the state before the ADD.
func TestAddNICEachDataPath(t *testing.T) {
	for _, tc := range []struct {
		mode hostnet.DataPathMode
		want hostnet.DataPath
	}{
		{hostnet.ModeBPF, hostnet.DataPathBPF},
		{hostnet.ModeU32, hostnet.DataPathU32},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			e := newEnv(t)
			if tc.want == hostnet.DataPathBPF {
				if err := hostnet.ProbeBPF(); err != nil {
					testenv.Unavailable(t, "BPF data path: %v", err)
				}
			}
			before := netfixture.Take(t, e.scope())
			s := e.spec("vmnict-dp")
			s.DataPath = tc.mode
			added, err := e.m.AddNIC(ctx(t), s)
			if err != nil {
				t.Fatal(err)
			}
			rec, err := e.m.Store.Get("vmnict-dp")
			if err != nil {
				t.Fatal(err)
			}
			if nic, _ := rec.NIC("eth0"); nic == nil || nic.DataPath != string(tc.want) || added.NIC.DataPath != string(tc.want) {
				t.Fatalf("recorded NIC %+v: want data path %s", nic, tc.want)
			}
			mid := netfixture.Take(t, e.scope())
			for _, dev := range []string{"eth0", "tapeth0"} {
				want := "filter dev " + dev + " parent ffff:fff2 " + hostnet.FilterKind(tc.want) + " prio"
				if !mid.Contains(want) {
					t.Errorf("no %q:\n%s", want, strings.Join(mid, "\n"))
				}
			}
			if err := e.m.CheckNIC(ctx(t), "vmnict-dp", "eth0"); err != nil {
				t.Errorf("CheckNIC: %v", err)
			}
			netfixture.In(t, e.netns, func() error {
				l, err := netlink.LinkByName("tapeth0")
				if err != nil {
					return err
				}
				return hostnet.DelRedirect(l)
			})
			if err := e.m.CheckNIC(ctx(t), "vmnict-dp", "eth0"); err == nil || !strings.Contains(err.Error(), "filter tapeth0 -> eth0 missing") {
				t.Errorf("CheckNIC without the TAP's filter: %v", err)
			}
			if err := e.m.DelNIC(ctx(t), DelSpec{SandboxID: "vmnict-dp", IfName: "eth0"}); err != nil {
				t.Fatal(err)
			}
			if d := before.Diff(netfixture.Take(t, e.scope())); d != "" {
				t.Errorf("ADD+DEL left changes:\n%s", d)
			}
		})
	}
}
