package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/netsetup"
)

func TestGuestConfig(t *testing.T) {
	c := newCtl(t)
	writeRecord(t, c.state, "vmnict-gc")

	var doc netsetup.GuestConfig
	if err := json.Unmarshal([]byte(c.ok("guest-config", "vmnict-gc", "--format", "json")), &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Version != netsetup.GuestConfigVersion || doc.SandboxID != "vmnict-gc" || len(doc.Interfaces) != 2 ||
		doc.Interfaces[0].MAC != "02:00:00:00:00:01" || doc.Interfaces[1].MTU != 1400 || doc.Interfaces[1].Gateway4 != "10.211.0.1" {
		t.Errorf("json document: %+v", doc)
	}
	ci := c.ok("guest-config", "vmnict-gc", "--format", "cloud-init")
	for _, want := range []string{"version: 2", `macaddress: "02:00:00:00:00:02"`, "mtu: 1400", `"10.201.0.5/24"`} {
		if !strings.Contains(ci, want) {
			t.Errorf("cloud-init lacks %q:\n%s", want, ci)
		}
	}
	dir := t.TempDir()
	files := strings.Fields(c.ok("guest-config", "vmnict-gc", "--format", "networkd", "--dir", dir))
	if len(files) != 2 || filepath.Base(files[0]) != "10-vmnic-00-eth0.network" {
		t.Fatalf("networkd files: %v", files)
	}
	if data, err := os.ReadFile(files[1]); err != nil || !strings.Contains(string(data), "MACAddress=02:00:00:00:00:02") {
		t.Errorf("%s: %v\n%s", files[1], err, data)
	}

	// Two NICs do not fit ip=: an error naming what is lost, unless --lossy.
	code, out, errOut := c.run("guest-config", "vmnict-gc", "--format", "kernel")
	if code != 1 || out != "" || !strings.Contains(errOut, "NIC net1: not configured") || !strings.Contains(errOut, "--lossy") {
		t.Errorf("kernel without --lossy: exit %d, stdout %q, stderr %s", code, out, errOut)
	}
	code, out, errOut = c.run("guest-config", "vmnict-gc", "--format", "kernel", "--lossy")
	if code != 0 || out != "ip=10.201.0.5:::255.255.255.0::eth0:off\n" || !strings.Contains(errOut, "NIC net1") {
		t.Errorf("kernel --lossy: exit %d, stdout %q, stderr %s", code, out, errOut)
	}

	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"guest-config", "vmnict-gc"}, "--format is required"},
		{[]string{"guest-config", "vmnict-gc", "--format", "yaml"}, `unknown guest config format "yaml"`},
		{[]string{"guest-config", "nosuch", "--format", "json"}, "no NetSetup record"},
	} {
		if code, _, errOut := c.run(tc.args...); code != 1 || !strings.Contains(errOut, tc.msg) {
			t.Errorf("%v: exit %d, %s", tc.args, code, errOut)
		}
	}
}
