package guestconfig

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

// These tests hand the rendered formats to the programs guests use to read
// them. Each skips with a message when its program is not installed (make
// test installs them; with VMNIC_REQUIRE_ROOT_TESTS=1 a missing one fails).

func render(t *testing.T, rec *netsetup.NetSetup, f Format) *Output {
	t.Helper()
	out, err := Render(rec, f)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// networkdFacts are the lines of our own networkd rendering that any correct
// reading of another format must reproduce: addresses, route destinations
// and gateways, MTUs.
func networkdFacts(t *testing.T, rec *netsetup.NetSetup, keys ...string) []string {
	t.Helper()
	var facts []string
	for _, f := range render(t, rec, Networkd).Files {
		for _, l := range strings.Split(string(f.Data), "\n") {
			for _, k := range keys {
				if strings.HasPrefix(l, k+"=") {
					facts = append(facts, l)
				}
			}
		}
	}
	return facts
}

func readTree(t *testing.T, dir, suffix string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() || !strings.HasSuffix(p, suffix) {
			return err
		}
		data, err := os.ReadFile(p)
		b.Write(data)
		b.WriteByte('\n')
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func hasLine(text, line string) bool {
	for _, l := range strings.Split(text, "\n") {
		if strings.TrimSpace(l) == line {
			return true
		}
	}
	return false
}

// TestNetplanReadsCloudInit: netplan, which reads network-config v2 for
// cloud-init on Ubuntu and rejects unknown keys, must accept every case and
// produce the same addresses, routes (gateway, metric, table, MTU) and
// link MTU as our own networkd rendering.
func TestNetplanReadsCloudInit(t *testing.T) {
	netplan := lookTool(t, "netplan", "netplan.io")
	for _, c := range goldenCases() {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "etc", "netplan")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			out := render(t, c.rec, CloudInit)
			if err := os.WriteFile(filepath.Join(dir, "50-vmnic.yaml"), out.Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			if b, err := exec.Command(netplan, "generate", "--root-dir", root).CombinedOutput(); err != nil {
				t.Fatalf("netplan generate: %v\n%s\n%s", err, b, out.Bytes())
			}
			got := readTree(t, filepath.Join(root, "run", "systemd", "network"), ".network")
			for _, want := range networkdFacts(t, c.rec, "Address", "Destination", "Gateway", "MTUBytes", "Metric", "Table") {
				if !hasLine(got, want) {
					t.Errorf("netplan's rendering lacks %q:\n%s", want, got)
				}
			}
			for _, it := range c.rec.GuestConfig().Interfaces {
				if !hasLine(got, "PermanentMACAddress="+it.MAC) {
					t.Errorf("netplan does not match NIC %s by MAC %s:\n%s", it.Name, it.MAC, got)
				}
			}
		})
	}
}

// TestCloudInitReadsCloudInit: cloud-init's own parser and networkd
// renderer (the path on distributions without netplan) must read every
// case with its addresses, MACs, MTUs and route destinations and gateways.
func TestCloudInitReadsCloudInit(t *testing.T) {
	ci := lookTool(t, "cloud-init", "cloud-init")
	old := cloudInitBefore(t, ci, 23, 1)
	for _, c := range goldenCases() {
		t.Run(c.name, func(t *testing.T) {
			tmp := t.TempDir()
			in := filepath.Join(tmp, "network-config")
			if err := os.WriteFile(in, render(t, c.rec, CloudInit).Bytes(), 0o600); err != nil {
				t.Fatal(err)
			}
			outDir := filepath.Join(tmp, "out")
			cmd := exec.Command(ci, "devel", "net-convert", "-p", in, "-k", "yaml", "-d", outDir, "-D", "debian", "-O", "networkd")
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("cloud-init net-convert: %v\n%s", err, b)
			}
			got := readTree(t, outDir, ".network")
			for _, want := range networkdFacts(t, c.rec, "Address", "Destination", "Gateway", "MTUBytes") {
				if strings.HasPrefix(want, "MTUBytes=") {
					continue // route MTUs are not rendered by cloud-init's networkd renderer; the link's is checked below
				}
				if want == "Destination=::/0" && old {
					// cloud-init before 23.1 reads "::/0" as "::/64"
					// (LP: #2003562, fixed by canonical/cloud-init#1973).
					want = "Destination=::/64"
				}
				if !hasLine(got, want) {
					t.Errorf("cloud-init's rendering lacks %q:\n%s", want, got)
				}
			}
			for _, it := range c.rec.GuestConfig().Interfaces {
				if !hasLine(got, "MACAddress="+it.MAC) || !hasLine(got, "MTUBytes="+strconv.Itoa(it.MTU)) {
					t.Errorf("cloud-init lost NIC %s's MAC %s or MTU %d:\n%s", it.Name, it.MAC, it.MTU, got)
				}
			}
		})
	}
}

// TestNetworkGeneratorReadsKernel: systemd-network-generator, which turns
// the kernel command line's ip= into networkd files in initrds, must read
// the kernel form: the address, the gateway and the nameservers.
func TestNetworkGeneratorReadsKernel(t *testing.T) {
	gen := "/lib/systemd/systemd-network-generator"
	if _, err := os.Stat(gen); err != nil {
		testenv.Unavailable(t, "%s not installed (package systemd)", gen)
	}
	for _, c := range goldenCases() {
		t.Run(c.name, func(t *testing.T) {
			out := render(t, c.rec, Kernel)
			arg := strings.TrimSpace(string(out.Bytes()))
			if arg == "ip=off" {
				return // nothing for the kernel to configure (IPv6 only)
			}
			root := t.TempDir()
			if b, err := exec.Command(gen, "--root="+root, "--", arg).CombinedOutput(); err != nil {
				t.Fatalf("%s %s: %v\n%s", gen, arg, err, b)
			}
			got := readTree(t, filepath.Join(root, "run", "systemd", "network"), ".network")
			it := c.rec.GuestConfig().Interfaces[0]
			want := []string{"Name=eth0", "Address=" + it.IPsOf4()[0]}
			if strings.Contains(arg, "::"+it.Gateway4+":") && it.Gateway4 != "" {
				want = append(want, "Gateway="+it.Gateway4)
			}
			if it.DNS != nil {
				for _, ns := range it.DNS.Nameservers {
					if netsetup.FamilyOf(ns) == netsetup.IPv4 {
						want = append(want, "DNS="+ns)
					}
				}
			}
			for _, w := range want {
				if !hasLine(got, w) {
					t.Errorf("systemd-network-generator's reading of %s lacks %q:\n%s", arg, w, got)
				}
			}
		})
	}
}

func lookTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testenv.Unavailable(t, "%s not installed (Debian package %s; make apt installs it)", name, pkg)
	}
	return p
}

// cloudInitBefore reports whether cloud-init's version is below major.minor.
func cloudInitBefore(t *testing.T, ci string, major, minor int) bool {
	t.Helper()
	b, err := exec.Command(ci, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("cloud-init --version: %v\n%s", err, b)
	}
	m := regexp.MustCompile(`(\d+)\.(\d+)`).FindStringSubmatch(string(b))
	if m == nil {
		t.Fatalf("cloud-init --version: %q has no version", b)
	}
	ma, _ := strconv.Atoi(m[1])
	mi, _ := strconv.Atoi(m[2])
	return ma < major || ma == major && mi < minor
}
