package hostnet

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// This file holds the marker every TAP vmnic makes carries in its interface
// alias (IFLA_IFALIAS), so that vmnic finds what it made without a record:
//
//	vmnic:1:<install>:<backend><flags>:<ifname>:<sandbox>
//
// install is InstallID of the state dir that made the TAP (two installs on
// one host never touch each other's TAPs); backend is 'c' (cni: the TAP is in
// the sandbox netns) or 'b' (bridge: the TAP is on the host); the flag 'q'
// says vmnic added the ingress qdisc on the veth ifname (so it may remove it
// again once no filter is left on it); ifname is the CNI_IFNAME the TAP
// serves and sandbox the sandbox id. Neither an ifname (the kernel refuses
// ':' in device names) nor a sandbox id (netsetup.ValidateSandboxID) holds a
// ':', so the fields split unambiguously; the longest marker (a 200-byte
// sandbox id) is 236 bytes, within IFALIASZ (256).

// markerPrefix starts every marker; the digit is the marker's version.
const markerPrefix = "vmnic:1:"

// Marker backends.
const (
	MarkerCNI    = 'c'
	MarkerBridge = 'b'
)

// Marker is what a vmnic TAP says about itself.
type Marker struct {
	Install    string // InstallID of the state dir
	Backend    byte   // MarkerCNI or MarkerBridge
	QdiscOwned bool   // vmnic added the veth's ingress qdisc
	IfName     string
	Sandbox    string
}

// maxAliasLen is IFALIASZ-1.
const maxAliasLen = 255

// InstallID names one vmnic installation: 8 hex digits of SHA-256 of the
// absolute state dir.
func InstallID(absStateDir string) string {
	sum := sha256.Sum256([]byte(absStateDir))
	return hex.EncodeToString(sum[:4])
}

// String is the alias that carries m.
func (m Marker) String() string {
	flags := string(m.Backend)
	if m.QdiscOwned {
		flags += "q"
	}
	return markerPrefix + m.Install + ":" + flags + ":" + m.IfName + ":" + m.Sandbox
}

// Validate checks that m can be written and read back.
func (m Marker) Validate() error {
	switch {
	case len(m.Install) != 8 || strings.Trim(m.Install, "0123456789abcdef") != "":
		return fmt.Errorf("marker: install %q is not 8 hex digits", m.Install)
	case m.Backend != MarkerCNI && m.Backend != MarkerBridge:
		return fmt.Errorf("marker: unknown backend %q", m.Backend)
	case m.IfName == "" || len(m.IfName) > MaxIfNameLen || strings.ContainsAny(m.IfName, ":/ \t\n"):
		return fmt.Errorf("marker: ifname %q", m.IfName)
	case m.Sandbox == "" || strings.ContainsAny(m.Sandbox, ":\x00\n"):
		return fmt.Errorf("marker: sandbox %q", m.Sandbox)
	case len(m.String()) > maxAliasLen:
		return fmt.Errorf("marker of sandbox %.20q…: %d bytes, more than an alias holds", m.Sandbox, len(m.String()))
	}
	return nil
}

// ParseMarker reads a marker from an interface alias; ok is false for an
// alias that is not a vmnic marker (or one of another marker version).
func ParseMarker(alias string) (m Marker, ok bool) {
	rest, ok := strings.CutPrefix(alias, markerPrefix)
	if !ok {
		return Marker{}, false
	}
	parts := strings.SplitN(rest, ":", 4)
	if len(parts) != 4 || parts[1] == "" {
		return Marker{}, false
	}
	m = Marker{Install: parts[0], Backend: parts[1][0], IfName: parts[2], Sandbox: parts[3]}
	switch parts[1][1:] {
	case "":
	case "q":
		m.QdiscOwned = true
	default:
		return Marker{}, false
	}
	if m.Validate() != nil {
		return Marker{}, false
	}
	return m, true
}

// MarkedTap is a TAP that carries a vmnic marker.
type MarkedTap struct {
	Marker
	Link netlink.Link
}

// MarkedTaps lists the TAPs in the calling thread's netns whose marker
// names the installation install (every vmnic TAP of another installation,
// and every TAP without a marker, is left out).
func MarkedTaps(install string) ([]MarkedTap, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []MarkedTap
	for _, l := range links {
		if !IsTap(l) {
			continue
		}
		m, ok := ParseMarker(l.Attrs().Alias)
		if ok && m.Install == install {
			out = append(out, MarkedTap{Marker: m, Link: l})
		}
	}
	return out, nil
}

// SetMarker writes m as link's alias.
func SetMarker(link netlink.Link, m Marker) error {
	if err := m.Validate(); err != nil {
		return err
	}
	if err := netlink.LinkSetAlias(link, m.String()); err != nil {
		return fmt.Errorf("mark %s: %w", link.Attrs().Name, err)
	}
	link.Attrs().Alias = m.String()
	return nil
}

// aliasAttr is the IFLA_IFALIAS attribute of alias, for a link request.
func aliasAttr(alias string) *nl.RtAttr {
	return nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(alias))
}
