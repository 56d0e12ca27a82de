// Package config is the vmnic NRI plugin's configuration: which pods are VM
// pods and where the plugin keeps its state. It is read from YAML or JSON,
// either the file the runtime passes to a pre-installed plugin
// (/etc/nri/conf.d/NN-vmnic.conf, handed over verbatim in Configure) or the
// --config file of an external plugin.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vmnic/vmnic/netsetup"
)

// Pod annotations the plugin reads.
const (
	// AnnotationVM marks a VM pod when set to "true".
	AnnotationVM = "vmnic.io/vm"
	// AnnotationVMMContainer names the container that runs the VMM; without
	// it every container of a VM pod is treated as a VMM container.
	AnnotationVMMContainer = "vmnic.io/vmm-container"
	// AnnotationVMM names the kind of VMM the pod runs: VMMCloudHypervisor,
	// VMMQEMU or VMMFirecracker. With tapHandoff "auto" it decides whether
	// the VMM container gets /dev/net/tun (InjectTunFor).
	AnnotationVMM = "vmnic.io/vmm"
)

// VMM kinds the vmnic.io/vmm annotation takes (the kinds of vmnicctl
// attach-vmm --kind).
const (
	VMMCloudHypervisor = "cloud-hypervisor"
	VMMQEMU            = "qemu"
	VMMFirecracker     = "firecracker"
)

// Defaults.
const (
	DefaultNetnsDir          = "/var/run/netns"
	DefaultRuntimeDir        = "/run/vmnic/sandboxes"
	DefaultNetSetupMountPath = "/run/vmnic/netsetup.json"
	DefaultLogLevel          = "info"
	// DefaultSweepInterval is how often the plugin looks for VM pods that
	// went without a StopPodSandbox/RemovePodSandbox event.
	DefaultSweepInterval = 30 * time.Second
	// DefaultRuntimeDirSize bounds each VM pod's runtime directory (a tmpfs
	// of its own): room for the VMM's API socket, the record's copy and a
	// few small files, and never the host's /run.
	DefaultRuntimeDirSize = 4 << 20
	// MinRuntimeDirSize is the smallest runtimeDirSize accepted.
	MinRuntimeDirSize = 64 << 10
)

// Config is the plugin configuration. Keys are camelCase in YAML and JSON.
type Config struct {
	// RuntimeHandlers: pods run by one of these runtime handlers
	// (RuntimeClass handlers, e.g. "kata-clh") are VM pods.
	RuntimeHandlers []string `json:"runtimeHandlers,omitempty" yaml:"runtimeHandlers,omitempty"`
	// VMAnnotation: pods annotated vmnic.io/vm: "true" are VM pods too.
	// Off by default: whoever can create a pod can set an annotation, and a
	// VM pod's VMM container gets /dev/net/tun and a read-write host
	// directory (see deploy/README.md). Runtime handlers are what the
	// cluster admin controls.
	VMAnnotation *bool `json:"vmAnnotation,omitempty" yaml:"vmAnnotation,omitempty"`
	// StateDir holds the NetSetup records (default /var/lib/vmnic).
	StateDir string `json:"stateDir,omitempty" yaml:"stateDir,omitempty"`
	// NetnsDir is where owned netns of host-network VM pods are
	// bind-mounted (default /var/run/netns).
	NetnsDir string `json:"netnsDir,omitempty" yaml:"netnsDir,omitempty"`
	// RuntimeDir is the base of the per-sandbox directories for the VMM's
	// API socket: <runtimeDir>/<sandbox-id> (default /run/vmnic/sandboxes).
	RuntimeDir string `json:"runtimeDir,omitempty" yaml:"runtimeDir,omitempty"`
	// RuntimeDirSize bounds each per-sandbox runtime directory: it is a
	// tmpfs mount of its own of this size ("4Mi", "512Ki", or bytes;
	// default 4Mi), so a VMM container cannot fill the host's /run.
	RuntimeDirSize *Size `json:"runtimeDirSize,omitempty" yaml:"runtimeDirSize,omitempty"`
	// NetSetupMountPath is no longer used and only accepted so that older
	// configuration files still load: the VMM container reads the live copy
	// of its record in its runtime directory (<runtimeDir>/<sandbox-id>/
	// netsetup/netsetup.json, named by VMNIC_NETSETUP, a read-only mount of
	// its directory); a mount of the record file
	// itself would keep showing the record as it was at CreateContainer.
	NetSetupMountPath string `json:"netsetupMountPath,omitempty" yaml:"netsetupMountPath,omitempty"`
	// SweepInterval is how often the plugin tears down VM pods that are
	// gone (their netns removed, or, for a netns vmnic owns, their pod
	// process exited) without a StopPodSandbox/RemovePodSandbox event:
	// containerd sends none for pods that existed before it restarted.
	// A Go duration ("30s", "500ms"); default 30s; 0 disables the sweep.
	SweepInterval *Duration `json:"sweepInterval,omitempty" yaml:"sweepInterval,omitempty"`
	// TapHandoff is how the VMMs of VM pods get their TAPs, and so what
	// their containers need: "fd" (vmnic hands the TAP queue fds over the
	// VMM's control socket: the VMM container gets no /dev/net/tun and
	// needs no network capability; Cloud Hypervisor and QEMU), "name"
	// (the VMM opens its TAPs by name: /dev/net/tun is injected;
	// Firecracker), or "auto" (default: fd where the pod's VMM takes fds:
	// a pod annotated vmnic.io/vmm: cloud-hypervisor or qemu gets no
	// /dev/net/tun; one annotated firecracker, or not annotated, gets it,
	// as its VMM may be one that opens by name). The CNI conf's tapHandoff
	// picks the handoff of each NIC (its "auto" hands fds to Cloud
	// Hypervisor and QEMU too).
	TapHandoff string `json:"tapHandoff,omitempty" yaml:"tapHandoff,omitempty"`
	// LogFile receives the plugin's log (default: stderr, which a runtime
	// discards for pre-installed plugins).
	LogFile string `json:"logFile,omitempty" yaml:"logFile,omitempty"`
	// LogLevel is debug, info, warn or error (default info).
	LogLevel string `json:"logLevel,omitempty" yaml:"logLevel,omitempty"`
}

// Parse reads a configuration in JSON (when it starts with '{') or YAML.
// Unknown keys are errors, so a typo does not silently select no pods.
// Empty input is the default configuration.
func Parse(data []byte) (*Config, error) {
	c := &Config{}
	trimmed := bytes.TrimSpace(data)
	switch {
	case len(trimmed) == 0:
	case trimmed[0] == '{':
		if err := checkJSONKeys(trimmed); err != nil {
			return nil, err
		}
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		dec.DisallowUnknownFields()
		if err := dec.Decode(c); err != nil {
			return nil, fmt.Errorf("parse JSON config: %w", err)
		}
	default:
		dec := yaml.NewDecoder(bytes.NewReader(trimmed))
		dec.KnownFields(true)
		if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("parse YAML config: %w", err)
		}
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// checkJSONKeys refuses keys that differ from the known ones, also in case
// only (encoding/json would accept "statedir" for stateDir).
func checkJSONKeys(data []byte) error {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(data, &keys); err != nil {
		return fmt.Errorf("parse JSON config: %w", err)
	}
	known := map[string]bool{}
	t := reflect.TypeOf(Config{})
	for i := 0; i < t.NumField(); i++ {
		known[strings.Split(t.Field(i).Tag.Get("json"), ",")[0]] = true
	}
	for k := range keys {
		if !known[k] {
			return fmt.Errorf("parse JSON config: unknown key %q", k)
		}
	}
	return nil
}

// Load parses the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Default is the configuration with every default applied.
func Default() *Config {
	c := &Config{}
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.VMAnnotation == nil {
		f := false
		c.VMAnnotation = &f
	}
	if c.RuntimeDirSize == nil {
		sz := Size(DefaultRuntimeDirSize)
		c.RuntimeDirSize = &sz
	}
	if c.StateDir == "" {
		c.StateDir = netsetup.DefaultStateDir
	}
	if c.NetnsDir == "" {
		c.NetnsDir = DefaultNetnsDir
	}
	if c.RuntimeDir == "" {
		c.RuntimeDir = DefaultRuntimeDir
	}
	if c.NetSetupMountPath == "" {
		c.NetSetupMountPath = DefaultNetSetupMountPath
	}
	if c.LogLevel == "" {
		c.LogLevel = DefaultLogLevel
	}
	if c.SweepInterval == nil {
		d := Duration(DefaultSweepInterval)
		c.SweepInterval = &d
	}
}

// Sweep is the sweep interval; 0 means no sweep.
func (c *Config) Sweep() time.Duration {
	if c.SweepInterval == nil {
		return DefaultSweepInterval
	}
	return time.Duration(*c.SweepInterval)
}

// RuntimeDirBytes is the size of each per-sandbox runtime directory.
func (c *Config) RuntimeDirBytes() uint64 {
	if c.RuntimeDirSize == nil {
		return DefaultRuntimeDirSize
	}
	return uint64(*c.RuntimeDirSize)
}

// Size is a byte count written as a number of bytes or with a binary
// suffix: "4Mi", "512Ki", "1Gi" (K, M, G and k, m, g are accepted too, as
// tmpfs's size= does).
type Size uint64

func (s Size) String() string {
	switch {
	case s != 0 && s%(1<<30) == 0:
		return fmt.Sprintf("%dGi", s>>30)
	case s != 0 && s%(1<<20) == 0:
		return fmt.Sprintf("%dMi", s>>20)
	case s != 0 && s%(1<<10) == 0:
		return fmt.Sprintf("%dKi", s>>10)
	}
	return strconv.FormatUint(uint64(s), 10)
}

// MarshalJSON writes the size as a string.
func (s Size) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a size string or a number of bytes.
func (s *Size) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	return s.set(v)
}

// UnmarshalYAML reads a size string or a number of bytes.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	var v any
	if err := n.Decode(&v); err != nil {
		return err
	}
	return s.set(v)
}

func (s *Size) set(v any) error {
	bad := fmt.Errorf("size %v: use bytes or a size such as 4Mi or 512Ki", v)
	switch x := v.(type) {
	case int:
		if x < 0 {
			return bad
		}
		*s = Size(x)
		return nil
	case float64:
		if x < 0 || x != float64(uint64(x)) {
			return bad
		}
		*s = Size(x)
		return nil
	case string:
		str := strings.TrimSpace(x)
		mult := uint64(1)
		for _, u := range []struct {
			suffix string
			mult   uint64
		}{{"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}} {
			if strings.HasSuffix(str, u.suffix) {
				str, mult = strings.TrimSuffix(str, u.suffix), u.mult
				break
			}
		}
		n, err := strconv.ParseUint(str, 10, 64)
		if err != nil || n > (1<<63)/mult {
			return bad
		}
		*s = Size(n * mult)
		return nil
	}
	return bad
}

// Duration is a time.Duration written as a Go duration string ("30s",
// "1m30s"); a bare number is seconds.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON reads a duration string or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	return d.set(v)
}

// UnmarshalYAML reads a duration string or a number of seconds.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var v any
	if err := n.Decode(&v); err != nil {
		return err
	}
	return d.set(v)
}

func (d *Duration) set(v any) error {
	switch x := v.(type) {
	case string:
		p, err := time.ParseDuration(strings.TrimSpace(x))
		if err != nil {
			return fmt.Errorf("duration %q: use a Go duration such as 30s or 500ms", x)
		}
		*d = Duration(p)
	case float64:
		*d = Duration(x * float64(time.Second))
	case int:
		*d = Duration(time.Duration(x) * time.Second)
	default:
		return fmt.Errorf("duration %v: use a Go duration such as 30s or 500ms", v)
	}
	return nil
}

// Validate checks values a default cannot fix.
func (c *Config) Validate() error {
	for name, p := range map[string]string{
		"stateDir": c.StateDir, "netnsDir": c.NetnsDir, "runtimeDir": c.RuntimeDir,
		"netsetupMountPath": c.NetSetupMountPath,
	} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("config: %s %q must be an absolute path", name, p)
		}
	}
	if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
		return fmt.Errorf("config: logFile %q must be an absolute path", c.LogFile)
	}
	if _, err := c.Level(); err != nil {
		return err
	}
	switch c.TapHandoff {
	case "", "auto", "fd", "name":
	default:
		return fmt.Errorf("config: tapHandoff %q: use \"auto\", \"fd\" or \"name\"", c.TapHandoff)
	}
	if c.Sweep() < 0 {
		return fmt.Errorf("config: sweepInterval %s is negative (0 disables the sweep)", c.SweepInterval)
	}
	if c.RuntimeDirBytes() < MinRuntimeDirSize {
		return fmt.Errorf("config: runtimeDirSize %s is below the minimum %s", c.RuntimeDirSize, Size(MinRuntimeDirSize))
	}
	if !*c.VMAnnotation && len(c.RuntimeHandlers) == 0 {
		return fmt.Errorf("config: runtimeHandlers is empty and vmAnnotation is off (the default): no pod could ever be a VM pod; " +
			"list the runtime handlers of VM pods in runtimeHandlers (or opt in to the vmnic.io/vm annotation with vmAnnotation: true)")
	}
	for _, h := range c.RuntimeHandlers {
		if strings.TrimSpace(h) == "" {
			return fmt.Errorf("config: runtimeHandlers has an empty name")
		}
	}
	return nil
}

// InjectTunFor reports whether the VMM container of a VM pod with these
// annotations gets /dev/net/tun. tapHandoff "name": always; "fd": never
// (vmnic hands the VMM its TAPs as fds), and a pod that says its VMM is
// Firecracker, which cannot take fds, is refused; "auto" (or unset): only
// when the pod's vmnic.io/vmm annotation names Firecracker or is absent (the
// VMM kind is unknown at CreateContainer, and it may open its TAPs by name).
// An annotation naming no known VMM kind is an error.
func (c *Config) InjectTunFor(podAnnotations map[string]string) (bool, error) {
	kind, set := podAnnotations[AnnotationVMM]
	kind = strings.TrimSpace(kind)
	switch kind {
	case VMMCloudHypervisor, VMMQEMU, VMMFirecracker:
	case "":
		if set {
			return false, fmt.Errorf("pod annotation %s is empty: use %q, %q or %q, or leave it out", AnnotationVMM, VMMCloudHypervisor, VMMQEMU, VMMFirecracker)
		}
	default:
		return false, fmt.Errorf("pod annotation %s %q names no VMM kind vmnic knows: use %q, %q or %q",
			AnnotationVMM, kind, VMMCloudHypervisor, VMMQEMU, VMMFirecracker)
	}
	switch c.TapHandoff {
	case "name":
		return true, nil
	case "fd":
		if kind == VMMFirecracker {
			return false, fmt.Errorf("tapHandoff is \"fd\" but the pod annotation %s says the VMM is firecracker, which cannot take TAP fds "+
				"(it opens its TAPs by name and needs /dev/net/tun): set tapHandoff \"auto\" or \"name\" for Firecracker pods", AnnotationVMM)
		}
		return false, nil
	}
	return kind == "" || kind == VMMFirecracker, nil
}

// Level is the slog level of LogLevel.
func (c *Config) Level() (slog.Level, error) {
	switch strings.ToLower(c.LogLevel) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("config: logLevel %q: use debug, info, warn or error", c.LogLevel)
}

// IsVMPod says whether a pod with this runtime handler and these
// annotations is a VM pod.
func (c *Config) IsVMPod(handler string, annotations map[string]string) bool {
	if handler != "" && slices.Contains(c.RuntimeHandlers, handler) {
		return true
	}
	return c.VMAnnotation != nil && *c.VMAnnotation && strings.EqualFold(strings.TrimSpace(annotations[AnnotationVM]), "true")
}

// IsVMMContainer says whether the container named name of a VM pod runs the
// VMM: the one the pod's vmnic.io/vmm-container annotation names, or any
// container when the pod does not name one.
func IsVMMContainer(name string, podAnnotations map[string]string) bool {
	want := strings.TrimSpace(podAnnotations[AnnotationVMMContainer])
	return want == "" || want == name
}

// SandboxRuntimeDir is the per-sandbox runtime directory.
func (c *Config) SandboxRuntimeDir(id string) string {
	return filepath.Join(c.RuntimeDir, id)
}
