package sandbox

import (
	"context"
	"os"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// BenchmarkAddNIC measures the engine's ADD (record pending, TAP, tc
// redirect both ways, record host-ready) for a sandbox without a record.
// VMNIC_BENCH_STATE_DIR picks the state dir's file system (default: a temp
// dir).
func BenchmarkAddNIC(b *testing.B) {
	testenv.RequireRoot(b)
	state := os.Getenv("VMNIC_BENCH_STATE_DIR")
	if state == "" {
		state = b.TempDir()
	}
	st, err := netsetup.Open(state)
	if err != nil {
		b.Fatal(err)
	}
	m := New(Config{Store: st})
	ns := netfixture.Netns(b, netfixture.Name("vmnict-b"))
	peer := netfixture.Netns(b, netfixture.Name("vmnict-p"))
	netfixture.Veth(b, ns, "eth0", peer, "peer0", 0, "")
	spec := NICSpec{SandboxID: "vmnict-bench", ContainerID: "vmnict-bench", IfName: "eth0", NetnsPath: ns, TapOwner: -1, TapGroup: -1,
		IPs: []string{"10.201.0.5/24"}, Gateway: "10.201.0.1"}
	ctx := context.Background()
	for b.Loop() {
		if _, err := m.AddNIC(ctx, spec); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := m.DelNIC(ctx, DelSpec{SandboxID: "vmnict-bench", IfName: "eth0"}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
