// Package guestagent is a minimal guest network agent, for the real QEMU
// guest of the tests and the demo: it reads the guest config document
// (netsetup.GuestConfig, the json format of `vmnicctl guest-config`, or the
// record's live copy that carries it under "guest_config"), finds each
// attached NIC by MAC and applies its MTU, addresses and routes with
// netlink. Polling the live copy, it applies NICs hot-added later too.
package guestagent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/netsetup"
)

// Parse reads a guest config document, or the record's live copy holding
// one.
func Parse(data []byte) (*netsetup.GuestConfig, error) {
	if gc, err := netsetup.ReadMirrorGuestConfig(data); err == nil {
		return gc, nil
	}
	var gc netsetup.GuestConfig
	if err := json.Unmarshal(data, &gc); err != nil {
		return nil, fmt.Errorf("guest config: %w", err)
	}
	if gc.Version != netsetup.GuestConfigVersion {
		return nil, fmt.Errorf("guest config version %d: this agent reads version %d", gc.Version, netsetup.GuestConfigVersion)
	}
	return &gc, nil
}

// Agent applies guest configs; it remembers what it applied per MAC, so
// applying the same document again does nothing.
type Agent struct {
	applied map[string][]byte
}

// New returns an agent that has applied nothing.
func New() *Agent { return &Agent{applied: map[string][]byte{}} }

// Applied is one interface the agent configured.
type Applied struct {
	Name, Dev string
	Summary   string
}

// Apply configures every attached interface of gc not yet applied as it
// is; interfaces whose device has not appeared yet are left for a later
// call. It returns what it configured.
func (a *Agent) Apply(gc *netsetup.GuestConfig) ([]Applied, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var done []Applied
	var errs []error
	for _, it := range gc.Interfaces {
		if it.State != netsetup.NICAttached || it.MAC == "" {
			continue
		}
		key, _ := json.Marshal(it)
		if bytes.Equal(a.applied[strings.ToLower(it.MAC)], key) {
			continue
		}
		link := byMAC(links, it.MAC)
		if link == nil {
			continue // not in the guest yet
		}
		sum, err := apply(link, it)
		if err != nil {
			errs = append(errs, fmt.Errorf("NIC %s (%s): %w", it.Name, link.Attrs().Name, err))
			continue
		}
		a.applied[strings.ToLower(it.MAC)] = key
		done = append(done, Applied{Name: it.Name, Dev: link.Attrs().Name, Summary: sum})
	}
	return done, errors.Join(errs...)
}

func byMAC(links []netlink.Link, mac string) netlink.Link {
	for _, l := range links {
		if strings.EqualFold(l.Attrs().HardwareAddr.String(), mac) {
			return l
		}
	}
	return nil
}

func apply(link netlink.Link, it netsetup.GuestInterface) (string, error) {
	var sum []string
	if it.MTU > 0 && link.Attrs().MTU != it.MTU {
		if err := netlink.LinkSetMTU(link, it.MTU); err != nil {
			return "", fmt.Errorf("mtu %d: %w", it.MTU, err)
		}
	}
	if it.MTU > 0 {
		sum = append(sum, fmt.Sprintf("mtu %d", it.MTU))
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("set up: %w", err)
	}
	for _, a := range it.Addresses {
		addr, err := netlink.ParseAddr(a)
		if err != nil {
			return "", fmt.Errorf("address %q: %w", a, err)
		}
		if addr.IP.To4() == nil {
			// The pod's main plugin ran duplicate address detection for
			// this address on the veth already.
			addr.Flags |= unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return "", fmt.Errorf("address %s: %w", a, err)
		}
		sum = append(sum, "addr "+a)
	}
	for _, r := range it.Routes {
		_, dst, err := net.ParseCIDR(r.To)
		if err != nil {
			return "", fmt.Errorf("route to %q: %w", r.To, err)
		}
		rt := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Priority: r.Metric, Table: r.Table, MTU: r.MTU, AdvMSS: r.AdvMSS}
		if r.Via != "" {
			if rt.Gw = net.ParseIP(r.Via); rt.Gw == nil {
				return "", fmt.Errorf("route to %s: gateway %q is not an IP", r.To, r.Via)
			}
		}
		if r.Scope != "" {
			sc, err := scope(r.Scope)
			if err != nil {
				return "", fmt.Errorf("route to %s: %w", r.To, err)
			}
			rt.Scope = sc
		}
		if err := netlink.RouteReplace(rt); err != nil {
			return "", fmt.Errorf("route to %s via %q: %w", r.To, r.Via, err)
		}
		s := "route " + r.To
		if r.Via != "" {
			s += " via " + r.Via
		}
		if r.MTU > 0 {
			s += fmt.Sprintf(" mtu %d", r.MTU)
		}
		sum = append(sum, s)
	}
	return strings.Join(sum, ", "), nil
}

func scope(name string) (netlink.Scope, error) {
	for _, v := range []netlink.Scope{netlink.SCOPE_UNIVERSE, netlink.SCOPE_SITE, netlink.SCOPE_LINK, netlink.SCOPE_HOST, netlink.SCOPE_NOWHERE} {
		if netsetup.ScopeName(int(v)) == name {
			return v, nil
		}
	}
	var n int
	if _, err := fmt.Sscanf(name, "%d", &n); err == nil && n >= 0 && n < 256 {
		return netlink.Scope(n), nil
	}
	return 0, fmt.Errorf("unknown scope %q", name)
}
