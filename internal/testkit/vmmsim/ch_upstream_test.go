package vmmsim

import (
	"strings"
	"testing"
)

// TestCHTapPrivilegeAndMTU: without CAP_NET_ADMIN any mtu in a NetConfig
// fails the add (SIOCSIFMTU, EPERM), at hot-add and at boot; MTUs under
// 1280 fail validation whatever the privilege.
func TestCHTapPrivilegeAndMTU(t *testing.T) {
	tests := []struct {
		name   string
		cfg    CHConfig
		body   string
		status int
		want   string
	}{
		{"unprivileged, mtu", CHConfig{}, `{"tap":"t","id":"a","mtu":1500}`, 500, "Operation not permitted (os error 1)"},
		{"unprivileged, no mtu", CHConfig{}, `{"tap":"t","id":"a"}`, 200, ""},
		{"privileged, mtu", CHConfig{CapNetAdmin: true}, `{"tap":"t","id":"a","mtu":1500}`, 200, ""},
		{"mtu below 1280", CHConfig{CapNetAdmin: true}, `{"tap":"t","id":"a","mtu":1279}`, 500, "lower than 1280"},
		{"mtu below 1280 main", CHConfig{Version: CHMain, CapNetAdmin: true}, `{"tap":"t","id":"a","mtu":576}`, 400, "lower than 1280"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewCH(t, tt.cfg)
			st, body := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", tt.body)
			if st != tt.status || !strings.Contains(body, tt.want) {
				t.Fatalf("add-net: %d %s, want %d with %q", st, body, tt.status, tt.want)
			}
		})
	}
	s := NewCH(t, CHConfig{State: CHCreated})
	if st, body := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t","id":"a","mtu":1500}`); st != 204 {
		t.Fatalf("cold add: %d %s (the TAP is opened only at boot)", st, body)
	}
	if st, body := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.boot", ""); st != 500 || !strings.Contains(body, "Setting MTU failed") {
		t.Fatalf("boot with an mtu, unprivileged: %d %s", st, body)
	}
}

// TestCHLifecycle: pause, resume, shutdown and delete as vmm/src/lib.rs
// serves them; a paused guest ejects nothing until resumed.
func TestCHLifecycle(t *testing.T) {
	s := NewCH(t, CHConfig{})
	mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t1","id":"n1"}`)
	step := func(ep string, status int, want string) {
		t.Helper()
		st, body := mustRaw(t, s.Socket(), "PUT", "/api/v1/"+ep, "")
		if st != status || !strings.Contains(body, want) {
			t.Fatalf("%s: %d %s, want %d %q", ep, st, body, status, want)
		}
	}
	step("vm.resume", 500, "invalid VM state transition: Running to Running")
	step("vm.pause", 204, "")
	step("vm.pause", 500, "Cannot pause VM")
	if st, _ := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.remove-device", `{"id":"n1"}`); st != 204 {
		t.Fatalf("remove-device on a paused VM: %d (CH accepts it)", st)
	}
	if got := s.Devices(); len(got) != 1 {
		t.Fatalf("a paused guest ejected: tree %v", got)
	}
	step("vm.resume", 204, "")
	if got := s.Devices(); len(got) != 0 {
		t.Fatalf("no eject after resume: tree %v", got)
	}
	mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t1","id":"n2"}`)
	step("vm.shutdown", 204, "")
	if s.State() != CHCreated || len(s.Devices()) != 0 || len(s.Net()) != 1 {
		t.Fatalf("after shutdown: state %s, tree %v, net %v; want Created, no devices, the config kept", s.State(), s.Devices(), s.Net())
	}
	step("vm.shutdown", 500, "VM is not running")
	step("vm.boot", 204, "")
	step("vm.delete", 204, "")
	if s.State() != CHNotCreated || len(s.Net()) != 0 {
		t.Fatalf("after delete: %s %v", s.State(), s.Net())
	}
	step("vm.delete", 204, "")
	step("vm.pause", 500, "VM is not running")
}

// TestCHMissedNotification: with IgnoreFirstNotify the device stays until
// remove-device is sent again (on versions that accept it).
func TestCHMissedNotification(t *testing.T) {
	s := NewCH(t, CHConfig{Version: CHMain, IgnoreFirstNotify: true})
	mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t1","id":"n1"}`)
	mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.remove-device", `{"id":"n1"}`)
	if got := s.Devices(); len(got) != 1 {
		t.Fatalf("ejected although the guest missed the notification: %v", got)
	}
	if st, _ := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.remove-device", `{"id":"n1"}`); st != 204 {
		t.Fatalf("second remove on main: %d", st)
	}
	if got := s.Devices(); len(got) != 0 {
		t.Fatalf("not ejected after the second notification: %v", got)
	}
}

// TestCHMultiQueueTaps: check_mq_support and the kernel's one-queue rule.
func TestCHMultiQueueTaps(t *testing.T) {
	s := NewCH(t, CHConfig{BootVCPUs: 4})
	s.AddTap("mq", true)
	s.AddTap("sq", false)
	for _, tt := range []struct {
		body   string
		status int
		want   string
	}{
		{`{"tap":"mq","id":"a","num_queues":2}`, 500, "(no support device side)"},
		{`{"tap":"sq","id":"b","num_queues":4}`, 500, "(no support TAP side)"},
		{`{"tap":"mq","id":"c","num_queues":4}`, 200, ""},
		{`{"tap":"mq","id":"d","num_queues":4}`, 200, ""}, // another queue on a held MQ TAP
		{`{"tap":"sq","id":"e","num_queues":2}`, 200, ""},
		{`{"tap":"sq","id":"f","num_queues":2}`, 500, "Device or resource busy (os error 16)"},
	} {
		st, body := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", tt.body)
		if st != tt.status || !strings.Contains(body, tt.want) {
			t.Errorf("add %s: %d %s, want %d %q", tt.body, st, body, tt.status, tt.want)
		}
	}
}
