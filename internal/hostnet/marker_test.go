package hostnet

import (
	"strings"
	"testing"
)

func TestMarkerRoundTrip(t *testing.T) {
	install := InstallID("/var/lib/vmnic")
	long := strings.Repeat("s", 200)
	for _, m := range []Marker{
		{Install: install, Backend: MarkerCNI, IfName: "eth0", Sandbox: "abc"},
		{Install: install, Backend: MarkerCNI, QdiscOwned: true, IfName: "net1", Sandbox: "pod-1.a_b"},
		{Install: install, Backend: MarkerBridge, IfName: "eth0", Sandbox: long},
		{Install: install, Backend: MarkerCNI, IfName: strings.Repeat("i", 15), Sandbox: long},
	} {
		alias := m.String()
		if len(alias) > maxAliasLen {
			t.Errorf("%+v: alias is %d bytes", m, len(alias))
		}
		got, ok := ParseMarker(alias)
		if !ok || got != m {
			t.Errorf("ParseMarker(%q) = %+v, %v; want %+v", alias, got, ok, m)
		}
	}
}

func TestParseMarkerRejects(t *testing.T) {
	install := InstallID("/x")
	for _, alias := range []string{
		"",
		"vmnic",
		"some other alias",
		"vmnic:2:" + install + ":c:eth0:abc",             // another marker version
		"vmnic:1:" + install + ":c:eth0",                 // no sandbox
		"vmnic:1:" + install + ":x:eth0:abc",             // unknown backend
		"vmnic:1:" + install + ":cz:eth0:abc",            // unknown flag
		"vmnic:1:" + install + "::eth0:abc",              // no backend
		"vmnic:1:1234567:c:eth0:abc",                     // short install
		"vmnic:1:ABCDEFGH:c:eth0:abc",                    // not hex
		"vmnic:1:" + install + ":c::abc",                 // empty ifname
		"vmnic:1:" + install + ":c:eth0:",                // empty sandbox
		"vmnic:1:" + install + ":c:0123456789abcdef:abc", // ifname too long
		"vmnic:1:" + install + ":c:eth0:a:b",             // ':' in the sandbox
	} {
		if m, ok := ParseMarker(alias); ok {
			t.Errorf("ParseMarker(%q) accepted: %+v", alias, m)
		}
	}
}

func TestInstallID(t *testing.T) {
	a, b := InstallID("/var/lib/vmnic"), InstallID("/var/lib/vmnic2")
	if a == b || len(a) != 8 || a != InstallID("/var/lib/vmnic") {
		t.Fatalf("InstallID: %q, %q", a, b)
	}
}

func TestMarkerValidate(t *testing.T) {
	m := Marker{Install: InstallID("/x"), Backend: MarkerCNI, IfName: "eth0", Sandbox: strings.Repeat("s", 240)}
	if err := m.Validate(); err == nil {
		t.Fatal("a marker longer than an alias was accepted")
	}
}
