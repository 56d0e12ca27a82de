package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmnic/vmnic/vmmadapter"
)

// scriptedQMP plays a fuzzed QMP conversation: it sends the greeting, then
// answers the n-th request of the script with its n-th group of bytes (in
// which "$ID" becomes the request's id). Groups are separated by 0x1e; a
// group may hold replies, events, garbage or nothing. When the script runs
// out the connection is closed, and later connections are closed at once.
type scriptedQMP struct {
	mu     sync.Mutex
	greet  []byte
	groups [][]byte
}

func (s *scriptedQMP) set(greet, script []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.greet = greet
	s.groups = bytes.Split(script, []byte{0x1e})
}

func (s *scriptedQMP) next() ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.groups) == 0 {
		return nil, false
	}
	g := s.groups[0]
	s.groups = s.groups[1:]
	return g, true
}

func (s *scriptedQMP) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go s.serveConn(c)
	}
}

func (s *scriptedQMP) serveConn(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	s.mu.Lock()
	greet, done := s.greet, len(s.groups) == 0
	s.mu.Unlock()
	if done {
		return
	}
	if _, err := c.Write(greet); err != nil {
		return
	}
	dec := json.NewDecoder(c)
	for {
		var req struct {
			ID json.RawMessage `json:"id"`
		}
		if err := dec.Decode(&req); err != nil {
			return
		}
		g, ok := s.next()
		if !ok {
			return
		}
		id := req.ID
		if len(id) == 0 {
			id = []byte("null")
		}
		if _, err := c.Write(bytes.ReplaceAll(g, []byte("$ID"), id)); err != nil {
			return
		}
	}
}

// qmpScript joins reply groups with the separator.
func qmpScript(groups ...string) []byte { return []byte(strings.Join(groups, "\x1e")) }

// FuzzQMP feeds the QEMU adapter arbitrary QMP traffic: a fuzzed greeting
// and fuzzed answers to each command of Open, Info, NICs, AddNIC and
// RemoveNIC. Whatever QEMU says, nothing may panic or outlive its deadline,
// and an AddNIC that succeeds must name the device it asked for.
func FuzzQMP(f *testing.F) {
	greet := `{"QMP":{"version":{"qemu":{"major":8,"minor":2,"micro":1},"package":""},"capabilities":["oob"]}}` + "\r\n"
	ok := `{"return":{},"id":$ID}` + "\r\n"
	running := `{"return":{"status":"running","running":true},"id":$ID}` + "\r\n"
	version := `{"return":{"qemu":{"major":8,"minor":2,"micro":1},"package":""},"id":$ID}` + "\r\n"
	noDevs := `{"return":[{"name":"type","type":"string"}],"id":$ID}` + "\r\n"
	withNIC := `{"return":[{"name":"type","type":"string"},{"name":"eth0","type":"child<virtio-net-pci>"}],"id":$ID}` + "\r\n"
	pci := `{"return":[{"bus":0,"devices":[{"bus":0,"slot":5,"function":0,"qdev_id":"eth0"}]}],"id":$ID}` + "\r\n"
	deleted := `{"event":"DEVICE_DELETED","data":{"device":"eth0","path":"/machine/peripheral/eth0"},"timestamp":{"seconds":1,"microseconds":0}}` + "\r\n"
	f.Add([]byte(greet), qmpScript(ok, version, running, noDevs, running, noDevs, ok, ok, pci,
		withNIC, running, `{"return":"netdev-eth0","id":$ID}`+"\r\n", ok+deleted, ok))
	f.Add([]byte(greet), qmpScript(ok, version, `{"return":{"status":"prelaunch","running":false},"id":$ID}`, withNIC,
		`{"return":{"status":"prelaunch"},"id":$ID}`, withNIC))
	f.Add([]byte(greet), qmpScript(ok, `{"error":{"class":"GenericError","desc":"x"},"id":$ID}`, running, noDevs, running, noDevs,
		`{"error":{"class":"GenericError","desc":"Duplicate ID 'netdev-eth0' for netdev"},"id":$ID}`, ok, ok,
		`{"error":{"class":"GenericError","desc":"Bus 'pci.0' does not support hotplugging"},"id":$ID}`, ok))
	f.Add([]byte(`{"QMP":null}`), qmpScript(ok))
	f.Add([]byte("garbage\r\n"), qmpScript(ok))
	f.Add([]byte(greet), qmpScript(deleted+ok, `{"return":{"qemu":"x"},"id":$ID}`, `{"return":null,"id":"other"}`+ok, "\x00\xff", "{"))
	f.Add([]byte(greet), qmpScript(ok, version, running, `{"return":[{"name":"eth0","type":"child<e1000>"},{"name":"x","type":"child<"}],"id":$ID}`,
		running, noDevs, ok, ok, `{"return":[{"bus":0,"devices":[{"qdev_id":"y","pci_bridge":{"bus":{"number":1},"devices":[{"qdev_id":"eth0","bus":1,"slot":2,"function":3}]}}]}],"id":$ID}`))

	srv := &scriptedQMP{}
	sock := filepath.Join(f.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ln.Close() })
	go srv.serve(ln)
	// Short timeouts: a fuzzed answer that never completes costs one timeout
	// per command. Nothing asserts success, so a slow machine is no flake.
	opts := vmmadapter.Options{CallTimeout: 40 * time.Millisecond, RemoveTimeout: 20 * time.Millisecond}

	f.Fuzz(func(t *testing.T, greeting, script []byte) {
		srv.set(greeting, script)
		start := time.Now()
		a, err := Open(sock, opts)
		if err != nil {
			return
		}
		defer a.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if in, err := a.Info(ctx); err == nil && (in.Kind != vmmadapter.QEMU || in.Version == "") {
			t.Errorf("Info = %+v", in)
		}
		_, _ = a.NICs(ctx)
		att, err := a.AddNIC(ctx, vmmadapter.NIC{ID: "eth0", Tap: "tapeth0", MAC: "02:00:00:00:00:01", MTU: 1500})
		if err == nil && att.ID != "eth0" {
			t.Errorf("AddNIC attachment %+v, want device eth0", att)
		}
		_ = a.RemoveNIC(ctx, "eth0")
		if ctx.Err() != nil || time.Since(start) > 10*time.Second {
			t.Fatalf("calls outlived their deadline (%s): %v", time.Since(start), ctx.Err())
		}
	})
}

// FuzzArgs checks that no NIC field can add options of its own to QEMU's
// -netdev/-device arguments (a comma in a value must stay escaped).
func FuzzArgs(f *testing.F) {
	f.Add("eth0", "tapeth0", "02:00:00:00:00:01", 1500, 1, 256)
	f.Add("a,b", "tap,script=/bin/evil", "02:00,vhost=on", 0, 4, 0)
	f.Add("", "t,,x", ",", -1, -5, -1)
	f.Fuzz(func(t *testing.T, id, tap, mac string, mtu, queues, qsize int) {
		args := Args([]vmmadapter.NIC{{ID: id, Tap: tap, MAC: mac, MTU: mtu, QueuePairs: queues, QueueSize: qsize}})
		if len(args) != 4 || args[0] != "-netdev" || args[2] != "-device" {
			t.Fatalf("Args = %q", args)
		}
		allowed := map[string]map[string]bool{
			"-netdev": {"tap": true, "id": true, "ifname": true, "script": true, "downscript": true, "vhost": true, "queues": true},
			"-device": {"virtio-net-pci": true, "netdev": true, "id": true, "mac": true, "host_mtu": true, "mq": true, "vectors": true, "rx_queue_size": true, "tx_queue_size": true},
		}
		for i := 0; i < 4; i += 2 {
			seen := map[string]bool{}
			for _, opt := range splitOpts(args[i+1]) {
				key, _, _ := strings.Cut(opt, "=")
				if !allowed[args[i]][key] || seen[key] {
					t.Fatalf("%s %q: option %q injected (tap %q, mac %q, id %q)", args[i], args[i+1], key, tap, mac, id)
				}
				seen[key] = true
			}
		}
	})
}

// splitOpts splits a QEMU option string at single commas (",," is an
// escaped comma).
func splitOpts(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}
