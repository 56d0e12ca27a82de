package config

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		check func(t *testing.T, c *Config)
		err   string
	}{
		{name: "empty selects nothing", in: "", err: "runtimeHandlers"},
		{name: "defaults", in: "runtimeHandlers: [h]\n", check: func(t *testing.T, c *Config) {
			if c.StateDir != "/var/lib/vmnic" || c.NetnsDir != "/var/run/netns" || c.RuntimeDir != "/run/vmnic/sandboxes" ||
				c.NetSetupMountPath != "/run/vmnic/netsetup.json" || *c.VMAnnotation || c.LogLevel != "info" || c.LogFile != "" ||
				c.Sweep() != 30*time.Second || c.RuntimeDirBytes() != 4<<20 {
				t.Errorf("defaults: %+v", c)
			}
		}},
		{name: "annotation opt-in alone", in: "vmAnnotation: true\n", check: func(t *testing.T, c *Config) {
			if !c.IsVMPod("", map[string]string{AnnotationVM: "true"}) {
				t.Error("annotation not honoured after the opt-in")
			}
		}},
		{name: "runtime dir size", in: "runtimeHandlers: [h]\nruntimeDirSize: 256Ki\n", check: func(t *testing.T, c *Config) {
			if c.RuntimeDirBytes() != 256<<10 {
				t.Errorf("runtimeDirSize %d, want %d", c.RuntimeDirBytes(), 256<<10)
			}
		}},
		{name: "runtime dir size bytes", in: `{"runtimeHandlers": ["h"], "runtimeDirSize": "1048576"}`, check: func(t *testing.T, c *Config) {
			if c.RuntimeDirBytes() != 1<<20 {
				t.Errorf("runtimeDirSize %d, want %d", c.RuntimeDirBytes(), 1<<20)
			}
		}},
		{name: "runtime dir size too small", in: "runtimeHandlers: [h]\nruntimeDirSize: 1Ki\n", err: "runtimeDirSize"},
		{name: "runtime dir size bad", in: "runtimeHandlers: [h]\nruntimeDirSize: lots\n", err: "lots"},
		{name: "yaml", in: "runtimeHandlers: [kata-clh, kata-qemu]\nvmAnnotation: false\nstateDir: /s\nnetnsDir: /n\nruntimeDir: /r\nlogFile: /l.log\nlogLevel: debug\n",
			check: func(t *testing.T, c *Config) {
				if len(c.RuntimeHandlers) != 2 || c.RuntimeHandlers[1] != "kata-qemu" || *c.VMAnnotation ||
					c.StateDir != "/s" || c.NetnsDir != "/n" || c.RuntimeDir != "/r" || c.LogFile != "/l.log" {
					t.Errorf("parsed: %+v", c)
				}
				if l, _ := c.Level(); l != slog.LevelDebug {
					t.Errorf("level %v", l)
				}
			}},
		{name: "json with tabs", in: "{\n\t\"runtimeHandlers\": [\"fc\"],\n\t\"stateDir\": \"/x\"\n}", check: func(t *testing.T, c *Config) {
			if len(c.RuntimeHandlers) != 1 || c.StateDir != "/x" || *c.VMAnnotation {
				t.Errorf("parsed: %+v", c)
			}
		}},
		{name: "yaml sweep interval", in: "runtimeHandlers: [h]\nsweepInterval: 500ms\n", check: func(t *testing.T, c *Config) {
			if c.Sweep() != 500*time.Millisecond {
				t.Errorf("sweep %v, want 500ms", c.Sweep())
			}
		}},
		{name: "sweep disabled", in: "runtimeHandlers: [h]\nsweepInterval: 0\n", check: func(t *testing.T, c *Config) {
			if c.Sweep() != 0 {
				t.Errorf("sweep %v, want 0 (disabled)", c.Sweep())
			}
		}},
		{name: "json sweep interval", in: `{"runtimeHandlers": ["h"], "sweepInterval": "2m"}`, check: func(t *testing.T, c *Config) {
			if c.Sweep() != 2*time.Minute {
				t.Errorf("sweep %v, want 2m", c.Sweep())
			}
		}},
		{name: "json sweep seconds", in: `{"runtimeHandlers": ["h"], "sweepInterval": 5}`, check: func(t *testing.T, c *Config) {
			if c.Sweep() != 5*time.Second {
				t.Errorf("sweep %v, want 5s", c.Sweep())
			}
		}},
		{name: "bad sweep interval", in: "sweepInterval: soon\n", err: "soon"},
		{name: "negative sweep interval", in: "sweepInterval: -1s\n", err: "negative"},
		{name: "yaml typo", in: "runtimeHandler: [x]\n", err: "runtimeHandler"},
		{name: "json typo", in: `{"statedir": "/x"}`, err: "statedir"},
		{name: "relative dir", in: "stateDir: var/lib\n", err: "absolute"},
		{name: "bad level", in: "logLevel: loud\n", err: "loud"},
		{name: "selects nothing", in: "vmAnnotation: false\n", err: "no pod could ever be a VM pod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "vmnic.conf")
	if err := os.WriteFile(p, []byte("logLevel: bogus\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Fatalf("err %v, want one naming the file", err)
	}
	if _, err := Load(p + ".missing"); err == nil {
		t.Fatal("missing file accepted")
	}
}

func TestIsVMPod(t *testing.T) {
	c, err := Parse([]byte("runtimeHandlers: [kata]\nvmAnnotation: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	off, err := Parse([]byte("runtimeHandlers: [kata]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg     *Config
		handler string
		ann     map[string]string
		want    bool
	}{
		{c, "kata", nil, true},
		{c, "runc", nil, false},
		{c, "", nil, false},
		{c, "runc", map[string]string{AnnotationVM: "true"}, true},
		{c, "runc", map[string]string{AnnotationVM: " True "}, true},
		{c, "runc", map[string]string{AnnotationVM: "false"}, false},
		{c, "runc", map[string]string{AnnotationVM: "yes"}, false},
		{off, "runc", map[string]string{AnnotationVM: "true"}, false},
		{off, "kata", nil, true},
	} {
		if got := tc.cfg.IsVMPod(tc.handler, tc.ann); got != tc.want {
			t.Errorf("IsVMPod(%q, %v) with vmAnnotation=%v = %v, want %v", tc.handler, tc.ann, *tc.cfg.VMAnnotation, got, tc.want)
		}
	}
}

func TestIsVMMContainer(t *testing.T) {
	named := map[string]string{AnnotationVMMContainer: "vmm"}
	for _, tc := range []struct {
		name string
		ann  map[string]string
		want bool
	}{
		{"vmm", named, true},
		{"sidecar", named, false},
		{"anything", nil, true},
		{"anything", map[string]string{AnnotationVMMContainer: ""}, true},
	} {
		if got := IsVMMContainer(tc.name, tc.ann); got != tc.want {
			t.Errorf("IsVMMContainer(%q, %v) = %v, want %v", tc.name, tc.ann, got, tc.want)
		}
	}
}

func TestTapHandoff(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{{"", true}, {"auto", true}, {"name", true}, {"fd", true}, {"FD", false}, {"fds", false}} {
		_, err := Parse([]byte(`{"runtimeHandlers":["kata"],"tapHandoff":"` + tc.in + `"}`))
		if (err == nil) != tc.ok {
			t.Errorf("tapHandoff %q: %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

// TestInjectTunFor is the table handoff × the pod's vmnic.io/vmm → does the
// VMM container get /dev/net/tun (or a clear refusal).
func TestInjectTunFor(t *testing.T) {
	const absent = "<absent>"
	for _, tc := range []struct {
		handoff, vmm string
		inject       bool
		err          string // substring of the error; "" = no error
	}{
		{"", absent, true, ""},
		{"", "cloud-hypervisor", false, ""},
		{"", "qemu", false, ""},
		{"", "firecracker", true, ""},
		{"auto", absent, true, ""},
		{"auto", "cloud-hypervisor", false, ""},
		{"auto", " qemu ", false, ""},
		{"auto", "firecracker", true, ""},
		{"name", absent, true, ""},
		{"name", "cloud-hypervisor", true, ""},
		{"name", "qemu", true, ""},
		{"name", "firecracker", true, ""},
		{"fd", absent, false, ""},
		{"fd", "cloud-hypervisor", false, ""},
		{"fd", "qemu", false, ""},
		{"fd", "firecracker", false, `says the VMM is firecracker, which cannot take TAP fds`},
		{"auto", "kvmtool", false, `vmnic.io/vmm "kvmtool" names no VMM kind vmnic knows: use "cloud-hypervisor", "qemu" or "firecracker"`},
		{"auto", "Cloud-Hypervisor", false, `names no VMM kind`},
		{"name", "ch", false, `names no VMM kind`},
		{"fd", "", false, `vmnic.io/vmm is empty`},
	} {
		c, err := Parse([]byte(`{"runtimeHandlers":["kata"],"tapHandoff":"` + tc.handoff + `"}`))
		if err != nil {
			t.Fatal(err)
		}
		ann := map[string]string{AnnotationVM: "true"}
		if tc.vmm != absent {
			ann[AnnotationVMM] = tc.vmm
		}
		got, err := c.InjectTunFor(ann)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("tapHandoff %q, %s %q: error %v, want one saying %q", tc.handoff, AnnotationVMM, tc.vmm, err, tc.err)
		case tc.err == "" && err != nil:
			t.Errorf("tapHandoff %q, %s %q: %v", tc.handoff, AnnotationVMM, tc.vmm, err)
		case tc.err == "" && got != tc.inject:
			t.Errorf("tapHandoff %q, %s %q: inject /dev/net/tun %v, want %v", tc.handoff, AnnotationVMM, tc.vmm, got, tc.inject)
		}
	}
}
