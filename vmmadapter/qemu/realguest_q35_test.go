package qemu_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/qemu"
)

// TestRealGuestQ35: on q35 the root bus pcie.0 takes no hot-plugged device
// (a device_add without bus= is refused, as it was before the adapter
// placed NICs). The adapter puts NICs on free PCIe root ports reserved with
// RootPortArgs: hot-add and traffic work, the queue sizes are what QEMU
// takes (rx 1024, tx 256 with a tap backend), a NIC with no port left gets
// ErrNoFreeRootPort and leaves nothing behind, a queue size QEMU refuses is
// refused before any QMP command, removal (PCIe native hot-plug) frees the
// port for the next NIC.
func TestRealGuestQ35(t *testing.T) {
	requireRealGuest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	fx := newFixture(t, 1, 1, 1)

	g, err := qemuguest.Boot(ctx, qemuguest.Config{
		Netns: fx.Path, Machine: "q35", Logf: t.Logf,
		ExtraArgs: qemu.RootPortArgs(2),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	t.Logf("timing: q35 boot %s", g.BootTime().Round(time.Millisecond))
	a, err := qemu.Open(g.QMPSocket(), vmmadapter.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })

	// What QEMU does with a hot-add that names no bus on q35.
	if err := a.Execute(ctx, "netdev_add", map[string]any{"type": "tap", "id": "netdev-probe", "ifname": fx.NICs[2].Tap, "script": "no", "downscript": "no"}, nil); err != nil {
		t.Fatal(err)
	}
	err = a.Execute(ctx, "device_add", map[string]any{"driver": "virtio-net-pci", "id": "probe", "netdev": "netdev-probe"}, nil)
	if err == nil || !strings.Contains(err.Error(), "does not support hotplugging") {
		t.Fatalf("device_add without bus on q35 = %v, want QEMU's refusal", err)
	}
	if err := a.Execute(ctx, "netdev_del", map[string]any{"id": "netdev-probe"}, nil); err != nil {
		t.Fatal(err)
	}

	// A queue size QEMU refuses: a clear error before anything is sent.
	if _, err := a.AddNIC(ctx, vmmadapter.NIC{ID: "bad", Tap: fx.NICs[0].Tap, QueueSize: 128}); err == nil || !strings.Contains(err.Error(), "queueSize 128") {
		t.Fatalf("AddNIC with queueSize 128 = %v", err)
	}

	nics := make([]vmmadapter.NIC, 3)
	for i, n := range fx.NICs {
		nics[i] = vmmadapter.NIC{ID: "q" + string(rune('0'+i)), Tap: n.Tap, MAC: n.MAC, QueueSize: 1024}
	}
	buses := map[string]bool{}
	for i := 0; i < 2; i++ {
		att, err := a.AddNIC(ctx, nics[i])
		if err != nil {
			t.Fatalf("AddNIC %s on q35: %v\n%s", nics[i].ID, err, g.ConsoleTail())
		}
		if !att.Hot || att.BDF == "" || strings.HasPrefix(att.BDF, "0000:00:") {
			t.Fatalf("Attachment %+v: want hot, behind a root port (not bus 00)", att)
		}
		buses[att.BDF] = true
		ifname, err := g.WaitForMAC(ctx, nics[i].MAC)
		if err != nil {
			t.Fatalf("%v\n%s", err, g.ConsoleTail())
		}
		checkTraffic(ctx, t, g, ifname, fx.NICs[i])
		for prop, want := range map[string]float64{"rx_queue_size": 1024, "tx_queue_size": 256} {
			raw, err := g.QMP(ctx, "qom-get", map[string]any{"path": "/machine/peripheral/" + nics[i].ID, "property": prop})
			var got float64
			if err != nil || json.Unmarshal(raw, &got) != nil || got != want {
				t.Errorf("%s %s = %s (%v), want %v", nics[i].ID, prop, raw, err, want)
			}
		}
	}
	if len(buses) != 2 {
		t.Fatalf("two NICs share a PCI address: %v", buses)
	}
	_, err = a.AddNIC(ctx, nics[2])
	if !errors.Is(err, qemu.ErrNoFreeRootPort) {
		t.Fatalf("third AddNIC with two root ports = %v, want ErrNoFreeRootPort", err)
	}
	qemuView(ctx, t, g, a, []string{"q0", "q1"})

	t0 := time.Now()
	if err := a.RemoveNIC(ctx, "q0"); err != nil {
		t.Fatalf("RemoveNIC on q35: %v\n%s", err, g.ConsoleTail())
	}
	t.Logf("timing: PCIe remove %s", time.Since(t0).Round(time.Millisecond))
	if _, err := a.AddNIC(ctx, nics[2]); err != nil {
		t.Fatalf("AddNIC into the freed root port: %v", err)
	}
	ifname, err := g.WaitForMAC(ctx, nics[2].MAC)
	if err != nil {
		t.Fatal(err)
	}
	checkTraffic(ctx, t, g, ifname, fx.NICs[2])
	for _, id := range []string{"q1", "q2"} {
		if err := a.RemoveNIC(ctx, id); err != nil {
			t.Fatalf("RemoveNIC %s: %v", id, err)
		}
	}
	qemuView(ctx, t, g, a, nil)

	pid := g.PID()
	a.Close()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fx.teardown(); err != nil {
		t.Fatal(err)
	}
	fx.assertGone(t, pid)
}
