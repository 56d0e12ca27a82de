package cloudhypervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/vmmadapter"
	"github.com/vmnic/vmnic/vmmadapter/cloudhypervisor"
)

// Short timeouts keep the tests fast; they bound waits, nothing asserts speed.
var fastOpts = vmmadapter.Options{CallTimeout: 2 * time.Second, RemoveTimeout: 3 * time.Second}

func sim(t *testing.T, cfg vmmsim.CHConfig) *vmmsim.CH {
	t.Helper()
	s := vmmsim.NewCH(t, cfg)
	vmmsim.FailOnViolations(t, s, "Cloud Hypervisor")
	return s
}

func adapter(t *testing.T, socket string, opts vmmadapter.Options) *cloudhypervisor.Adapter {
	t.Helper()
	a, err := cloudhypervisor.New(socket, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func nic(id, tap string) vmmadapter.NIC {
	return vmmadapter.NIC{ID: id, Tap: tap, MAC: "02:00:0a:58:00:05"}
}

func TestInfo(t *testing.T) {
	tests := []struct {
		version int
		state   vmmsim.CHState
		booted  bool
	}{
		{48, vmmsim.CHRunning, true},
		{50, vmmsim.CHCreated, false},
		{52, vmmsim.CHNotCreated, false},
		{53, vmmsim.CHNotCreated, false},
		{53, vmmsim.CHPaused, true},
		{53, vmmsim.CHShutdown, false},
		{vmmsim.CHMain, vmmsim.CHRunning, true},
	}
	for _, tt := range tests {
		t.Run(string(tt.state), func(t *testing.T) {
			s := sim(t, vmmsim.CHConfig{Version: tt.version, State: tt.state})
			info, err := adapter(t, s.Socket(), fastOpts).Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			// The simulator runs in this process: vmm.ping's pid is ours.
			want := vmmadapter.Info{Kind: vmmadapter.CloudHypervisor, Version: itoa(tt.version) + ".0.0", PID: os.Getpid(), Booted: tt.booted, HotAdd: true, HotRemove: true}
			if info != want {
				t.Fatalf("Info = %+v, want %+v", info, want)
			}
		})
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestAddNIC(t *testing.T) {
	tests := []struct {
		name    string
		state   vmmsim.CHState
		nic     vmmadapter.NIC
		hot     bool
		queues  int
		qsize   int
		rawBody string
	}{
		{"cold, defaults", vmmsim.CHCreated, vmmadapter.NIC{ID: "n1", Tap: "tap1", MAC: "02:00:00:00:00:01"}, false, 2, 256,
			`{"tap":"tap1","mac":"02:00:00:00:00:01","num_queues":2,"id":"n1"}`},
		{"hot, one pair", vmmsim.CHRunning, vmmadapter.NIC{ID: "n1", Tap: "tap1", QueuePairs: 1}, true, 2, 256,
			`{"tap":"tap1","num_queues":2,"id":"n1"}`},
		{"hot, two pairs, mtu, queue size", vmmsim.CHRunning, vmmadapter.NIC{ID: "n1", Tap: "tap1", MAC: "02:00:00:00:00:01", MTU: 1450, QueuePairs: 2, QueueSize: 1024}, true, 4, 1024,
			`{"tap":"tap1","mac":"02:00:00:00:00:01","num_queues":4,"queue_size":1024,"id":"n1"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sim(t, vmmsim.CHConfig{State: tt.state})
			att, err := adapter(t, s.Socket(), fastOpts).AddNIC(context.Background(), tt.nic)
			if err != nil {
				t.Fatal(err)
			}
			if att.ID != tt.nic.ID || att.Hot != tt.hot || (att.BDF != "") != tt.hot {
				t.Fatalf("Attachment = %+v, want id %s hot %v (BDF iff hot)", att, tt.nic.ID, tt.hot)
			}
			calls := s.Calls()
			last := calls[len(calls)-1]
			if last.Method != "PUT" || last.Path != "/api/v1/vm.add-net" || string(last.Body) != tt.rawBody {
				t.Fatalf("sent %s %s %s, want PUT /api/v1/vm.add-net %s", last.Method, last.Path, last.Body, tt.rawBody)
			}
			net := s.Net()
			if len(net) != 1 || net[0].NumQueues != tt.queues || net[0].QueueSize != tt.qsize || net[0].Tap != tt.nic.Tap || net[0].MTU != 0 {
				t.Fatalf("VM config.net = %+v", net)
			}
			if got := s.Devices(); tt.hot != (len(got) == 1) {
				t.Fatalf("device tree = %v, hot %v", got, tt.hot)
			}
		})
	}
}

func TestAddNICErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     vmmsim.CHConfig
		prep    func(t *testing.T, s *vmmsim.CH, a *cloudhypervisor.Adapter)
		nic     vmmadapter.NIC
		is      error
		msgs    []string
		noCalls bool
	}{
		{
			name: "duplicate id v53 (500)", cfg: vmmsim.CHConfig{Version: 53},
			prep: addOK(nic("n1", "tap1")), nic: nic("n1", "tap2"), is: vmmadapter.ErrDeviceIDInUse,
			msgs: []string{`"n1"`, "Identifier n1 is not unique", "answered 500", "not have ejected"},
		},
		{
			name: "duplicate id main (409)", cfg: vmmsim.CHConfig{Version: vmmsim.CHMain},
			prep: addOK(nic("n1", "tap1")), nic: nic("n1", "tap2"), is: vmmadapter.ErrDeviceIDInUse,
			msgs: []string{"answered 409", "not unique"},
		},
		{
			name: "id of a NIC not yet ejected", cfg: vmmsim.CHConfig{Version: 50, EjectDelay: -1},
			prep: func(t *testing.T, s *vmmsim.CH, a *cloudhypervisor.Adapter) {
				addOK(nic("n1", "tap1"))(t, s, a)
				ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
				defer cancel()
				if err := a.RemoveNIC(ctx, "n1"); !errors.Is(err, vmmadapter.ErrEjectTimeout) {
					t.Fatalf("RemoveNIC = %v, want eject timeout", err)
				}
			},
			nic: nic("n1", "tap2"), is: vmmadapter.ErrDeviceIDInUse, msgs: []string{"Error from device manager"},
		},
		{
			name: "TAP busy", cfg: vmmsim.CHConfig{},
			prep: func(t *testing.T, s *vmmsim.CH, _ *cloudhypervisor.Adapter) { s.HoldTap("tap1") },
			nic:  nic("n1", "tap1"), is: vmmadapter.ErrTapBusy,
			msgs: []string{"TAP tap1", "Device or resource busy (os error 16)", `add NIC "n1"`},
		},
		{
			name: "no VM", cfg: vmmsim.CHConfig{State: vmmsim.CHNotCreated, Version: 52},
			nic: nic("n1", "tap1"), msgs: []string{"no VM has been created", "VM is not created"},
		},
		{
			name: "too many queues", cfg: vmmsim.CHConfig{BootVCPUs: 1},
			nic:  vmmadapter.NIC{ID: "n1", Tap: "tap1", QueuePairs: 2},
			msgs: []string{"Error validating configuration", "exceeds the number of vCPUs"},
		},
		{name: "no id", nic: vmmadapter.NIC{Tap: "tap1"}, msgs: []string{"without an id"}, noCalls: true},
		{name: "reserved id", nic: nic("__x", "tap1"), msgs: []string{"reserved"}, noCalls: true},
		{name: "no tap", nic: vmmadapter.NIC{ID: "n1"}, msgs: []string{"without a TAP"}, noCalls: true},
		{name: "long tap", nic: nic("n1", "tap456789abcdef0"), msgs: []string{"longer than 15"}, noCalls: true},
		{name: "comma", nic: nic("n1,x", "tap1"), msgs: []string{"must not contain"}, noCalls: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sim(t, tt.cfg)
			a := adapter(t, s.Socket(), fastOpts)
			if tt.prep != nil {
				tt.prep(t, s, a)
			}
			before := len(s.Calls())
			_, err := a.AddNIC(context.Background(), tt.nic)
			if err == nil {
				t.Fatal("AddNIC succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			for _, m := range tt.msgs {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q lacks %q", err, m)
				}
			}
			if tt.noCalls && len(s.Calls()) != before {
				t.Errorf("an invalid NIC reached the VMM: %+v", s.Calls()[before:])
			}
		})
	}
}

func addOK(n vmmadapter.NIC) func(*testing.T, *vmmsim.CH, *cloudhypervisor.Adapter) {
	return func(t *testing.T, _ *vmmsim.CH, a *cloudhypervisor.Adapter) {
		t.Helper()
		if _, err := a.AddNIC(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRemoveNICWaitsForEject(t *testing.T) {
	for _, version := range []int{48, 49, 50, 51, 52, 53, vmmsim.CHMain} {
		t.Run("v"+itoa(version), func(t *testing.T) {
			t.Parallel() // waits on timers, not CPU
			s := sim(t, vmmsim.CHConfig{Version: version, EjectDelay: 40 * time.Millisecond})
			a := adapter(t, s.Socket(), fastOpts)
			addOK(nic("n1", "tap1"))(t, s, a)
			if err := a.RemoveNIC(context.Background(), "n1"); err != nil {
				t.Fatal(err)
			}
			if d := s.Devices(); len(d) != 0 {
				t.Fatalf("RemoveNIC returned while the device is still in the tree: %v", d)
			}
			if n := s.RemoveRequests("n1"); n != 1 {
				t.Fatalf("remove-device sent %d times, want 1", n)
			}
			if polls := s.CountCalls("GET", "/api/v1/vm.info"); polls < 2 {
				t.Fatalf("vm.info polled %d times; RemoveNIC did not wait", polls)
			}
			// The TAP and the id are free again: re-add, then remove again.
			addOK(nic("n1", "tap1"))(t, s, a)
			if err := a.RemoveNIC(context.Background(), "n1"); err != nil {
				t.Fatal(err)
			}
			if n := s.RemoveRequests("n1"); n != 2 {
				t.Fatalf("second lifecycle: remove-device sent %d times in all, want 2", n)
			}
		})
	}
}

// TestNoDoubleRemove: on v49–v52 a second remove-device for one id kills the
// VMM, and v53 refuses it. However often RemoveNIC is asked there, by this
// adapter or a new one (a new CNI DEL), remove-device goes out once.
func TestNoDoubleRemove(t *testing.T) {
	for _, version := range []int{49, 50, 51, 52, 53} {
		t.Run("v"+itoa(version), func(t *testing.T) {
			t.Parallel() // waits on timers, not CPU
			s := sim(t, vmmsim.CHConfig{Version: version, EjectDelay: -1})
			opts := vmmadapter.Options{CallTimeout: time.Second, RemoveTimeout: 60 * time.Millisecond}
			a := adapter(t, s.Socket(), opts)
			addOK(nic("n1", "tap1"))(t, s, a)
			for i := 0; i < 2; i++ {
				err := a.RemoveNIC(context.Background(), "n1")
				if !errors.Is(err, vmmadapter.ErrEjectTimeout) {
					t.Fatalf("RemoveNIC #%d = %v, want ErrEjectTimeout", i+1, err)
				}
				for _, m := range []string{`"n1"`, "still in its device tree", s.Socket(), "a later remove waits for it again"} {
					if !strings.Contains(err.Error(), m) {
						t.Errorf("error %q lacks %q", err, m)
					}
				}
			}
			other := adapter(t, s.Socket(), opts) // another process, no memory
			if err := other.RemoveNIC(context.Background(), "n1"); !errors.Is(err, vmmadapter.ErrEjectTimeout) {
				t.Fatalf("RemoveNIC from a fresh adapter = %v", err)
			}
			if pending, err := other.Pending(context.Background(), "n1"); err != nil || !pending {
				t.Fatalf("Pending = %v, %v", pending, err)
			}
			if n := s.CountCalls("PUT", "/api/v1/vm.remove-device"); n != 1 {
				t.Fatalf("remove-device sent %d times, want exactly 1", n)
			}
			if dead, why := s.Dead(); dead {
				t.Fatalf("VMM died: %s", why)
			}
			s.Eject("n1")
			if err := a.RemoveNIC(context.Background(), "n1"); err != nil {
				t.Fatalf("RemoveNIC after the eject = %v", err)
			}
			if n := s.CountCalls("PUT", "/api/v1/vm.remove-device"); n != 1 {
				t.Fatalf("remove-device sent %d times, want exactly 1", n)
			}
		})
	}
}

// TestNoDoubleRemoveAfterLostAnswer: the first remove-device got no answer
// (processed, or queued behind a busy VMM thread): asking again only waits.
func TestNoDoubleRemoveAfterLostAnswer(t *testing.T) {
	for _, mode := range []vmmsim.FaultMode{vmmsim.FaultLoseAnswer, vmmsim.FaultNeverAnswer} {
		t.Run(mode.String(), func(t *testing.T) {
			s := sim(t, vmmsim.CHConfig{Version: 50, EjectDelay: -1})
			a := adapter(t, s.Socket(), vmmadapter.Options{CallTimeout: 100 * time.Millisecond, RemoveTimeout: 150 * time.Millisecond})
			addOK(nic("n1", "tap1"))(t, s, a)
			s.SetFault(vmmsim.Fault{Mode: mode, Path: "/api/v1/vm.remove-device", Times: 1})
			if err := a.RemoveNIC(context.Background(), "n1"); err == nil || !strings.Contains(err.Error(), "PUT /api/v1/vm.remove-device") {
				t.Fatalf("RemoveNIC = %v, want an error naming the call", err)
			}
			if err := a.RemoveNIC(context.Background(), "n1"); !errors.Is(err, vmmadapter.ErrEjectTimeout) {
				t.Fatalf("second RemoveNIC = %v, want ErrEjectTimeout (wait only)", err)
			}
			if n := s.CountCalls("PUT", "/api/v1/vm.remove-device"); n != 1 {
				t.Fatalf("remove-device sent %d times, want 1", n)
			}
			if dead, why := s.Dead(); dead {
				t.Fatalf("VMM died: %s", why)
			}
		})
	}
}

func TestRemoveNICCases(t *testing.T) {
	tests := []struct {
		name    string
		cfg     vmmsim.CHConfig
		add     bool
		id      string
		removes int
		netLeft int
	}{
		{"absent id, booted", vmmsim.CHConfig{}, true, "other", 0, 1},
		{"no VM", vmmsim.CHConfig{State: vmmsim.CHNotCreated}, false, "n1", 0, 0},
		{"before boot", vmmsim.CHConfig{State: vmmsim.CHCreated, EjectDelay: -1}, true, "n1", 1, 0},
		{"absent id before boot", vmmsim.CHConfig{State: vmmsim.CHCreated}, true, "x", 0, 1},
		{"immediate eject", vmmsim.CHConfig{Version: 51}, true, "n1", 1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sim(t, tt.cfg)
			a := adapter(t, s.Socket(), fastOpts)
			if tt.add {
				addOK(nic("n1", "tap1"))(t, s, a)
			}
			if err := a.RemoveNIC(context.Background(), tt.id); err != nil {
				t.Fatal(err)
			}
			if n := s.CountCalls("PUT", "/api/v1/vm.remove-device"); n != tt.removes {
				t.Errorf("remove-device sent %d times, want %d", n, tt.removes)
			}
			if n := len(s.Net()); n != tt.netLeft {
				t.Errorf("%d NICs left, want %d", n, tt.netLeft)
			}
		})
	}
}

func TestNICs(t *testing.T) {
	s := sim(t, vmmsim.CHConfig{EjectDelay: -1})
	a := adapter(t, s.Socket(), vmmadapter.Options{RemoveTimeout: 50 * time.Millisecond})
	ctx := context.Background()
	if ids, err := a.NICs(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("NICs = %v, %v", ids, err)
	}
	addOK(nic("n1", "tap1"))(t, s, a)
	addOK(nic("n2", "tap2"))(t, s, a)
	if ids, err := a.NICs(ctx); err != nil || !reflect.DeepEqual(ids, []string{"n1", "n2"}) {
		t.Fatalf("NICs = %v, %v", ids, err)
	}
	a.RemoveNIC(ctx, "n1") //nolint:errcheck // eject never comes: timeout expected
	if ids, err := a.NICs(ctx); err != nil || !reflect.DeepEqual(ids, []string{"n2"}) {
		t.Fatalf("NICs after removing n1 = %v, %v (a removed NIC leaves the list at once)", ids, err)
	}
	// The rng device of the tree is not a NIC.
	if ids, _ := a.NICs(ctx); len(ids) != 1 {
		t.Fatalf("NICs = %v", ids)
	}
}

func TestTransportFailures(t *testing.T) {
	opts := vmmadapter.Options{CallTimeout: 150 * time.Millisecond, RemoveTimeout: time.Second}
	tests := []struct {
		name   string
		fault  vmmsim.Fault
		is     error
		msgs   []string
		closed bool // stop the simulator first
	}{
		{name: "never answers", fault: vmmsim.Fault{Mode: vmmsim.FaultNeverAnswer}, is: context.DeadlineExceeded,
			msgs: []string{"no answer within 150ms", "GET /api/v1/vmm.ping", "ch.sock"}},
		{name: "answers too late", fault: vmmsim.Fault{Mode: vmmsim.FaultDelay, Delay: time.Hour}, is: context.DeadlineExceeded,
			msgs: []string{"no answer within"}},
		{name: "garbage", fault: vmmsim.Fault{Mode: vmmsim.FaultGarbage}, msgs: []string{"not an HTTP response", "GET /api/v1/vmm.ping"}},
		{name: "closes mid-call", fault: vmmsim.Fault{Mode: vmmsim.FaultCloseMidCall}, msgs: []string{"closed the connection", "ch.sock"}},
		{name: "body not JSON", fault: vmmsim.Fault{Mode: vmmsim.FaultBadBody}, msgs: []string{"not valid VmmPingResponse", "not json"}},
		{name: "VMM gone", closed: true, is: vmmadapter.ErrUnavailable, msgs: []string{"cannot connect", "ch.sock"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := vmmsim.NewCH(t, vmmsim.CHConfig{})
			if tt.closed {
				s.Close()
			}
			s.SetFault(tt.fault)
			a := adapter(t, s.Socket(), opts)
			_, err := returnsWithin(t, func() (vmmadapter.Info, error) { return a.Info(context.Background()) })
			if err == nil {
				t.Fatal("Info succeeded")
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			for _, m := range tt.msgs {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q lacks %q", err, m)
				}
			}
		})
	}
}

// returnsWithin fails the test if f hangs (a safety net, not a timing check).
func returnsWithin[T any](t *testing.T, f func() (T, error)) (T, error) {
	t.Helper()
	type res struct {
		v   T
		err error
	}
	ch := make(chan res, 1)
	go func() { v, err := f(); ch <- res{v, err} }()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(20 * time.Second):
		t.Fatal("call hung")
	}
	panic("unreachable")
}

func TestUnavailable(t *testing.T) {
	dir := t.TempDir()
	notSock := filepath.Join(dir, "file")
	if err := os.WriteFile(notSock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dead := vmmsim.NewCH(t, vmmsim.CHConfig{Version: 50, EjectDelay: -1})
	da := adapter(t, dead.Socket(), fastOpts)
	addOK(nic("n1", "tap1"))(t, dead, da)
	// Make it die the way v50 does (a second remove-device, sent raw).
	for i := 0; i < 2; i++ {
		_ = rawRemove(dead.Socket(), "n1")
	}
	if d, _ := dead.Dead(); !d {
		t.Fatal("simulator did not die")
	}
	for name, sock := range map[string]string{
		"missing socket": filepath.Join(dir, "nope.sock"),
		"not a socket":   notSock,
		"dead VMM":       dead.Socket(),
	} {
		t.Run(name, func(t *testing.T) {
			a := adapter(t, sock, fastOpts)
			ctx := context.Background()
			_, err1 := a.Info(ctx)
			_, err2 := a.AddNIC(ctx, nic("n2", "tap2"))
			err3 := a.RemoveNIC(ctx, "n1")
			_, err4 := a.NICs(ctx)
			for i, err := range []error{err1, err2, err3, err4} {
				if !errors.Is(err, vmmadapter.ErrUnavailable) || !strings.Contains(err.Error(), sock) {
					t.Errorf("call %d: %v, want ErrUnavailable naming %s", i+1, err, sock)
				}
			}
		})
	}
}

func TestCtxDeadline(t *testing.T) {
	s := vmmsim.NewCH(t, vmmsim.CHConfig{})
	s.SetFault(vmmsim.Fault{Mode: vmmsim.FaultNeverAnswer})
	a := adapter(t, s.Socket(), vmmadapter.Options{CallTimeout: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := returnsWithin(t, func() (vmmadapter.Attachment, error) { return a.AddNIC(ctx, nic("n1", "tap1")) })
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "PUT /api/v1/vm.add-net") {
		t.Fatalf("err = %v", err)
	}
}

func TestNetArgs(t *testing.T) {
	tests := []struct {
		name string
		nics []vmmadapter.NIC
		want []string
	}{
		{"none", nil, nil},
		{"minimal", []vmmadapter.NIC{{Tap: "tap0"}}, []string{"--net", "tap=tap0,num_queues=2"}},
		{"full", []vmmadapter.NIC{
			{ID: "vmnic_1", Tap: "vmnic1", MAC: "02:00:0a:58:00:05", MTU: 1450, QueuePairs: 2, QueueSize: 512},
			{ID: "vmnic_2", Tap: "vmnic2", MAC: "02:00:0a:58:00:06"},
		}, []string{"--net",
			"tap=vmnic1,mac=02:00:0a:58:00:05,num_queues=4,queue_size=512,id=vmnic_1",
			"tap=vmnic2,mac=02:00:0a:58:00:06,num_queues=2,id=vmnic_2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cloudhypervisor.NetArgs(tt.nics); !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("NetArgs = %q, want %q", got, tt.want)
			}
		})
	}
}

// rawRemove sends a remove-device behind the adapter's back.
func rawRemove(socket, id string) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
	req, _ := http.NewRequest("PUT", "http://localhost/api/v1/vm.remove-device", strings.NewReader(`{"id":"`+id+`"}`))
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

// TestRefusedRemoveMaySendAgain: a remove-device the VMM answered with an
// error left nothing pending, so a later RemoveNIC sends it again.
func TestRefusedRemoveMaySendAgain(t *testing.T) {
	s := sim(t, vmmsim.CHConfig{Version: 50})
	a := adapter(t, s.Socket(), fastOpts)
	addOK(nic("n1", "tap1"))(t, s, a)
	s.SetFault(vmmsim.Fault{Mode: vmmsim.FaultReply, Path: "/api/v1/vm.remove-device", Times: 1,
		Status: 500, Body: `["Error from API","The device could not be removed from the VM","VM is migrating"]`})
	err := a.RemoveNIC(context.Background(), "n1")
	if err == nil || !strings.Contains(err.Error(), "answered 500: Error from API: The device could not be removed from the VM: VM is migrating") {
		t.Fatalf("RemoveNIC = %v", err)
	}
	if err := a.RemoveNIC(context.Background(), "n1"); err != nil {
		t.Fatal(err)
	}
	if n := s.CountCalls("PUT", "/api/v1/vm.remove-device"); n != 2 {
		t.Fatalf("remove-device sent %d times, want 2 (the first was refused)", n)
	}
	if len(s.Devices()) != 0 {
		t.Fatal("device not removed")
	}
}

// TestErrorDecoding: what the user reads for each error body shape.
func TestErrorDecoding(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"v47+ list", 500, `["Error from API","The network device could not be added to the VM","Error from device manager","Cannot create virtio-net device","Failed to open taps","Open tap device failed","Unable to configure tap interface","Operation not permitted (os error 1)"]`,
			`add NIC "n1" (TAP tap1): cloud-hypervisor API PUT /api/v1/vm.add-net on ` + "%s" + ` answered 500: Error from API: The network device could not be added to the VM: Error from device manager: Cannot create virtio-net device: Failed to open taps: Open tap device failed: Unable to configure tap interface: Operation not permitted (os error 1)`},
		{"v46 plain text", 500, "Error from API: VmAddNet(TapOpen)\n", "answered 500: Error from API: VmAddNet(TapOpen)"},
		{"empty body", 503, "", "answered 503: Service Unavailable"},
		{"binary", 500, "\x00\xffboom", `answered 500: \x00?boom`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sim(t, vmmsim.CHConfig{})
			s.SetFault(vmmsim.Fault{Mode: vmmsim.FaultReply, Status: tt.status, Body: tt.body})
			_, err := adapter(t, s.Socket(), fastOpts).AddNIC(context.Background(), nic("n1", "tap1"))
			want := tt.want
			if strings.Contains(want, "%s") {
				want = strings.Replace(want, "%s", s.Socket(), 1)
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("error\n  %v\nlacks\n  %s", err, want)
			}
		})
	}
}
