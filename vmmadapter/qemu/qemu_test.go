package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmnic/vmnic/vmmadapter"
)

var fast = vmmadapter.Options{CallTimeout: 300 * time.Millisecond, RemoveTimeout: 500 * time.Millisecond}

// within fails the test if fn does not return in d: the adapter must never
// hang, whatever the server does.
func within(t *testing.T, d time.Duration, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("call still blocked after %s", d)
	}
}

func openSim(t *testing.T, s *simQEMU, opts vmmadapter.Options) (*Adapter, *fakeQMP) {
	t.Helper()
	f := newFakeQMP(t, s.handle)
	a, err := Open(f.path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, f
}

func TestInfo(t *testing.T) {
	for _, tt := range []struct {
		status string
		booted bool
	}{{"running", true}, {"paused", true}, {"prelaunch", false}, {"inmigrate", false}} {
		t.Run(tt.status, func(t *testing.T) {
			s := newSim()
			s.status = tt.status
			a, _ := openSim(t, s, fast)
			info, err := a.Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			want := vmmadapter.Info{Kind: vmmadapter.QEMU, Version: "8.2.1", PID: os.Getpid(), Booted: tt.booted, HotAdd: true, HotRemove: true}
			if info != want {
				t.Errorf("Info = %+v, want %+v", info, want)
			}
		})
	}
}

// jsonEqual compares a request's arguments with want after a JSON round trip.
func jsonEqual(t *testing.T, what string, got map[string]any, want map[string]any) {
	t.Helper()
	b, _ := json.Marshal(want)
	var w map[string]any
	json.Unmarshal(b, &w)
	if !reflect.DeepEqual(got, w) {
		t.Errorf("%s arguments\n got %v\nwant %v", what, got, w)
	}
}

func TestAddNIC(t *testing.T) {
	tests := []struct {
		name       string
		status     string
		nic        vmmadapter.NIC
		wantID     string
		wantNetdev map[string]any
		wantDevice map[string]any
	}{
		{
			name:   "hot, plain",
			status: "running",
			nic:    vmmadapter.NIC{ID: "net0", Tap: "tap0", MAC: "02:00:00:00:00:01"},
			wantID: "net0",
			wantNetdev: map[string]any{"type": "tap", "id": "netdev-net0", "ifname": "tap0",
				"script": "no", "downscript": "no", "vhost": false},
			wantDevice: map[string]any{"driver": "virtio-net-pci", "id": "net0", "netdev": "netdev-net0",
				"mac": "02:00:00:00:00:01"},
		},
		{
			name:   "cold, multiqueue, MTU, queue size, id sanitised",
			status: "prelaunch",
			nic:    vmmadapter.NIC{ID: "pod/eth1", Tap: "tap1", MAC: "02:00:00:00:00:02", MTU: 9000, QueuePairs: 4, QueueSize: 512},
			wantID: SanitizeID("pod/eth1"),
			wantNetdev: map[string]any{"type": "tap", "id": NetdevID(SanitizeID("pod/eth1")), "ifname": "tap1",
				"script": "no", "downscript": "no", "vhost": false, "queues": 4},
			wantDevice: map[string]any{"driver": "virtio-net-pci", "id": SanitizeID("pod/eth1"),
				"netdev": NetdevID(SanitizeID("pod/eth1")), "mac": "02:00:00:00:00:02", "host_mtu": 9000,
				"mq": true, "vectors": 10, "rx_queue_size": 512, "tx_queue_size": 256},
		},
		{
			name:   "no id: named after the tap",
			status: "running",
			nic:    vmmadapter.NIC{Tap: "tap2"},
			wantID: "tap2",
			wantNetdev: map[string]any{"type": "tap", "id": "netdev-tap2", "ifname": "tap2",
				"script": "no", "downscript": "no", "vhost": false},
			wantDevice: map[string]any{"driver": "virtio-net-pci", "id": "tap2", "netdev": "netdev-tap2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSim()
			s.status = tt.status
			a, f := openSim(t, s, fast)
			att, err := a.AddNIC(context.Background(), tt.nic)
			if err != nil {
				t.Fatal(err)
			}
			want := vmmadapter.Attachment{ID: tt.wantID, BDF: "0000:00:03.0", Hot: tt.status == "running"}
			if att != want {
				t.Errorf("Attachment = %+v, want %+v", att, want)
			}
			nd, _ := f.request("netdev_add")
			jsonEqual(t, "netdev_add", nd.Arguments, tt.wantNetdev)
			dev, _ := f.request("device_add")
			jsonEqual(t, "device_add", dev.Arguments, tt.wantDevice)
			ids, err := a.NICs(context.Background())
			if err != nil || !slices.Equal(ids, []string{tt.wantID}) {
				t.Errorf("NICs = %v, %v", ids, err)
			}
		})
	}
}

func TestAddNICErrors(t *testing.T) {
	tests := []struct {
		name        string
		setup       func(s *simQEMU)
		nic         vmmadapter.NIC
		wantErr     string
		wantIs      error
		wantCmds    []string
		wantNetdevs int
	}{
		{
			name:     "device_add fails: netdev rolled back",
			setup:    func(s *simQEMU) { s.failDeviceAdd = "boom" },
			nic:      vmmadapter.NIC{ID: "net0", Tap: "tap0"},
			wantErr:  "qmp device_add: GenericError: boom",
			wantCmds: []string{"query-status", "qom-list", "qom-list", "netdev_add", "device_add", "netdev_del"},
		},
		{
			name:     "no hotplug on this bus",
			setup:    func(s *simQEMU) { s.failDeviceAdd = "Bus 'pci.0' does not support hotplugging" },
			nic:      vmmadapter.NIC{ID: "net0", Tap: "tap0"},
			wantErr:  "does not support hotplugging",
			wantIs:   vmmadapter.ErrHotplugUnsupported,
			wantCmds: []string{"query-status", "qom-list", "qom-list", "netdev_add", "device_add", "netdev_del"},
		},
		{
			name: "id in use",
			setup: func(s *simQEMU) {
				s.netdevs["netdev-net0"] = true
				s.devices["net0"] = simDev{typ: "virtio-net-pci", netdev: "netdev-net0"}
			},
			nic:         vmmadapter.NIC{ID: "net0", Tap: "tap0"},
			wantErr:     "device id already in use",
			wantIs:      vmmadapter.ErrDeviceIDInUse,
			wantCmds:    []string{"query-status", "qom-list"},
			wantNetdevs: 1,
		},
		{
			name:     "tap busy",
			setup:    func(s *simQEMU) { s.failNetdevAdd = "could not configure /dev/net/tun (tap0): Device or resource busy" },
			nic:      vmmadapter.NIC{ID: "net0", Tap: "tap0"},
			wantErr:  "Device or resource busy",
			wantIs:   vmmadapter.ErrTapBusy,
			wantCmds: []string{"query-status", "qom-list", "qom-list", "netdev_add"},
		},
		{
			name:     "queue size below 256",
			nic:      vmmadapter.NIC{ID: "net0", Tap: "tap0", QueueSize: 128},
			wantErr:  "queueSize 128: QEMU's virtio-net takes a power of two from 256 to 1024",
			wantCmds: nil,
		},
		{
			name:     "queue size above 1024",
			nic:      vmmadapter.NIC{ID: "net0", Tap: "tap0", QueueSize: 2048},
			wantErr:  "queueSize 2048",
			wantCmds: nil,
		},
		{
			name:     "bad MAC",
			nic:      vmmadapter.NIC{ID: "net0", Tap: "tap0", MAC: "02:00:00:00:00"},
			wantErr:  "bad MAC",
			wantCmds: nil,
		},
		{
			name:     "no tap",
			nic:      vmmadapter.NIC{ID: "net0"},
			wantErr:  "no tap name",
			wantCmds: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSim()
			if tt.setup != nil {
				tt.setup(s)
			}
			a, f := openSim(t, s, fast)
			_, err := a.AddNIC(context.Background(), tt.nic)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want it to contain %q", err, tt.wantErr)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
			if got := f.commands(); !slices.Equal(got, tt.wantCmds) {
				t.Errorf("commands %v, want %v", got, tt.wantCmds)
			}
			if len(s.netdevs) != tt.wantNetdevs {
				t.Errorf("netdevs left: %v", s.netdevs)
			}
		})
	}
}

// A netdev of ours left without its device (an add interrupted between
// netdev_add and device_add) is replaced, not an error.
func TestAddNICStaleNetdev(t *testing.T) {
	s := newSim()
	s.netdevs["netdev-net0"] = true
	a, f := openSim(t, s, fast)
	if _, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "net0", Tap: "tap0"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"query-status", "qom-list", "qom-list", "netdev_add", "netdev_del", "netdev_add", "device_add", "query-pci"}
	if got := f.commands(); !slices.Equal(got, want) {
		t.Errorf("commands %v, want %v", got, want)
	}
}

func TestRemoveNIC(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(s *simQEMU)
		id       string
		wantErr  string
		wantIs   error
		wantCmds []string
		wantLeft int // devices left
	}{
		{
			name:     "event after reply, other events interleaved",
			id:       "net0",
			wantCmds: []string{"qom-list", "query-status", "qom-get", "device_del", "netdev_del"},
		},
		{
			name:     "event before reply",
			setup:    func(s *simQEMU) { s.eject = "before" },
			id:       "net0",
			wantCmds: []string{"qom-list", "query-status", "qom-get", "device_del", "netdev_del"},
		},
		{
			name:     "no event, device leaves the tree",
			setup:    func(s *simQEMU) { s.eject = "silent" },
			id:       "net0",
			wantCmds: []string{"qom-list", "query-status", "qom-get", "device_del", "qom-list", "netdev_del"},
		},
		{
			name:     "guest never ejects",
			setup:    func(s *simQEMU) { s.eject = "never" },
			id:       "net0",
			wantErr:  "no DEVICE_DELETED",
			wantIs:   vmmadapter.ErrEjectTimeout,
			wantLeft: 1,
		},
		{
			name:     "unplug already pending",
			setup:    func(s *simQEMU) { s.unplugging["net0"] = true; s.eject = "never" },
			id:       "net0",
			wantErr:  "no DEVICE_DELETED",
			wantLeft: 1,
		},
		{
			name:     "unknown id",
			id:       "nope",
			wantCmds: []string{"qom-list", "netdev_del"},
			wantLeft: 1,
		},
		{
			name:     "unknown id, leftover netdev of ours is dropped",
			setup:    func(s *simQEMU) { s.netdevs["netdev-gone"] = true },
			id:       "gone",
			wantCmds: []string{"qom-list", "netdev_del"},
			wantLeft: 1,
		},
		{
			name:     "not a NIC",
			setup:    func(s *simQEMU) { s.devices["disk0"] = simDev{typ: "virtio-blk-pci"} },
			id:       "disk0",
			wantErr:  "not a network device",
			wantCmds: []string{"qom-list"},
			wantLeft: 2,
		},
		{
			name:     "before boot",
			setup:    func(s *simQEMU) { s.status = "prelaunch" },
			id:       "net0",
			wantIs:   ErrRemoveBeforeBoot,
			wantErr:  "not started",
			wantCmds: []string{"qom-list", "query-status"},
			wantLeft: 1,
		},
		{
			name: "unsanitised id",
			setup: func(s *simQEMU) {
				s.netdevs["netdev-"+SanitizeID("a/b")] = true
				s.devices[SanitizeID("a/b")] = simDev{typ: "virtio-net-pci", netdev: "netdev-" + SanitizeID("a/b")}
			},
			id:       "a/b",
			wantCmds: []string{"qom-list", "query-status", "qom-get", "device_del", "netdev_del"},
			wantLeft: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSim()
			s.netdevs["netdev-net0"] = true
			s.devices["net0"] = simDev{typ: "virtio-net-pci", netdev: "netdev-net0"}
			if tt.setup != nil {
				tt.setup(s)
			}
			a, f := openSim(t, s, fast)
			var err error
			within(t, 10*time.Second, func() { err = a.RemoveNIC(context.Background(), tt.id) })
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("error %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want it to contain %q", err, tt.wantErr)
			case tt.wantIs != nil && !errors.Is(err, tt.wantIs):
				t.Fatalf("error %v is not %v", err, tt.wantIs)
			}
			got := f.commands()
			if tt.wantCmds != nil && !slices.Equal(got, tt.wantCmds) {
				t.Errorf("commands %v, want %v", got, tt.wantCmds)
			}
			if tt.wantErr != "" && slices.Contains(got, "netdev_del") {
				t.Errorf("netdev_del sent although the device is still there: %v", got)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if len(s.devices) != tt.wantLeft {
				t.Errorf("devices left: %v, want %d", s.devices, tt.wantLeft)
			}
			for id := range s.netdevs {
				if _, used := s.devices[strings.TrimPrefix(id, "netdev-")]; !used {
					t.Errorf("netdev %s left without its device", id)
				}
			}
		})
	}
}

func TestNICs(t *testing.T) {
	s := newSim()
	s.devices["b"] = simDev{typ: "virtio-net-pci"}
	s.devices["a"] = simDev{typ: "e1000"}
	s.devices["disk"] = simDev{typ: "virtio-blk-pci"}
	s.devices["c"] = simDev{typ: "virtio-net-pci-non-transitional"}
	a, _ := openSim(t, s, fast)
	got, err := a.NICs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("NICs = %v, want %v", got, want)
	}
}

// TestProtocol covers what a misbehaving or dying QEMU can do to a call.
func TestProtocol(t *testing.T) {
	tests := []struct {
		name    string
		greet   func(c *fakeConn, n int) bool
		handle  func(c *fakeConn, r fakeReq)
		wantNew string // New fails with this
		wantErr string // else the first Info fails with this
		wantIs  error
	}{
		{
			name:    "no greeting",
			greet:   func(*fakeConn, int) bool { return false },
			wantNew: "read greeting: no answer",
			wantIs:  context.DeadlineExceeded,
		},
		{
			name: "garbage greeting",
			greet: func(c *fakeConn, n int) bool {
				c.raw("}}} hello\n")
				return false
			},
			wantNew: "read greeting",
		},
		{
			name: "closed before greeting",
			greet: func(c *fakeConn, n int) bool {
				c.c.Close()
				return false
			},
			wantNew: "read greeting",
			wantIs:  vmmadapter.ErrUnavailable,
		},
		{
			name:    "never answers a command",
			handle:  func(c *fakeConn, r fakeReq) {},
			wantErr: "qmp query-version: no reply",
			wantIs:  context.DeadlineExceeded,
		},
		{
			name: "error reply",
			handle: func(c *fakeConn, r fakeReq) {
				c.fail(r, "CommandNotFound", "The command query-version has not been found")
			},
			wantErr: "qmp query-version: CommandNotFound: The command query-version has not been found",
		},
		{
			name: "events and a stray reply before the answer",
			handle: func(c *fakeConn, r fakeReq) {
				c.event("RESUME", nil)
				c.send(map[string]any{"return": map[string]any{}, "id": "someone-else"})
				c.send(map[string]any{"return": map[string]any{}}) // no id
				newSim().handle(c, r)
			},
		},
		{
			name: "closed mid-call",
			handle: func(c *fakeConn, r fakeReq) {
				if r.Execute == "query-status" {
					c.c.Close()
					return
				}
				newSim().handle(c, r)
			},
			wantErr: "qmp query-status: connection lost",
			wantIs:  vmmadapter.ErrUnavailable,
		},
		{
			name: "garbage reply",
			handle: func(c *fakeConn, r fakeReq) {
				c.raw(`{"return": {}, "id": ` + "\x01\n")
			},
			wantErr: "malformed QMP message",
		},
		{
			name: "reply of the wrong shape",
			handle: func(c *fakeConn, r fakeReq) {
				c.reply(r, "a string, not an object")
			},
			wantErr: "qmp query-version: decode return value",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			handle := tt.handle
			if handle == nil {
				handle = newSim().handle
			}
			f := newFakeQMPGreet(t, tt.greet, handle)
			var a *Adapter
			var err error
			within(t, 10*time.Second, func() { a, err = Open(f.path, fast) })
			if tt.wantNew != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantNew) {
					t.Fatalf("New: error %v, want it to contain %q", err, tt.wantNew)
				}
				if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
					t.Fatalf("New: error %v is not %v", err, tt.wantIs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			within(t, 10*time.Second, func() { _, err = a.Info(context.Background()) })
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Info: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Info: error %v, want it to contain %q", err, tt.wantErr)
			case tt.wantIs != nil && !errors.Is(err, tt.wantIs):
				t.Fatalf("Info: error %v is not %v", err, tt.wantIs)
			}
			var qe *Error
			if strings.Contains(tt.wantErr, "CommandNotFound") && (!errors.As(err, &qe) || qe.Class != "CommandNotFound") {
				t.Errorf("error %v is not a *qemu.Error of class CommandNotFound", err)
			}
		})
	}
}

// After the connection breaks, the next call dials again.
func TestReconnect(t *testing.T) {
	s := newSim()
	var mu sync.Mutex
	var calls int
	f := newFakeQMP(t, func(c *fakeConn, r fakeReq) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first { // the first connection dies on its first command
			c.c.Close()
			return
		}
		s.handle(c, r)
	})
	a, err := Open(f.path, fast)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Info(context.Background()); !errors.Is(err, vmmadapter.ErrUnavailable) {
		t.Fatalf("first Info: %v, want ErrUnavailable", err)
	}
	if _, err := a.Info(context.Background()); err != nil {
		t.Fatalf("second Info: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns != 2 {
		t.Errorf("%d connections, want 2", f.conns)
	}
}

// A reply that arrives after its call timed out is not taken for the reply
// to the next call.
func TestLateReply(t *testing.T) {
	s := newSim()
	var mu sync.Mutex
	var calls int
	f := newFakeQMP(t, func(c *fakeConn, r fakeReq) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			go func() {
				time.Sleep(2 * fast.CallTimeout)
				c.reply(r, map[string]any{"status": "prelaunch", "running": false})
			}()
			return
		}
		s.handle(c, r)
	})
	a, err := Open(f.path, fast)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx := context.Background()
	if _, err := a.booted(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("first call: %v, want deadline exceeded", err)
	}
	time.Sleep(2 * fast.CallTimeout) // the late reply arrives meanwhile
	booted, err := a.booted(ctx)
	if err != nil || !booted {
		t.Fatalf("second call: booted=%v err=%v, want the running status of its own reply", booted, err)
	}
}

func TestContextCancel(t *testing.T) {
	f := newFakeQMP(t, func(c *fakeConn, r fakeReq) {})
	a, err := Open(f.path, vmmadapter.Options{CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	within(t, 10*time.Second, func() { _, err = a.NICs(ctx) })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

func TestUnavailable(t *testing.T) {
	dir := t.TempDir()
	refused := filepath.Join(dir, "refused.sock")
	// A socket file nobody listens on: connect gets ECONNREFUSED.
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: refused}); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{"missing": filepath.Join(dir, "missing.sock"), "refused": refused} {
		t.Run(name, func(t *testing.T) {
			_, err := New(path, fast)
			if !errors.Is(err, vmmadapter.ErrUnavailable) {
				t.Fatalf("error %v, want ErrUnavailable", err)
			}
		})
	}
	if _, err := New("", fast); err == nil {
		t.Error("New with no socket path succeeded")
	}
}

func TestClosedAdapter(t *testing.T) {
	a, _ := openSim(t, newSim(), fast)
	a.Close()
	if _, err := a.Info(context.Background()); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("Info after Close: %v", err)
	}
}

func TestErrorString(t *testing.T) {
	e := &Error{Command: "device_add", Class: "GenericError", Desc: "Duplicate device ID 'net0'"}
	if got, want := e.Error(), "qmp device_add: GenericError: Duplicate device ID 'net0'"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}

// TestRemoveNICEjectTimeoutAndResend: a guest that never ejects makes
// RemoveNIC fail with the shared ErrEjectTimeout, after device_del was sent
// again once QEMU's pending unplug expired.
func TestRemoveNICEjectTimeoutAndResend(t *testing.T) {
	s := newSim()
	s.eject = "never"
	a, f := openSim(t, s, vmmadapter.Options{CallTimeout: 300 * time.Millisecond, RemoveTimeout: 1500 * time.Millisecond})
	a.resend = 300 * time.Millisecond
	if _, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "net0", Tap: "tap0"}); err != nil {
		t.Fatal(err)
	}
	err := a.RemoveNIC(context.Background(), "net0")
	if !errors.Is(err, vmmadapter.ErrEjectTimeout) {
		t.Fatalf("RemoveNIC = %v, want ErrEjectTimeout", err)
	}
	n := 0
	for _, c := range f.commands() {
		if c == "device_del" {
			n++
		}
	}
	if n < 2 {
		t.Fatalf("device_del sent %d times, want a re-send after the pending unplug expired", n)
	}
}

// TestRootPortPlacement: on a q35 machine NICs go onto free PCIe root
// ports; with none free a hot-add fails with ErrNoFreeRootPort and leaves
// no netdev; on pc nothing changes.
func TestRootPortPlacement(t *testing.T) {
	s := newSim()
	s.q35 = true
	s.rootPorts = []string{"rp0", "rp1"}
	a, _ := openSim(t, s, fast)
	for i, want := range []string{"rp0", "rp1"} {
		id := fmt.Sprintf("n%d", i)
		if _, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: id, Tap: "tap" + id}); err != nil {
			t.Fatal(err)
		}
		if got := s.devices[id].bus; got != want {
			t.Fatalf("%s on bus %q, want %s", id, got, want)
		}
	}
	_, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "n2", Tap: "tapn2"})
	if !errors.Is(err, ErrNoFreeRootPort) || !strings.Contains(err.Error(), "--root-ports") {
		t.Fatalf("third AddNIC = %v, want ErrNoFreeRootPort", err)
	}
	if s.netdevs["netdev-n2"] {
		t.Fatal("netdev left behind by the refused add")
	}
	if err := a.RemoveNIC(context.Background(), "n0"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "n2", Tap: "tapn2"}); err != nil || s.devices["n2"].bus != "rp0" {
		t.Fatalf("AddNIC into the freed port: %v, bus %q", err, s.devices["n2"].bus)
	}

	// q35 without root ports: a clear error instead of QEMU's refusal.
	s2 := newSim()
	s2.q35 = true
	a2, _ := openSim(t, s2, fast)
	if _, err := a2.AddNIC(context.Background(), vmmadapter.NIC{ID: "n0", Tap: "tap0"}); !errors.Is(err, ErrNoFreeRootPort) {
		t.Fatalf("q35 without root ports: %v", err)
	}
	// Cold (prelaunch) on q35 without ports: the root bus takes it.
	s2.status = "prelaunch"
	if _, err := a2.AddNIC(context.Background(), vmmadapter.NIC{ID: "n0", Tap: "tap0"}); err != nil || s2.devices["n0"].bus != "" {
		t.Fatalf("cold add on q35: %v", err)
	}
}

// TestAddNICWithFds: a NIC with TAP fds is added as one getfd per queue
// (named vmnic-<id>-q<n>) and a netdev_add naming them in fd=/fds=,
// without ifname, script or queues; when netdev_add fails, every name is
// closed again so QEMU keeps no stray fd.
func TestAddNICWithFds(t *testing.T) {
	devnull := func(n int) []*os.File {
		var out []*os.File
		for range n {
			f, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			out = append(out, f)
		}
		return out
	}
	s := newSim()
	a, f := openSim(t, s, fast)
	if _, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth0", Tap: "tapeth0", QueuePairs: 2, Fds: devnull(2)}); err != nil {
		t.Fatal(err)
	}
	r, ok := f.request("netdev_add")
	if !ok || r.Arguments["fds"] != "vmnic-eth0-q0:vmnic-eth0-q1" || r.Arguments["ifname"] != nil || r.Arguments["queues"] != nil || r.Arguments["vhost"] != false {
		t.Fatalf("netdev_add %+v: want fds=vmnic-eth0-q0:vmnic-eth0-q1, vhost off, no ifname/queues", r.Arguments)
	}
	if got := strings.Join(f.commands(), " "); !strings.Contains(got, "getfd getfd netdev_add device_add") {
		t.Errorf("commands %s: want two getfd before netdev_add", got)
	}
	if len(s.fds) != 0 {
		t.Errorf("names left in QEMU: %v", s.fds)
	}

	s.failNetdevAdd = "could not configure tap"
	if _, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth1", Tap: "tapeth1", Fds: devnull(1)}); err == nil {
		t.Fatal("AddNIC succeeded although netdev_add failed")
	}
	if len(s.fds) != 0 {
		t.Errorf("a failed netdev_add left fds in QEMU: %v", s.fds)
	}
	if _, err := a.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth2", Tap: "tapeth2", QueuePairs: 2, Fds: devnull(1)}); !errors.Is(err, vmmadapter.ErrFdCount) {
		t.Errorf("1 fd for 2 queue pairs = %v, want ErrFdCount", err)
	}
}

// TestPeerCheck: Info reports the QMP connection's peer (SO_PEERCRED) as
// QEMU's pid, the pid attach records; with Options.PeerPID set to another
// process, a NIC with TAP fds is refused with ErrPeerMismatch naming both
// pids before any getfd (no fd is sent, nothing is added), while a NIC
// without fds (nothing to hand over) and fds to the right peer still work.
func TestPeerCheck(t *testing.T) {
	devnull := func() []*os.File {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return []*os.File{f}
	}
	s := newSim()
	a, _ := openSim(t, s, fast)
	info, err := a.Info(context.Background())
	if err != nil || info.PID != os.Getpid() {
		t.Fatalf("Info = %+v, %v: want PID %d (the QMP peer)", info, err, os.Getpid())
	}

	other := os.Getpid() + 100000
	opts := fast
	opts.PeerPID = other
	s2 := newSim()
	b, f := openSim(t, s2, opts)
	_, err = b.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth0", Tap: "tapeth0", Fds: devnull()})
	if !errors.Is(err, vmmadapter.ErrPeerMismatch) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", other)) {
		t.Fatalf("AddNIC with fds to another peer = %v, want ErrPeerMismatch naming pids %d and %d", err, os.Getpid(), other)
	}
	for _, c := range f.commands() {
		if c == "getfd" || c == "netdev_add" || c == "device_add" {
			t.Errorf("%s sent to a peer that is not the recorded VMM (commands %v)", c, f.commands())
		}
	}
	if len(s2.fds) != 0 || len(s2.devices) != 0 {
		t.Errorf("QEMU got fds %v, devices %v", s2.fds, s2.devices)
	}
	if _, err := b.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth1", Tap: "tapeth1"}); err != nil {
		t.Errorf("AddNIC by name (no fd to hand over): %v", err)
	}

	opts.PeerPID = os.Getpid()
	c, _ := openSim(t, newSim(), opts)
	if _, err := c.AddNIC(context.Background(), vmmadapter.NIC{ID: "eth0", Tap: "tapeth0", Fds: devnull()}); err != nil {
		t.Errorf("AddNIC with fds to the recorded peer: %v", err)
	}
}
