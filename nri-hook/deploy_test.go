package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
	"github.com/vmnic/vmnic/nri-hook/internal/config"
)

// TestDeployFiles: the files in deploy/ are valid, their plugin
// configurations parse, their command lines use flags vmnic-nri has, and
// the DaemonSet mounts only volumes it declares.
func TestDeployFiles(t *testing.T) {
	dir := filepath.Join(testenv.RepoRoot(t), "deploy")

	for _, f := range []string{"vmnic-nri.yaml", "nri/10-vmnic.conf"} {
		if _, err := config.Load(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}

	unit, err := os.ReadFile(filepath.Join(dir, "systemd/vmnic-nri.service"))
	if err != nil {
		t.Fatal(err)
	}
	var execStart string
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "ExecStart="); ok {
			execStart = v
		}
	}
	if execStart == "" {
		t.Fatal("systemd unit has no ExecStart")
	}
	checkArgs(t, "systemd unit", strings.Fields(execStart)[1:])

	data, err := os.ReadFile(filepath.Join(dir, "kubernetes/vmnic.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	kinds := map[string]bool{}
	for {
		var doc struct {
			Kind string            `yaml:"kind"`
			Data map[string]string `yaml:"data"`
			Spec struct {
				Template struct {
					Spec struct {
						HostNetwork    bool        `yaml:"hostNetwork"`
						InitContainers []container `yaml:"initContainers"`
						Containers     []container `yaml:"containers"`
						Volumes        []struct {
							Name string `yaml:"name"`
						} `yaml:"volumes"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("kubernetes/vmnic.yaml: %v", err)
		}
		kinds[doc.Kind] = true
		switch doc.Kind {
		case "ConfigMap":
			if _, err := config.Parse([]byte(doc.Data["nri.yaml"])); err != nil {
				t.Errorf("ConfigMap nri.yaml: %v", err)
			}
			var list struct {
				Plugins []struct {
					Type string `json:"type"`
				} `json:"plugins"`
			}
			if err := json.Unmarshal([]byte(doc.Data["90-vmnic.conflist"]), &list); err != nil {
				t.Errorf("ConfigMap conflist: %v", err)
			} else if n := len(list.Plugins); n == 0 || list.Plugins[n-1].Type != "vmnic" {
				t.Errorf("conflist does not end with the vmnic plugin: %+v", list.Plugins)
			}
		case "DaemonSet":
			ps := doc.Spec.Template.Spec
			if !ps.HostNetwork {
				t.Error("DaemonSet is not hostNetwork")
			}
			vols := map[string]bool{}
			for _, v := range ps.Volumes {
				vols[v.Name] = true
			}
			var nri *container
			all := append(ps.InitContainers, ps.Containers...)
			for i, c := range all {
				for _, m := range c.VolumeMounts {
					if !vols[m.Name] {
						t.Errorf("container %s mounts undeclared volume %s", c.Name, m.Name)
					}
				}
				if c.Name == "vmnic-nri" {
					nri = &all[i]
				}
			}
			if nri == nil || len(nri.Command) == 0 {
				t.Fatal("no vmnic-nri container")
			}
			checkArgs(t, "DaemonSet", nri.Command[1:])
			paths := map[string]string{}
			for _, m := range nri.VolumeMounts {
				paths[m.MountPath] = m.MountPropagation
			}
			for _, p := range []string{"/var/run/nri", "/var/run/netns", "/var/lib/vmnic", "/run/vmnic"} {
				if _, ok := paths[p]; !ok {
					t.Errorf("vmnic-nri does not mount %s", p)
				}
			}
			if paths["/var/run/netns"] != "Bidirectional" {
				t.Errorf("/var/run/netns propagation %q, want Bidirectional", paths["/var/run/netns"])
			}
		}
	}
	if !kinds["ConfigMap"] || !kinds["DaemonSet"] {
		t.Errorf("kinds %v, want a ConfigMap and a DaemonSet", kinds)
	}
}

type container struct {
	Name         string   `yaml:"name"`
	Command      []string `yaml:"command"`
	VolumeMounts []struct {
		Name             string `yaml:"name"`
		MountPath        string `yaml:"mountPath"`
		MountPropagation string `yaml:"mountPropagation"`
	} `yaml:"volumeMounts"`
}

func checkArgs(t *testing.T, where string, args []string) {
	t.Helper()
	fs, o := newFlags()
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	if fs.NArg() != 0 || o.config == "" || o.socket == "" {
		t.Errorf("%s: args %v: want --socket and --config, nothing else", where, args)
	}
}
