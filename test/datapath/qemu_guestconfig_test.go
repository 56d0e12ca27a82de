package datapath

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/qemuguest"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// agentHook mounts the record's live copy (shared read-only over virtio-9p
// with tag "vmnic") and starts the guest agent on it.
const agentHook = `#!/bin/sh
mkdir -p /mnt/vmnic
mount -t 9p -o trans=virtio,version=9p2000.L,ro vmnic /mnt/vmnic || echo "vmnic-guest: mounting the record copy failed"
/bin/vmnic-guest-agent -config /mnt/vmnic/` + netsetup.MirrorFile + ` >/run/vmnic-agent.log 2>&1 &
`

// TestQEMUGuestAppliesRenderedConfig: a real QEMU guest configures its
// own network from vmnic's rendered guest config. The sandbox's runtime dir
// holds the record's live copy, shared read-only into the guest; a NIC
// hot-added through a dual-stack bridge + host-local chain appears there
// with its guest_config, and the agent in the guest (nothing typed by the
// test) applies its MTU, both addresses and both default routes. The guest
// then pings the gateway over IPv4 and IPv6, and the host pings both of the
// guest's addresses.
func TestQEMUGuestAppliesRenderedConfig(t *testing.T) {
	testenv.RequireRoot(t)
	if err := qemuguest.Available(); err != nil {
		testenv.Unavailable(t, "QEMU guest: %v", err)
	}
	testenv.Command(t, "ping")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	id := "vmnd-qg-" + randHex(t, 3)
	stateDir := filepath.Join(t.TempDir(), "state")
	rt := filepath.Join(t.TempDir(), "rt")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	bridge := "vmnbrd7"
	deleteHostLinkAtCleanup(t, bridge)
	var nsPath string
	t.Cleanup(func() {
		if _, err := runCtl(t, stateDir, "teardown", id); err != nil {
			t.Logf("cleanup teardown: %v", err)
		}
	})
	mustCtl(t, stateDir, "prepare", id, "--runtime-dir", rt)
	nsPath = record(t, stateDir, id).ResolvedNetnsPath()
	mirror := filepath.Join(rt, netsetup.MirrorDir)

	agent, err := os.ReadFile(filepath.Join(built(t), "vmnic-guest-agent"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := qemuguest.Boot(ctx, qemuguest.Config{
		Netns: nsPath, BootTimeout: 3 * time.Minute, Logf: t.Logf,
		ExtraArgs: []string{"-virtfs", "local,path=" + mirror + ",mount_tag=vmnic,security_model=none,readonly=on"},
		ExtraFiles: []qemuguest.File{
			{Path: "bin/vmnic-guest-agent", Mode: 0o755, Data: agent},
			{Path: "etc/vmnic-init.d/50-vmnic-agent", Mode: 0o755, Data: []byte(agentHook)},
		},
	})
	if err != nil {
		t.Fatalf("boot QEMU in %s: %v", nsPath, err)
	}
	t.Cleanup(func() { g.Close() })
	if out, err := g.Run(ctx, "grep -c ' /mnt/vmnic 9p ' /proc/mounts"); err != nil || strings.TrimSpace(out) != "1" {
		t.Fatalf("the record copy is not mounted in the guest: %q %v", out, err)
	}
	mustCtl(t, stateDir, "attach-vmm", id, "--kind", "qemu", "--socket", g.QMPSocket())

	nw := writeNetwork(t, "vmnd-qg-"+id[len(id)-6:], "1.1.0", stateDir,
		dualStackChain(bridge, "10.206.7.0/24", "fd00:206:7::/64", t.TempDir(), stateDir))
	t.Cleanup(func() {
		if _, err := nw.cnitool(t, "del", nsPath, "eth0", ""); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	nw.mustCNI(t, "add", nsPath, "eth0", "")
	rec := record(t, stateDir, id)
	nic, ok := rec.NIC("eth0")
	if !ok || nic.State != netsetup.NICAttached {
		t.Fatalf("record after ADD: %+v", rec.NetworkConfigs)
	}
	v4, v6 := nic.IPsOf(netsetup.IPv4), nic.IPsOf(netsetup.IPv6)
	if len(v4) != 1 || len(v6) != 1 {
		t.Fatalf("recorded IPs %v: want one of each family", nic.IPs)
	}

	// The live copy carries the same document vmnicctl renders.
	data, err := os.ReadFile(filepath.Join(mirror, netsetup.MirrorFile))
	if err != nil {
		t.Fatal(err)
	}
	inCopy, err := netsetup.ReadMirrorGuestConfig(data)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(inCopy)
	var rendered netsetup.GuestConfig
	if err := json.Unmarshal([]byte(mustCtl(t, stateDir, "guest-config", id, "--format", "json")), &rendered); err != nil {
		t.Fatal(err)
	}
	if got, _ := json.Marshal(rendered); !bytes.Equal(got, want) {
		t.Errorf("guest_config in the live copy:\n%s\nvmnicctl guest-config --format json:\n%s", want, got)
	}

	ifname, err := g.WaitForMAC(ctx, nic.MAC)
	if err != nil {
		t.Fatalf("hot-added NIC (MAC %s) never appeared in the guest: %v", nic.MAC, err)
	}
	// Wait for the agent: both addresses on the device, both default routes.
	deadline := time.Now().Add(90 * time.Second)
	var state string
	for {
		state, err = g.Run(ctx, fmt.Sprintf("ip -o addr show dev %s; ip route; ip -6 route; cat /run/vmnic-agent.log", ifname))
		if err == nil && strings.Contains(state, v4[0]) && strings.Contains(state, v6[0]) &&
			strings.Contains(state, "default via "+nic.GatewayFor(netsetup.IPv4)) && strings.Contains(state, "default via "+nic.GatewayFor(netsetup.IPv6)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest agent did not apply the config of %s (%s): %v\n%s", ifname, nic.MAC, err, state)
		}
		time.Sleep(time.Second)
	}
	t.Logf("guest applied the rendered config itself:\n%s", state)
	if out, err := g.Run(ctx, "cat /sys/class/net/"+ifname+"/mtu"); err != nil || strings.TrimSpace(out) != fmt.Sprint(nic.MTU) {
		t.Errorf("guest device MTU %q (%v), want the TAP's %d", out, err, nic.MTU)
	}

	for _, gw := range []string{nic.GatewayFor(netsetup.IPv4), nic.GatewayFor(netsetup.IPv6)} {
		var out string
		for try := 0; try < 3; try++ { // the bridge's IPv6 address may still be in DAD
			if out, err = g.Run(ctx, "ping -c 2 -W 3 "+gw); err == nil && received(out) >= 2 {
				break
			}
		}
		if received(out) < 2 {
			t.Fatalf("guest → gateway %s: %v\n%s", gw, err, out)
		}
	}
	hostPing(t, mustAddr(t, v4[0]))
	hostPing(t, mustAddr(t, v6[0]))

	nw.mustCNI(t, "del", nsPath, "eth0", "")
	if err := g.WaitForLinkGone(ctx, ifname); err != nil {
		t.Errorf("guest still has %s after DEL: %v", ifname, err)
	}
}
