package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/vmnic/vmnic/internal/testkit/netfixture"
)

// TestConflists loads every example in conflists/ with libcni and decodes
// vmnic's entry with the plugin's own conf parser.
func TestConflists(t *testing.T) {
	dir := filepath.Join(netfixture.RepoRoot(t), "conflists")
	files, err := libcni.ConfFiles(dir, []string{".conflist"})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("want at least 4 conflists in %s, got %v", dir, files)
	}
	seen := map[string]bool{}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			list, err := libcni.ConfListFromFile(f)
			if err != nil {
				t.Fatalf("libcni: %v", err)
			}
			if seen[list.Name] {
				t.Errorf("network name %q used twice", list.Name)
			}
			seen[list.Name] = true
			var vm *libcni.PluginConfig
			for i, p := range list.Plugins {
				if p.Network.Type == "vmnic" {
					if i == 0 {
						t.Error("vmnic is first: it must be chained after an interface plugin")
					}
					vm = p
				}
			}
			if vm == nil {
				t.Fatal("no vmnic entry")
			}
			// libcni injects name and cniVersion into each plugin's conf.
			conf, err := libcni.InjectConf(vm, map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
			if err != nil {
				t.Fatal(err)
			}
			r, err := parseConf(conf.Bytes)
			if err != nil {
				t.Fatalf("vmnic conf: %v", err)
			}
			ok := false
			for _, v := range SupportedVersions {
				ok = ok || v == list.CNIVersion
			}
			if !ok {
				t.Errorf("cniVersion %s is not supported by vmnic", list.CNIVersion)
			}
			if strings.Contains(f, "bridge-backend") && (r.Backend != "bridge" || r.Bridge == "") {
				t.Errorf("bridge-backend example: backend %q bridge %q", r.Backend, r.Bridge)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "10-vmnic.conflist")); err != nil {
		t.Errorf("containerd example: %v", err)
	}
}
