package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vmnic/vmnic/e2e/internal/probe"
	"github.com/vmnic/vmnic/internal/testkit/tapguest"
	"github.com/vmnic/vmnic/internal/testkit/vmmsim"
	"github.com/vmnic/vmnic/netsetup"
)

// runCH serves Cloud Hypervisor's API (the simulator of
// internal/testkit/vmmsim, which takes TAP fds over SCM_RIGHTS on
// vm.add-net and checks them with TUNGETIFF) on $VMNIC_RUNTIME_DIR/ch.sock,
// and runs a stand-in guest (internal/testkit/tapguest: answers ARP and
// ping) on the fds of every NIC, with the NIC's MAC and the IP its record
// ($VMNIC_NETSETUP) gives. It needs neither /dev/net/tun nor a network
// capability: only the fds vmnic hands over. Its status goes to
// $VMNIC_RUNTIME_DIR/vmmprobe-ch.json. It stops on SIGTERM/SIGINT.
func runCH() error {
	rtDir := os.Getenv("VMNIC_RUNTIME_DIR")
	if rtDir == "" {
		return errors.New("VMNIC_RUNTIME_DIR is not set: not a VMM container of a VM pod")
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	socket := filepath.Join(rtDir, probe.CHSocketName)
	os.Remove(socket) // a socket the previous VMM container left
	ch, err := vmmsim.StartCH(socket, vmmsim.CHConfig{})
	if err != nil {
		return err
	}
	st := &chState{
		ch:     ch,
		path:   filepath.Join(rtDir, probe.CHStatusName),
		guests: map[string]*chGuest{},
		status: probe.CHStatus{Instance: randID(), Socket: socket, PID: os.Getpid(), SpecLoaded: ch.SpecLoaded()},
	}
	if err := ch.SpecError(); err != nil {
		st.status.SpecError = err.Error()
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		st.sync()
		select {
		case <-sigs:
			for id, g := range st.guests {
				g.close()
				delete(st.guests, id)
			}
			ch.Close()
			st.status.Closed = true
			st.write()
			return nil
		case <-tick.C:
		}
	}
}

type chState struct {
	ch     *vmmsim.CH
	path   string
	guests map[string]*chGuest // NIC id → its guest
	status probe.CHStatus
	last   []byte
}

type chGuest struct {
	g     *tapguest.Guest
	files []*os.File
	ip    string
	err   string
}

func (g *chGuest) close() {
	if g.g != nil {
		g.g.Close()
	}
	for _, f := range g.files {
		f.Close()
	}
}

// sync starts a guest on every NIC that came with fds, stops those whose
// NIC left the VM, and writes the status when it changed.
func (s *chState) sync() {
	nets := s.ch.Net()
	seen := map[string]bool{}
	s.status.Nets = s.status.Nets[:0]
	for _, n := range nets {
		seen[n.ID] = true
		cn := probe.CHNet{ID: n.ID, Tap: n.Tap, MAC: n.MAC, Fds: n.Fds}
		if n.Fds > 0 {
			g := s.guests[n.ID]
			if g == nil || (g.g == nil && g.err != "") {
				if g != nil {
					g.close()
				}
				g = s.startGuest(n)
				s.guests[n.ID] = g
			}
			cn.Guest = &probe.Guest{IP: g.ip, Tap: n.Tap, Error: g.err}
			if g.g != nil {
				gs := g.g.Stats()
				cn.Guest.FramesIn, cn.Guest.ARPAnswered, cn.Guest.EchoAnswered = gs.FramesIn, gs.ARPAnswered, gs.EchoAnswered
			}
		}
		s.status.Nets = append(s.status.Nets, cn)
	}
	for id, g := range s.guests {
		if !seen[id] {
			g.close()
			delete(s.guests, id)
		}
	}
	s.status.Violations = s.status.Violations[:0]
	for _, v := range s.ch.Violations() {
		s.status.Violations = append(s.status.Violations, fmt.Sprint(v))
	}
	s.write()
}

// startGuest runs a stand-in guest on the first fd of n (one queue pair).
func (s *chState) startGuest(n vmmsim.CHNet) *chGuest {
	g := &chGuest{}
	mac, err := net.ParseMAC(n.MAC)
	if err != nil {
		g.err = fmt.Sprintf("NIC %s MAC %q: %v", n.ID, n.MAC, err)
		return g
	}
	nic, err := recordNIC(mac)
	if err != nil {
		g.err = err.Error()
		return g
	}
	if len(nic.IPs) == 0 {
		g.err = fmt.Sprintf("NIC %s (%s) has no IP in the record", n.ID, n.MAC)
		return g
	}
	pfx, err := netip.ParsePrefix(nic.IPs[0])
	if err != nil {
		g.err = fmt.Sprintf("NIC %s IP %q: %v", n.ID, nic.IPs[0], err)
		return g
	}
	g.ip = pfx.String()
	if g.files, err = s.ch.NetFiles(n.ID); err != nil || len(g.files) == 0 {
		g.err = fmt.Sprintf("NIC %s: the VMM holds no fds for it (%v)", n.ID, err)
		return g
	}
	cfg := tapguest.Config{Tap: n.Tap, MAC: mac, IP: pfx,
		Opener: func() (*tapguest.Tap, error) { return tapguest.TapFromFile(g.files[0]) }}
	if gw, err := netip.ParseAddr(nic.Gateway); err == nil && gw.Is4() {
		cfg.Gateway = gw
	}
	if g.g, err = tapguest.Open(cfg); err != nil {
		g.err = err.Error()
	}
	return g
}

// recordNIC finds the NIC with mac in the record's live copy.
func recordNIC(mac net.HardwareAddr) (*netsetup.NIC, error) {
	p := os.Getenv("VMNIC_NETSETUP")
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("NetSetup file: %w", err)
	}
	var rec netsetup.NetSetup
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, fmt.Errorf("NetSetup file %s: %w", p, err)
	}
	for i := range rec.NetworkConfigs {
		if strings.EqualFold(rec.NetworkConfigs[i].MAC, mac.String()) {
			return &rec.NetworkConfigs[i], nil
		}
	}
	return nil, fmt.Errorf("no NIC with MAC %s in the NetSetup file %s", mac, p)
}

// write replaces the status file when the status changed.
func (s *chState) write() {
	data, err := json.MarshalIndent(s.status, "", "  ")
	if err != nil || bytes.Equal(data, s.last) {
		return
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err == nil && os.Rename(tmp, s.path) == nil {
		s.last = data
	}
}

func randID() string {
	var b [8]byte
	f, err := os.Open("/dev/urandom")
	if err == nil {
		f.Read(b[:])
		f.Close()
	}
	return fmt.Sprintf("%x-%d", b, time.Now().UnixNano())
}
