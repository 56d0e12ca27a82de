package vmmsim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
)

// raw sends one request to a simulator socket.
func raw(t *testing.T, socket, method, path, body string) (int, string, error) {
	t.Helper()
	return rawTimeout(t, 5*time.Second, socket, method, path, body)
}

func rawTimeout(t *testing.T, timeout time.Duration, socket, method, path, body string) (int, string, error) {
	t.Helper()
	c := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", socket)
			},
		},
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func mustRaw(t *testing.T, socket, method, path, body string) (int, string) {
	t.Helper()
	st, b, err := raw(t, socket, method, path, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return st, b
}

func assertNoViolations(t *testing.T, s *server) {
	t.Helper()
	if v := s.Violations(); len(v) > 0 {
		t.Errorf("request spec violations: %v", v)
	}
	if v := s.ResponseViolations(); len(v) > 0 {
		t.Errorf("simulator answers violate the spec: %v", v)
	}
}

func isStringList(body string) bool {
	var l []string
	return json.Unmarshal([]byte(body), &l) == nil && len(l) > 0
}

func TestCHStatusCodesPerVersion(t *testing.T) {
	const addA = `{"tap":"tapa","id":"a","num_queues":2}`
	tests := []struct {
		name    string
		version int
		state   CHState
		setup   []string // PUT bodies to vm.add-net first
		method  string
		ep      string
		body    string
		status  int
	}{
		{"info not created v52", 52, CHNotCreated, nil, "GET", "vm.info", "", 500},
		{"info not created v53", 53, CHNotCreated, nil, "GET", "vm.info", "", 404},
		{"add not created v48", 48, CHNotCreated, nil, "PUT", "vm.add-net", addA, 500},
		{"add not created main", CHMain, CHNotCreated, nil, "PUT", "vm.add-net", addA, 404},
		{"cold add", 50, CHCreated, nil, "PUT", "vm.add-net", addA, 204},
		{"hot add", 50, CHRunning, nil, "PUT", "vm.add-net", addA, 200},
		{"paused is booted", 53, CHPaused, nil, "PUT", "vm.add-net", addA, 200},
		{"duplicate id v53", 53, CHRunning, []string{addA}, "PUT", "vm.add-net", `{"tap":"tapb","id":"a"}`, 500},
		{"duplicate id main", CHMain, CHRunning, []string{addA}, "PUT", "vm.add-net", `{"tap":"tapb","id":"a"}`, 409},
		{"tap busy", 53, CHRunning, []string{addA}, "PUT", "vm.add-net", `{"tap":"tapa","id":"b"}`, 500},
		{"too many queues v52", 52, CHRunning, nil, "PUT", "vm.add-net", `{"tap":"t","num_queues":8}`, 500},
		{"too many queues main", CHMain, CHRunning, nil, "PUT", "vm.add-net", `{"tap":"t","num_queues":8}`, 400},
		{"ip without mask v49", 49, CHRunning, nil, "PUT", "vm.add-net", `{"tap":"t","ip":"10.0.0.1"}`, 500},
		{"bad json", 53, CHRunning, nil, "PUT", "vm.add-net", `{"tap":`, 400},
		{"wrong type", 53, CHRunning, nil, "PUT", "vm.add-net", `{"tap":1}`, 400},
		{"wrong method", 53, CHRunning, nil, "GET", "vm.add-net", "", 400},
		{"unknown endpoint", 53, CHRunning, nil, "GET", "vm.nope", "", 404},
		{"remove unknown v53", 53, CHRunning, nil, "PUT", "vm.remove-device", `{"id":"x"}`, 500},
		{"remove unknown main", CHMain, CHRunning, nil, "PUT", "vm.remove-device", `{"id":"x"}`, 404},
		{"remove pre-boot", 50, CHCreated, []string{addA}, "PUT", "vm.remove-device", `{"id":"a"}`, 204},
		{"remove pre-boot missing", 50, CHCreated, nil, "PUT", "vm.remove-device", `{"id":"a"}`, 500},
		{"remove hot", 50, CHRunning, []string{addA}, "PUT", "vm.remove-device", `{"id":"a"}`, 204},
		{"ping", 48, CHNotCreated, nil, "GET", "vmm.ping", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewCH(t, CHConfig{Version: tt.version, State: tt.state})
			for _, b := range tt.setup {
				if st, body := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", b); st >= 300 {
					t.Fatalf("setup add: %d %s", st, body)
				}
			}
			st, body := mustRaw(t, s.Socket(), tt.method, "/api/v1/"+tt.ep, tt.body)
			if st != tt.status {
				t.Fatalf("status %d (%s), want %d", st, body, tt.status)
			}
			if st >= 400 && st != 404 || (st == 404 && tt.ep != "vm.nope") {
				if !isStringList(body) {
					t.Errorf("error body %q is not a JSON list of strings", body)
				}
			}
			if st == 200 && tt.ep == "vm.add-net" {
				var p struct{ ID, BDF string }
				if err := json.Unmarshal([]byte(body), &p); err != nil || p.ID == "" || !strings.HasPrefix(p.BDF, "0000:00:") {
					t.Errorf("hot-add answer %q is not {id, bdf}", body)
				}
			}
			if v := s.ResponseViolations(); len(v) > 0 {
				t.Errorf("simulator answers violate the spec: %v", v)
			}
		})
	}
}

func TestCHSecondRemovePerVersion(t *testing.T) {
	tests := []struct {
		version  int
		status   int // of the second remove; 0 = connection dropped
		dies     bool
		renotify int
	}{
		{48, 204, false, 1},
		{49, 0, true, 0},
		{50, 0, true, 0},
		{52, 0, true, 0},
		{53, 500, false, 0},
		{CHMain, 204, false, 1},
	}
	for _, tt := range tests {
		t.Run("v"+itoa(tt.version), func(t *testing.T) {
			s := NewCH(t, CHConfig{Version: tt.version, EjectDelay: -1})
			mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t1","id":"n1"}`)
			if st, b := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.remove-device", `{"id":"n1"}`); st != 204 {
				t.Fatalf("first remove: %d %s", st, b)
			}
			if got := s.Devices(); len(got) != 1 || got[0] != "n1" {
				t.Fatalf("device tree after first remove = %v, want [n1] until the guest ejects", got)
			}
			if n := len(s.Net()); n != 0 {
				t.Fatalf("config.net still has %d entries after remove", n)
			}
			st, _, err := raw(t, s.Socket(), "PUT", "/api/v1/vm.remove-device", `{"id":"n1"}`)
			if tt.dies {
				if err == nil {
					t.Fatalf("second remove answered %d; v%d must die", st, tt.version)
				}
				dead, why := s.Dead()
				if !dead || !strings.Contains(why, "panicked") {
					t.Fatalf("Dead() = %v, %q", dead, why)
				}
				_, _, err := raw(t, s.Socket(), "GET", "/api/v1/vmm.ping", "")
				if !errors.Is(err, syscall.ECONNREFUSED) {
					t.Fatalf("a dead VMM must refuse connections, got %v", err)
				}
				return
			}
			if err != nil || st != tt.status {
				t.Fatalf("second remove: %d, %v; want %d", st, err, tt.status)
			}
			if dead, _ := s.Dead(); dead {
				t.Fatal("simulator died")
			}
			if got := s.Renotified("n1"); got != tt.renotify {
				t.Errorf("renotified %d, want %d", got, tt.renotify)
			}
			if got := s.RemoveRequests("n1"); got != 2 {
				t.Errorf("RemoveRequests = %d, want 2", got)
			}
		})
	}
}

func itoa(i int) string { b, _ := json.Marshal(i); return string(b) }

func TestCHEjectAndBoot(t *testing.T) {
	s := NewCH(t, CHConfig{State: CHCreated, EjectDelay: time.Hour})
	mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t1","id":"n1","mac":"02:00:00:00:00:01","num_queues":2}`)
	_, info := mustRaw(t, s.Socket(), "GET", "/api/v1/vm.info", "")
	if strings.Contains(info, "device_tree") {
		t.Fatalf("device_tree before boot: %s", info)
	}
	if err := s.Boot(); err != nil {
		t.Fatal(err)
	}
	if got := s.Devices(); len(got) != 1 || got[0] != "n1" {
		t.Fatalf("devices after boot = %v", got)
	}
	_, info = mustRaw(t, s.Socket(), "GET", "/api/v1/vm.info", "")
	var vi struct {
		State      string
		DeviceTree map[string]struct {
			Parent   string   `json:"parent"`
			Children []string `json:"children"`
			PciBdf   string   `json:"pci_bdf"`
		} `json:"device_tree"`
	}
	if err := json.Unmarshal([]byte(info), &vi); err != nil {
		t.Fatal(err)
	}
	if vi.State != "Running" || vi.DeviceTree["n1"].Parent != "_virtio-pci-n1" || vi.DeviceTree["_virtio-pci-n1"].PciBdf == "" {
		t.Fatalf("vm.info after boot lacks the two device nodes: %s", info)
	}
	mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.remove-device", `{"id":"n1"}`)
	if got := s.Devices(); len(got) != 1 {
		t.Fatalf("removed device left the tree before the eject: %v", got)
	}
	// Re-adding the id or the TAP before the eject fails like CH.
	if st, b := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t2","id":"n1"}`); st != 500 || !strings.Contains(b, "not unique") {
		t.Fatalf("re-add of a pending id: %d %s", st, b)
	}
	if st, b := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t1","id":"n2"}`); st != 500 || !strings.Contains(b, "os error 16") {
		t.Fatalf("re-use of a pending TAP: %d %s", st, b)
	}
	s.Eject("n1")
	if got := s.Devices(); len(got) != 0 {
		t.Fatalf("device still there after eject: %v", got)
	}
	if st, b := mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t1","id":"n1"}`); st != 200 {
		t.Fatalf("re-add after eject: %d %s", st, b)
	}
	assertNoViolations(t, s.server)
}

func TestCHEjectDelay(t *testing.T) {
	s := NewCH(t, CHConfig{EjectDelay: 50 * time.Millisecond})
	mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t1","id":"n1"}`)
	mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.remove-device", `{"id":"n1"}`)
	deadline := time.Now().Add(5 * time.Second)
	for len(s.Devices()) > 0 {
		if time.Now().After(deadline) {
			t.Fatal("device never ejected")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCHDefaultsPerVersion(t *testing.T) {
	for _, tt := range []struct {
		version int
		ip      string
		offload bool
	}{{48, "192.168.249.1", false}, {53, "", true}} {
		s := NewCH(t, CHConfig{Version: tt.version})
		mustRaw(t, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t1"}`)
		n := s.Net()
		if len(n) != 1 || n[0].IP != tt.ip || n[0].ID != "_net0" || n[0].MAC == "" || n[0].NumQueues != 2 || n[0].QueueSize != 256 {
			t.Errorf("v%d: net = %+v", tt.version, n)
		}
		_, info := mustRaw(t, s.Socket(), "GET", "/api/v1/vm.info", "")
		if strings.Contains(info, "offload_tso") != tt.offload {
			t.Errorf("v%d: offload fields present=%v: %s", tt.version, !tt.offload, info)
		}
		assertNoViolations(t, s.server)
	}
}

func TestFCBehaviourPerVersion(t *testing.T) {
	const put = `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"02:00:00:00:00:01"}`
	const putMTU = `{"iface_id":"eth0","host_dev_name":"tap0","mtu":1500}`
	tests := []struct {
		name    string
		cfg     FCConfig
		method  string
		path    string
		body    string
		status  int
		fault   string // substring of fault_message
		applied bool
	}{
		{"pre-boot put 1.12", FCConfig{Version: "1.12.1"}, "PUT", "/network-interfaces/eth0", put, 204, "", true},
		{"mtu rejected by 1.15", FCConfig{Version: "1.15.0"}, "PUT", "/network-interfaces/eth0", putMTU, 400, "unknown field `mtu`", false},
		{"mtu accepted by 1.16", FCConfig{Version: "1.16.0"}, "PUT", "/network-interfaces/eth0", putMTU, 204, "", true},
		{"unknown field", FCConfig{Version: "1.16.0"}, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"t","foo":1}`, 400, "unknown field `foo`", false},
		{"missing field", FCConfig{}, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0"}`, 400, "missing field `host_dev_name`", false},
		{"bad id", FCConfig{}, "PUT", "/network-interfaces/eth-0", `{"iface_id":"eth-0","host_dev_name":"t"}`, 400, "alphanumeric characters and underscores", false},
		{"id mismatch", FCConfig{}, "PUT", "/network-interfaces/eth0", `{"iface_id":"eth1","host_dev_name":"t"}`, 400, "does not match the id from the body", false},
		{"post-boot 1.15", FCConfig{Version: "1.15.0", State: FCRunning, PCI: true}, "PUT", "/network-interfaces/eth0", put, 400, "not supported after starting the microVM", false},
		{"post-boot 1.16 no pci", FCConfig{Version: "1.16.1", State: FCRunning}, "PUT", "/network-interfaces/eth0", put, 400, "PCI is not enabled", false},
		{"post-boot 1.16 pci", FCConfig{Version: "1.16.1", State: FCRunning, PCI: true}, "PUT", "/network-interfaces/eth0", put, 204, "", true},
		{"delete 1.15", FCConfig{Version: "1.15.0", State: FCRunning}, "DELETE", "/network-interfaces/eth0", "", 400, "Invalid request method and/or path", false},
		{"delete unknown 1.16", FCConfig{Version: "1.16.1", State: FCRunning, PCI: true}, "DELETE", "/network-interfaces/eth0", "", 400, "Device not found", false},
		{"unknown path", FCConfig{}, "GET", "/nope", "", 400, "Invalid request method and/or path: GET /nope.", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewFC(t, tt.cfg)
			st, body := mustRaw(t, s.Socket(), tt.method, tt.path, tt.body)
			if st != tt.status {
				t.Fatalf("status %d (%s), want %d", st, body, tt.status)
			}
			if tt.fault != "" {
				var f struct {
					FaultMessage string `json:"fault_message"`
				}
				if err := json.Unmarshal([]byte(body), &f); err != nil || !strings.Contains(f.FaultMessage, tt.fault) {
					t.Fatalf("body %s lacks fault_message %q", body, tt.fault)
				}
			}
			if got := len(s.Interfaces()) == 1; got != tt.applied {
				t.Fatalf("interfaces = %+v, applied want %v", s.Interfaces(), tt.applied)
			}
			if v := s.ResponseViolations(); len(v) > 0 {
				t.Errorf("simulator answers violate the spec: %v", v)
			}
		})
	}
}

func TestFCHotplugCycleAndGaps(t *testing.T) {
	s := NewFC(t, FCConfig{Version: "1.16.1", PCI: true})
	mustRaw(t, s.Socket(), "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`)
	// Pre-boot PUT of the same id replaces.
	if st, b := mustRaw(t, s.Socket(), "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap9"}`); st != 204 {
		t.Fatalf("replace: %d %s", st, b)
	}
	if st, _ := mustRaw(t, s.Socket(), "DELETE", "/network-interfaces/eth0", ""); st != 400 {
		t.Fatalf("pre-boot DELETE answered %d", st)
	}
	if st, _ := mustRaw(t, s.Socket(), "PUT", "/actions", `{"action_type":"InstanceStart"}`); st != 204 {
		t.Fatal("InstanceStart failed")
	}
	if st, b := mustRaw(t, s.Socket(), "PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap1"}`); st != 400 || !strings.Contains(b, "Device ID in use") {
		t.Fatalf("hot-add of an existing id: %d %s", st, b)
	}
	if st, b := mustRaw(t, s.Socket(), "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap9"}`); st != 400 || !strings.Contains(b, "os error 16") {
		t.Fatalf("hot-add on a TAP in use: %d %s", st, b)
	}
	if st, b := mustRaw(t, s.Socket(), "PUT", "/network-interfaces/eth1", `{"iface_id":"eth1","host_dev_name":"tap1"}`); st != 204 {
		t.Fatalf("hot-add: %d %s", st, b)
	}
	if st, _ := mustRaw(t, s.Socket(), "DELETE", "/network-interfaces/eth1", ""); st != 204 {
		t.Fatal("DELETE failed")
	}
	if got := s.Interfaces(); len(got) != 1 || got[0].HostDevName != "tap9" {
		t.Fatalf("interfaces = %+v", got)
	}
	_, cfg := mustRaw(t, s.Socket(), "GET", "/vm/config", "")
	if !strings.Contains(cfg, `"iface_id":"eth0"`) || strings.Contains(cfg, "eth1") {
		t.Fatalf("/vm/config = %s", cfg)
	}
	if !s.SpecLoaded() {
		t.Skipf("skipped the spec checks: %v", s.SpecError())
	}
	assertNoViolations(t, s.server)
	if gaps := s.GapHits(); len(gaps) != 2 || !strings.Contains(gaps[0], "DELETE /network-interfaces/eth0") {
		t.Fatalf("gap hits = %v, want the two DELETEs", gaps)
	}
}

func TestValidationRecordsViolations(t *testing.T) {
	s := NewFC(t, FCConfig{Version: "1.16.1"})
	if !s.SpecLoaded() {
		t.Skipf("skipped: %v", s.SpecError())
	}
	mustRaw(t, s.Socket(), "PUT", "/network-interfaces/eth-0", `{"iface_id":"eth-0","host_dev_name":5,"x":1}`)
	v := s.Violations()
	text := ""
	for _, x := range v {
		text += x.String() + "\n"
	}
	for _, want := range []string{`iface_id="eth-0"`, "want a string", `unknown property "x"`} {
		if !strings.Contains(text, want) {
			t.Errorf("violations lack %q:\n%s", want, text)
		}
	}
	c := NewCH(t, CHConfig{})
	mustRaw(t, c.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t","fds":[3]}`)
	if v := c.Violations(); len(v) != 1 || !strings.Contains(v[0].String(), `"fds"`) {
		t.Errorf("CH violations = %v", v)
	}
	off := NewCH(t, CHConfig{NoSpec: true})
	mustRaw(t, off.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t","fds":[3]}`)
	if off.SpecLoaded() || len(off.Violations()) != 0 {
		t.Errorf("NoSpec simulator validated: %v", off.Violations())
	}
}

func TestFaults(t *testing.T) {
	tests := []struct {
		name   string
		fault  Fault
		errSub string // substring of the client error; "" = success
		apply  bool   // the add took effect
	}{
		{"delay", Fault{Mode: FaultDelay, Delay: 20 * time.Millisecond}, "", true},
		{"never answer", Fault{Mode: FaultNeverAnswer}, "Client.Timeout", false},
		{"long delay", Fault{Mode: FaultDelay, Delay: time.Hour}, "Client.Timeout", false},
		{"garbage", Fault{Mode: FaultGarbage}, "malformed HTTP", false},
		{"close mid call", Fault{Mode: FaultCloseMidCall}, "unexpected EOF", false},
		{"lose answer", Fault{Mode: FaultLoseAnswer}, "EOF", true},
		{"other path unaffected", Fault{Mode: FaultNeverAnswer, Path: "/api/v1/vm.info"}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewCH(t, CHConfig{})
			s.SetFault(tt.fault)
			st, _, err := rawTimeout(t, 500*time.Millisecond, s.Socket(), "PUT", "/api/v1/vm.add-net", `{"tap":"t1","id":"n1"}`)
			if tt.errSub == "" {
				if err != nil || st != 200 {
					t.Fatalf("got %d, %v", st, err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tt.errSub) {
				t.Fatalf("err = %v, want %q", err, tt.errSub)
			}
			if got := len(s.Net()) == 1; got != tt.apply {
				t.Fatalf("applied = %v, want %v", got, tt.apply)
			}
			calls := s.Calls()
			if len(calls) != 1 || calls[0].Path != "/api/v1/vm.add-net" {
				t.Fatalf("call log = %+v", calls)
			}
		})
	}
	t.Run("times", func(t *testing.T) {
		s := NewCH(t, CHConfig{})
		s.SetFault(Fault{Mode: FaultGarbage, Times: 1})
		if _, _, err := raw(t, s.Socket(), "GET", "/api/v1/vmm.ping", ""); err == nil {
			t.Fatal("first call not faulted")
		}
		if st, _, err := raw(t, s.Socket(), "GET", "/api/v1/vmm.ping", ""); err != nil || st != 200 {
			t.Fatalf("second call: %d %v", st, err)
		}
	})
}
