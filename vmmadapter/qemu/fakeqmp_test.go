package qemu

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// The fake QMP server below exists for protocol edge cases a real QEMU
// will not produce on demand (garbage, silence, a connection dropped
// mid-call, events racing replies). The adapter is also tested against a
// real QEMU guest in realguest_test.go.

type fakeReq struct {
	Execute   string         `json:"execute"`
	Arguments map[string]any `json:"arguments"`
	ID        any            `json:"id"`
}

// fakeConn is the server side of one client connection.
type fakeConn struct {
	c  net.Conn
	mu sync.Mutex
}

func (c *fakeConn) send(v any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, _ := json.Marshal(v)
	c.c.Write(append(b, '\r', '\n'))
}

func (c *fakeConn) raw(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.c.Write([]byte(s))
}

func (c *fakeConn) reply(r fakeReq, ret any) {
	c.send(map[string]any{"return": ret, "id": r.ID})
}

func (c *fakeConn) fail(r fakeReq, class, desc string) {
	c.send(map[string]any{"error": map[string]any{"class": class, "desc": desc}, "id": r.ID})
}

func (c *fakeConn) event(name string, data any) {
	c.send(map[string]any{"event": name, "data": data,
		"timestamp": map[string]any{"seconds": time.Now().Unix(), "microseconds": 0}})
}

// fakeQMP listens on a unix socket and hands each command to handle.
type fakeQMP struct {
	path string
	ln   net.Listener

	mu     sync.Mutex
	reqs   []fakeReq
	conns  int
	greet  func(c *fakeConn, n int) bool // send the greeting? (n: connection number)
	handle func(c *fakeConn, r fakeReq)
}

func newFakeQMP(t *testing.T, handle func(c *fakeConn, r fakeReq)) *fakeQMP {
	t.Helper()
	return newFakeQMPGreet(t, nil, handle)
}

// newFakeQMPGreet: greet decides per connection whether the server greets
// (it may also write something else or close the connection first).
func newFakeQMPGreet(t *testing.T, greet func(c *fakeConn, n int) bool, handle func(c *fakeConn, r fakeReq)) *fakeQMP {
	t.Helper()
	f := &fakeQMP{path: filepath.Join(t.TempDir(), "qmp.sock"), handle: handle, greet: greet}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	t.Cleanup(func() { ln.Close() })
	go f.serve()
	return f
}

func (f *fakeQMP) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns++
		n := f.conns
		f.mu.Unlock()
		go f.serveConn(&fakeConn{c: c}, n, f.greet)
	}
}

func (f *fakeQMP) serveConn(c *fakeConn, n int, greet func(*fakeConn, int) bool) {
	defer c.c.Close()
	if greet != nil && !greet(c, n) {
		// Silent server: hold the connection open, answer nothing.
		buf := make([]byte, 4096)
		for {
			if _, err := c.c.Read(buf); err != nil {
				return
			}
		}
	}
	c.send(map[string]any{"QMP": map[string]any{
		"version":      map[string]any{"qemu": map[string]any{"major": 8, "minor": 2, "micro": 1}, "package": ""},
		"capabilities": []string{"oob"},
	}})
	dec := json.NewDecoder(c.c)
	for {
		var r fakeReq
		if err := dec.Decode(&r); err != nil {
			return
		}
		if r.Execute == "qmp_capabilities" {
			c.reply(r, map[string]any{})
			continue
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, r)
		f.mu.Unlock()
		f.handle(c, r)
	}
}

// commands lists the commands received so far (qmp_capabilities excluded).
func (f *fakeQMP) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.reqs {
		out = append(out, r.Execute)
	}
	return out
}

func (f *fakeQMP) request(cmd string) (fakeReq, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.reqs {
		if r.Execute == cmd {
			return r, true
		}
	}
	return fakeReq{}, false
}

// simQEMU is a small model of QEMU's device and netdev tables behind the
// fake server.
type simQEMU struct {
	mu            sync.Mutex
	status        string
	devices       map[string]simDev // by id
	netdevs       map[string]bool
	failDeviceAdd string // desc of a GenericError for device_add
	failNetdevAdd string // desc of a GenericError for netdev_add
	eject         string // "after" (default), "before" (event precedes reply), "never", "silent" (no event)
	unplugging    map[string]bool
	// q35: the root bus is pcie.0, which refuses hot-plugged devices
	// (QEMU: "Bus 'pcie.0' does not support hotplugging"); rootPorts are
	// pcie-root-port devices, each a bus of its own that takes one device.
	q35       bool
	rootPorts []string
	// fds are the names getfd registered and netdev_add has not taken
	// (monitor/fds.c; net/tap.c takes a named fd off the monitor's list).
	fds map[string]bool
}

type simDev struct {
	typ, netdev string
	slot        int
	bus         string
}

func newSim() *simQEMU {
	return &simQEMU{status: "running", devices: map[string]simDev{}, netdevs: map[string]bool{}, unplugging: map[string]bool{}, fds: map[string]bool{}}
}

func (s *simQEMU) handle(c *fakeConn, r fakeReq) {
	s.mu.Lock()
	defer s.mu.Unlock()
	str := func(k string) string { v, _ := r.Arguments[k].(string); return v }
	switch r.Execute {
	case "query-version":
		c.reply(r, map[string]any{"qemu": map[string]any{"major": 8, "minor": 2, "micro": 1}, "package": "sim"})
	case "query-status":
		c.reply(r, map[string]any{"status": s.status, "running": s.status == "running", "singlestep": false})
	case "qom-list":
		if str("path") == "/machine" && (s.q35 || len(s.rootPorts) > 0) {
			host := "child<i440FX-pcihost>"
			if s.q35 {
				host = "child<q35-pcihost>"
			}
			c.reply(r, []map[string]string{{"name": "type", "type": "string"}, {"name": "pcihost", "type": host}})
			return
		}
		if str("path") != "/machine/peripheral" {
			c.fail(r, "DeviceNotFound", "Device '"+str("path")+"' not found")
			return
		}
		props := []map[string]string{{"name": "type", "type": "string"}}
		for id, d := range s.devices {
			props = append(props, map[string]string{"name": id, "type": "child<" + d.typ + ">"})
		}
		for _, p := range s.rootPorts {
			props = append(props, map[string]string{"name": p, "type": "child<pcie-root-port>"})
		}
		c.reply(r, props)
	case "qom-get":
		id := filepath.Base(str("path"))
		d, ok := s.devices[id]
		if !ok || str("property") != "netdev" {
			c.fail(r, "GenericError", "Property not found")
			return
		}
		c.reply(r, d.netdev)
	case "getfd":
		s.fds[str("fdname")] = true
		c.reply(r, map[string]any{})
	case "closefd":
		if !s.fds[str("fdname")] {
			c.fail(r, "GenericError", "File descriptor named '"+str("fdname")+"' not found")
			return
		}
		delete(s.fds, str("fdname"))
		c.reply(r, map[string]any{})
	case "netdev_add":
		id := str("id")
		if names := str("fd") + str("fds"); names != "" {
			if str("ifname") != "" || r.Arguments["queues"] != nil || str("script") != "" {
				c.fail(r, "GenericError", "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are invalid with fds=")
				return
			}
			for _, n := range strings.Split(names, ":") {
				if !s.fds[n] {
					c.fail(r, "GenericError", "File descriptor named '"+n+"' has not been found")
					return
				}
			}
			if s.failNetdevAdd == "" {
				for _, n := range strings.Split(names, ":") {
					delete(s.fds, n)
				}
			}
		}
		if s.failNetdevAdd != "" {
			c.fail(r, "GenericError", s.failNetdevAdd)
			return
		}
		if s.netdevs[id] {
			c.fail(r, "GenericError", fmt.Sprintf("Duplicate ID '%s' for netdev", id))
			return
		}
		s.netdevs[id] = true
		c.reply(r, map[string]any{})
	case "device_add":
		id := str("id")
		if s.failDeviceAdd != "" {
			c.fail(r, "GenericError", s.failDeviceAdd)
			return
		}
		if _, ok := s.devices[id]; ok {
			c.fail(r, "GenericError", "Duplicate device ID '"+id+"'")
			return
		}
		if !s.netdevs[str("netdev")] {
			c.fail(r, "GenericError", "Property 'virtio-net-pci.netdev' can't find value '"+str("netdev")+"'")
			return
		}
		bus := str("bus")
		if bus == "" && s.q35 && s.status == "running" {
			c.fail(r, "GenericError", "Bus 'pcie.0' does not support hotplugging")
			return
		}
		for _, d := range s.devices {
			if bus != "" && d.bus == bus {
				c.fail(r, "GenericError", "PCI: slot 0 function 0 not available for virtio-net-pci, in use by virtio-net-pci,id=x")
				return
			}
		}
		s.devices[id] = simDev{typ: str("driver"), netdev: str("netdev"), slot: 3 + len(s.devices), bus: bus}
		c.reply(r, map[string]any{})
	case "device_del":
		id := str("id")
		if _, ok := s.devices[id]; !ok {
			c.fail(r, "DeviceNotFound", "Device '"+id+"' not found")
			return
		}
		if s.unplugging[id] {
			c.fail(r, "GenericError", "Device "+id+" is already in the process of unplug")
			return
		}
		s.unplugging[id] = true
		deleted := func() {
			delete(s.devices, id)
			delete(s.unplugging, id)
		}
		switch s.eject {
		case "never":
			c.reply(r, map[string]any{})
		case "before":
			deleted()
			c.event("DEVICE_DELETED", map[string]any{"device": id, "path": "/machine/peripheral/" + id})
			c.reply(r, map[string]any{})
		case "silent":
			c.reply(r, map[string]any{})
			deleted()
		default:
			c.reply(r, map[string]any{})
			go func() {
				time.Sleep(20 * time.Millisecond)
				c.event("RTC_CHANGE", map[string]any{"offset": 0})
				c.event("DEVICE_DELETED", map[string]any{"device": "other", "path": "/machine/peripheral/other"})
				c.event("DEVICE_DELETED", map[string]any{"path": "/machine/peripheral/" + id + "/virtio-backend"})
				s.mu.Lock()
				deleted()
				s.mu.Unlock()
				c.event("DEVICE_DELETED", map[string]any{"device": id, "path": "/machine/peripheral/" + id})
			}()
		}
	case "netdev_del":
		id := str("id")
		if !s.netdevs[id] {
			c.fail(r, "DeviceNotFound", "Device '"+id+"' not found")
			return
		}
		for dev, d := range s.devices {
			if d.netdev == id {
				c.fail(r, "GenericError", "netdev "+id+" still used by "+dev)
				return
			}
		}
		delete(s.netdevs, id)
		c.reply(r, map[string]any{})
	case "query-pci":
		var devs []map[string]any
		ids := make([]string, 0, len(s.devices))
		for id := range s.devices {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		behind := map[string][]map[string]any{}
		for _, id := range ids {
			d := s.devices[id]
			if d.bus != "" {
				behind[d.bus] = append(behind[d.bus], map[string]any{"bus": 1, "slot": 0, "function": 0, "qdev_id": id})
				continue
			}
			devs = append(devs, map[string]any{"bus": 0, "slot": d.slot, "function": 0, "qdev_id": id})
		}
		for i, p := range s.rootPorts {
			devs = append(devs, map[string]any{"bus": 0, "slot": 20 + i, "function": 0, "qdev_id": p,
				"pci_bridge": map[string]any{"bus": map[string]any{"number": 1 + i}, "devices": append([]map[string]any{}, behind[p]...)}})
		}
		c.reply(r, []map[string]any{{"bus": 0, "devices": devs}})
	default:
		c.fail(r, "CommandNotFound", "The command "+r.Execute+" has not been found")
	}
}
