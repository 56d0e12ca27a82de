package cloudhypervisor_test

// Tests of behaviour the real Cloud Hypervisor has and an earlier adapter
// (and simulator) did not model (issue 17, items 1–5).

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
)

// TestAddNICUnprivilegedWithMTU: an unprivileged CH (no CAP_NET_ADMIN) fails
// every add that carries mtu (SIOCSIFMTU → EPERM). The adapter sends none,
// so a NIC with an MTU hot-adds, cold-adds and boots.
func TestAddNICUnprivilegedWithMTU(t *testing.T) {
	for _, state := range []vmmsim.CHState{vmmsim.CHRunning, vmmsim.CHCreated} {
		t.Run(string(state), func(t *testing.T) {
			s := sim(t, vmmsim.CHConfig{State: state})
			a := adapter(t, s.Socket(), fastOpts)
			n := nic("n1", "tap1")
			n.MTU = 1500
			if _, err := a.AddNIC(context.Background(), n); err != nil {
				t.Fatalf("AddNIC with MTU on an unprivileged CH: %v", err)
			}
			if state == vmmsim.CHCreated {
				if err := s.Boot(); err != nil {
					t.Fatalf("boot with the cold-added NIC: %v", err)
				}
			}
			if got := s.Devices(); len(got) != 1 {
				t.Fatalf("device tree = %v", got)
			}
			for _, c := range s.Calls() {
				if strings.Contains(string(c.Body), "mtu") {
					t.Fatalf("%s %s carried mtu: %s", c.Method, c.Path, c.Body)
				}
			}
		})
	}
}

// TestRemoveNotFoundIsSuccess: a remove that races another client (the id
// went between the adapter's look and its remove-device) is answered with
// CH's real "not found" messages; the adapter takes them as success.
func TestRemoveNotFoundIsSuccess(t *testing.T) {
	const top = `"Error from API","The device could not be removed from the VM"`
	tests := []struct {
		name    string
		version int
		state   vmmsim.CHState
		status  int
		body    string
	}{
		{"pre-boot v50", 50, vmmsim.CHCreated, 500, `[` + top + `,"No device with id \"n1\" to remove"]`},
		{"pre-boot main", vmmsim.CHMain, vmmsim.CHCreated, 404, `[` + top + `,"No device with id \"n1\" to remove"]`},
		{"booted v52", 52, vmmsim.CHRunning, 500, `[` + top + `,"Error from device manager","Failed to find device corresponding to the given identifier"]`},
		{"booted v53", 53, vmmsim.CHRunning, 500, `[` + top + `,"Error from device manager","Failed to find device corresponding to the given identifier: n1"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sim(t, vmmsim.CHConfig{Version: tt.version, State: tt.state})
			a := adapter(t, s.Socket(), fastOpts)
			addOK(nic("n1", "tap1"))(t, s, a)
			// The adapter's remove-device gets the answer of a VMM where
			// another client removed n1 first; that client's remove then
			// lands (booted: the guest ejects at once).
			s.SetFault(vmmsim.Fault{Mode: vmmsim.FaultReply, Path: "/api/v1/vm.remove-device", Times: 1, Status: tt.status, Body: tt.body})
			other := make(chan error, 1)
			go func() {
				for s.CountCalls("PUT", "/api/v1/vm.remove-device") == 0 {
					time.Sleep(5 * time.Millisecond)
				}
				other <- rawRemove(s.Socket(), "n1")
			}()
			err := a.RemoveNIC(context.Background(), "n1")
			if oerr := <-other; oerr != nil {
				t.Fatalf("the other client's remove: %v", oerr)
			}
			if err != nil {
				t.Fatalf("RemoveNIC = %v, want success (the device is gone)", err)
			}
		})
	}
}

// TestSimNotFoundWording: the simulator words "not found" as CH does, and
// a repeated remove of an id the VMM no longer has is success.
func TestSimNotFoundWording(t *testing.T) {
	for _, tt := range []struct {
		version int
		state   vmmsim.CHState
		want    string
	}{
		{52, vmmsim.CHRunning, `"Failed to find device corresponding to the given identifier"]`},
		{53, vmmsim.CHRunning, `"Failed to find device corresponding to the given identifier: gone"]`},
		{53, vmmsim.CHCreated, `"No device with id \"gone\" to remove"]`},
	} {
		s := sim(t, vmmsim.CHConfig{Version: tt.version, State: tt.state})
		req, _ := http.NewRequest("PUT", "http://localhost/api/v1/vm.remove-device", strings.NewReader(`{"id":"gone"}`))
		resp, body := do(t, s.Socket(), req)
		if resp != 500 || !strings.HasSuffix(body, tt.want) {
			t.Errorf("v%d %s: %d %s, want 500 ending %s", tt.version, tt.state, resp, body, tt.want)
		}
		a := adapter(t, s.Socket(), fastOpts)
		addOK(nic("n1", "tap1"))(t, s, a)
		for i := 0; i < 2; i++ {
			if err := a.RemoveNIC(context.Background(), "n1"); err != nil {
				t.Errorf("v%d %s: RemoveNIC #%d = %v", tt.version, tt.state, i+1, err)
			}
		}
	}
}

// TestRemoveResendsWhereSafe: a guest that misses the first ACPI
// notification ejects after a second remove-device. The adapter re-sends
// on ≤ v48 and from v54 (upstream 35b9703e1), never on v49–v53.
func TestRemoveResendsWhereSafe(t *testing.T) {
	for _, tt := range []struct {
		version int
		resends bool
	}{{47, true}, {48, true}, {49, false}, {52, false}, {53, false}, {vmmsim.CHMain, true}} {
		t.Run("v"+itoa(tt.version), func(t *testing.T) {
			t.Parallel()
			s := sim(t, vmmsim.CHConfig{Version: tt.version, IgnoreFirstNotify: true})
			opts := vmmadapter.Options{CallTimeout: time.Second, RemoveTimeout: 2 * time.Second}
			if !tt.resends {
				opts.RemoveTimeout = 600 * time.Millisecond
			}
			a := adapter(t, s.Socket(), opts)
			addOK(nic("n1", "tap1"))(t, s, a)
			err := a.RemoveNIC(context.Background(), "n1")
			n := s.CountCalls("PUT", "/api/v1/vm.remove-device")
			if dead, why := s.Dead(); dead {
				t.Fatalf("VMM died: %s", why)
			}
			if tt.resends {
				if err != nil || n < 2 || len(s.Devices()) != 0 {
					t.Fatalf("RemoveNIC = %v after %d remove-device, tree %v; want success after a re-send", err, n, s.Devices())
				}
				return
			}
			if !errors.Is(err, vmmadapter.ErrEjectTimeout) || n != 1 {
				t.Fatalf("RemoveNIC = %v after %d remove-device; want ErrEjectTimeout after exactly 1", err, n)
			}
		})
	}
}

// TestRemovePaused: a paused guest cannot eject; removal is refused at once
// (no remove-device sent, no eject wait) and works after resume.
func TestRemovePaused(t *testing.T) {
	s := sim(t, vmmsim.CHConfig{})
	a := adapter(t, s.Socket(), vmmadapter.Options{CallTimeout: time.Second, RemoveTimeout: 5 * time.Second})
	addOK(nic("n1", "tap1"))(t, s, a)
	put(t, s.Socket(), "vm.pause", 204)
	start := time.Now()
	err := a.RemoveNIC(context.Background(), "n1")
	if !errors.Is(err, vmmadapter.ErrVMPaused) || !strings.Contains(err.Error(), "resume it or remove the NIC at shutdown") {
		t.Fatalf("RemoveNIC on a paused VM = %v, want ErrVMPaused", err)
	}
	if errors.Is(err, vmmadapter.ErrEjectTimeout) || time.Since(start) >= 5*time.Second {
		t.Fatalf("RemoveNIC waited for an eject: %v", err)
	}
	if n := s.CountCalls("PUT", "/api/v1/vm.remove-device"); n != 0 {
		t.Fatalf("remove-device sent %d times to a paused VM", n)
	}
	put(t, s.Socket(), "vm.resume", 204)
	if err := a.RemoveNIC(context.Background(), "n1"); err != nil {
		t.Fatalf("RemoveNIC after resume = %v", err)
	}
	// Shut down, the NIC goes with a config-only edit.
	addOK(nic("n2", "tap2"))(t, s, a)
	put(t, s.Socket(), "vm.shutdown", 204)
	if err := a.RemoveNIC(context.Background(), "n2"); err != nil || len(s.Net()) != 0 {
		t.Fatalf("RemoveNIC after shutdown = %v, net %v", err, s.Net())
	}
}

// TestAddNICQueueMismatch: CH's check_mq_support refuses a TAP whose
// multi-queue flag does not match the NIC; the adapter says which way.
// A multi-queue TAP takes further queues while held, a single-queue one is
// busy.
func TestAddNICQueueMismatch(t *testing.T) {
	s := sim(t, vmmsim.CHConfig{BootVCPUs: 4})
	a := adapter(t, s.Socket(), fastOpts)
	s.AddTap("tapmq", true)
	s.AddTap("tapsq", false)
	mq := func(id, tap string, pairs int) vmmadapter.NIC {
		n := nic(id, tap)
		n.MAC = ""
		n.QueuePairs = pairs
		return n
	}
	for _, tt := range []struct {
		nic  vmmadapter.NIC
		want string
	}{
		{mq("a", "tapmq", 1), "is multi-queue but the NIC has 1 queue pair"},
		{mq("b", "tapsq", 2), "is single-queue but the NIC has 2 queue pairs"},
	} {
		_, err := a.AddNIC(context.Background(), tt.nic)
		if !errors.Is(err, vmmadapter.ErrTapQueueMismatch) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("AddNIC(%s on %s) = %v, want ErrTapQueueMismatch %q", tt.nic.ID, tt.nic.Tap, err, tt.want)
		}
	}
	s.HoldTap("tapmq")
	s.HoldTap("tapsq")
	if _, err := a.AddNIC(context.Background(), mq("c", "tapmq", 2)); err != nil {
		t.Errorf("a held multi-queue TAP must accept more queues: %v", err)
	}
	if _, err := a.AddNIC(context.Background(), mq("d", "tapsq", 1)); !errors.Is(err, vmmadapter.ErrTapBusy) {
		t.Errorf("a held single-queue TAP: %v, want ErrTapBusy", err)
	}
}

func put(t *testing.T, socket, ep string, want int) {
	t.Helper()
	req, _ := http.NewRequest("PUT", "http://localhost/api/v1/"+ep, nil)
	if st, body := do(t, socket, req); st != want {
		t.Fatalf("PUT %s: %d %s, want %d", ep, st, body, want)
	}
}

func do(t *testing.T, socket string, req *http.Request) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
