package datapath

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/tapguest"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/netsetup"
)

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// newNetns creates the named netns /var/run/netns/<name> and removes it at
// cleanup (unless it is already gone).
func newNetns(t *testing.T, name string) string {
	t.Helper()
	if err := netfixture.CreateNamedNetns(name); err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join("/var/run/netns", name)); err == nil {
			if err := netns.DeleteNamed(name); err != nil {
				t.Errorf("delete netns %s: %v", name, err)
			}
		}
	})
	return filepath.Join("/var/run/netns", name)
}

// nsHandle is a netlink handle inside the netns at path.
func nsHandle(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("open netns %s: %v", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", path, err)
	}
	return h
}

// linkExists reports whether the netns at path (or the host, path "") has
// a link called name.
func linkExists(t *testing.T, path, name string) bool {
	t.Helper()
	var err error
	if path == "" {
		_, err = netlink.LinkByName(name)
	} else {
		h := nsHandle(t, path)
		defer h.Close()
		_, err = h.LinkByName(name)
	}
	if err == nil {
		return true
	}
	var nf netlink.LinkNotFoundError
	if errors.As(err, &nf) {
		return false
	}
	t.Fatalf("look up link %s in %q: %v", name, path, err)
	return false
}

// deleteHostLink removes a host link at cleanup when it exists.
func deleteHostLinkAtCleanup(t *testing.T, name string) {
	t.Helper()
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("delete %s: %v", name, err)
			}
		}
	})
}

// network is one CNI network: a conflist in its own NETCONFPATH dir.
type network struct {
	Name       string
	Dir        string // NETCONFPATH
	CNIVersion string
	StateDir   string
}

// vmnicConf is the vmnic entry of a chain.
func vmnicConf(stateDir string, queues int) map[string]any {
	c := map[string]any{"type": "vmnic", "stateDir": stateDir}
	if queues > 0 {
		c["queues"] = queues
	}
	return c
}

func hostLocal(dataDir, subnet string) map[string]any {
	return map[string]any{
		"type":    "host-local",
		"dataDir": dataDir,
		"ranges":  []any{[]any{map[string]any{"subnet": subnet}}},
	}
}

// bridgeChain: bridge (gateway .1 on the bridge) + host-local + vmnic.
func bridgeChain(bridge, subnet, ipamDir, stateDir string, queues int) []map[string]any {
	return []map[string]any{
		{"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "ipam": hostLocal(ipamDir, subnet)},
		vmnicConf(stateDir, queues),
	}
}

// ptpChain: ptp (gateway .1 on the host veth) + host-local + vmnic.
func ptpChain(subnet, ipamDir, stateDir string, queues int) []map[string]any {
	return []map[string]any{
		{"type": "ptp", "ipMasq": false, "ipam": hostLocal(ipamDir, subnet)},
		vmnicConf(stateDir, queues),
	}
}

// writeNetwork writes the conflist of a network into a fresh NETCONFPATH.
func writeNetwork(t *testing.T, name, cniVersion, stateDir string, plugins []map[string]any) *network {
	t.Helper()
	dir := t.TempDir()
	data, err := json.MarshalIndent(map[string]any{"cniVersion": cniVersion, "name": name, "plugins": plugins}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".conflist"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return &network{Name: name, Dir: dir, CNIVersion: cniVersion, StateDir: stateDir}
}

// cnitool runs `cnitool <op> <network> <netns>`; args are CNI_ARGS pairs.
func (n *network) cnitool(t *testing.T, op, nsPath, ifname, cniArgs string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testenv.Tool(t, "cnitool"), op, n.Name, nsPath)
	cmd.Env = append(os.Environ(),
		"NETCONFPATH="+n.Dir,
		"CNI_PATH="+pluginPath(t),
		"CNI_IFNAME="+ifname,
		"CNI_ARGS="+cniArgs,
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("cnitool %s %s (%s): %v\nstdout: %s\nstderr: %s", op, n.Name, ifname, err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

func (n *network) mustCNI(t *testing.T, op, nsPath, ifname, cniArgs string) []byte {
	t.Helper()
	out, err := n.cnitool(t, op, nsPath, ifname, cniArgs)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// cnitoolContainerID is the container id cnitool derives from a netns path
// (the first 10 bytes of its SHA-512, in hex).
func cnitoolContainerID(nsPath string) string {
	sum := sha512.Sum512([]byte(nsPath))
	return "cnitool-" + hex.EncodeToString(sum[:10])
}

// record reads a sandbox's NetSetup record.
func record(t *testing.T, stateDir, id string) *netsetup.NetSetup {
	t.Helper()
	st, err := netsetup.Open(stateDir)
	if err != nil {
		t.Fatalf("open state dir: %v", err)
	}
	rec, err := st.Get(id)
	if err != nil {
		ids, _ := st.IDs()
		t.Fatalf("record of sandbox %s: %v (records present: %v)", id, err, ids)
	}
	return rec
}

// resultInterfaces is the part of a CNI result the tests read.
type cniResult struct {
	CNIVersion string `json:"cniVersion"`
	Interfaces []struct {
		Name    string `json:"name"`
		Mac     string `json:"mac"`
		Sandbox string `json:"sandbox"`
	} `json:"interfaces"`
	IPs []struct {
		Address   string `json:"address"`
		Gateway   string `json:"gateway"`
		Interface *int   `json:"interface"`
	} `json:"ips"`
}

// guestConfig turns a recorded NIC into the stand-in's configuration.
func guestConfig(t *testing.T, nsPath string, nic netsetup.NIC) tapguest.Config {
	t.Helper()
	mac, err := net.ParseMAC(nic.MAC)
	if err != nil {
		t.Fatalf("recorded MAC %q: %v", nic.MAC, err)
	}
	if len(nic.IPs) == 0 {
		t.Fatalf("NIC %s has no recorded IP", nic.IfName)
	}
	ip, err := netip.ParsePrefix(nic.IPs[0])
	if err != nil {
		t.Fatalf("recorded IP %q: %v", nic.IPs[0], err)
	}
	gw, err := netip.ParseAddr(nic.Gateway)
	if err != nil {
		t.Fatalf("recorded gateway %q: %v", nic.Gateway, err)
	}
	return tapguest.Config{NetnsPath: nsPath, Tap: nic.Tap, MAC: mac, IP: ip, Gateway: gw, MultiQueue: nic.QueuePairs() > 1}
}

// hostPing pings ip from the host and fails unless every echo is answered.
func hostPing(t *testing.T, ip netip.Addr) {
	t.Helper()
	out, err := exec.Command(testenv.Command(t, "ping"), "-n", "-c", "3", "-i", "0.2", "-W", "2", "-w", "15", ip.String()).CombinedOutput()
	if n := received(string(out)); err != nil || n < 3 {
		t.Fatalf("ping %s from the host: %d echo replies, want 3: %v\n%s", ip, n, err, out)
	}
}

// mustAddr is the address of a prefix such as "10.206.0.5/24".
func mustAddr(t *testing.T, prefix string) netip.Addr {
	t.Helper()
	p, err := netip.ParsePrefix(prefix)
	if err != nil {
		t.Fatalf("IP %q: %v", prefix, err)
	}
	return p.Addr()
}

var receivedRE = regexp.MustCompile(`(\d+) (packets )?received`)

// received is the reply count in a ping summary (iputils or busybox).
func received(out string) int {
	m := receivedRE.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}
