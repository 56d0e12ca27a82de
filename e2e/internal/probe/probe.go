// Package probe is what the e2e suite's VMM stand-in (cmd/vmmprobe) reports
// about the container it runs in; the tests decode the same type.
package probe

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Report is what vmmprobe report prints. The e2e tests decode it.
type Report struct {
	Tun      Device            `json:"tun"`
	Env      map[string]string `json:"env"`
	NetSetup FileView          `json:"netsetup"`
	NetnsDev uint64            `json:"netns_dev"`
	NetnsIno uint64            `json:"netns_ino"`
	Mounts   []string          `json:"mounts"`
	Links    []string          `json:"links"`
	// RuntimeDir lists $VMNIC_RUNTIME_DIR (where the VMM's API socket goes).
	RuntimeDir []string `json:"runtime_dir,omitempty"`
	Hostname   string   `json:"hostname"`
	// CapEff is PID 1's effective capability set (/proc/1/status CapEff).
	CapEff uint64   `json:"cap_eff"`
	Errors []string `json:"errors,omitempty"`
}

// Device describes a device node.
type Device struct {
	Exists bool   `json:"exists"`
	Char   bool   `json:"char"`
	Major  uint32 `json:"major"`
	Minor  uint32 `json:"minor"`
	Opened bool   `json:"opened"` // open(O_RDWR) succeeded (device cgroup allows it)
}

// FileView describes a file the container was given.
type FileView struct {
	Path     string          `json:"path"`
	Readable bool            `json:"readable"`
	Writable bool            `json:"writable"`
	Content  json.RawMessage `json:"content,omitempty"`
}

// Collect gathers the report for the calling process's container.
func Collect() Report {
	r := Report{Env: map[string]string{}}
	fail := func(err error) { r.Errors = append(r.Errors, err.Error()) }

	var st unix.Stat_t
	if err := unix.Stat("/dev/net/tun", &st); err == nil {
		r.Tun.Exists = true
		r.Tun.Char = st.Mode&unix.S_IFMT == unix.S_IFCHR
		r.Tun.Major, r.Tun.Minor = unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev))
		if f, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err == nil {
			r.Tun.Opened = true
			f.Close()
		} else {
			fail(fmt.Errorf("open /dev/net/tun: %w", err))
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		fail(fmt.Errorf("stat /dev/net/tun: %w", err))
	}

	if env, err := os.ReadFile("/proc/1/environ"); err == nil {
		for _, kv := range strings.Split(string(env), "\x00") {
			if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "VMNIC_") {
				r.Env[k] = v
			}
		}
	} else {
		fail(err)
	}

	if p := r.Env["VMNIC_NETSETUP"]; p != "" {
		r.NetSetup.Path = p
		if data, err := os.ReadFile(p); err == nil {
			r.NetSetup.Readable = true
			if json.Valid(data) {
				r.NetSetup.Content = data
			}
		} else {
			fail(fmt.Errorf("read netsetup: %w", err))
		}
		if f, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
			r.NetSetup.Writable = true
			f.Close()
		}
	}

	if d := r.Env["VMNIC_RUNTIME_DIR"]; d != "" {
		if ents, err := os.ReadDir(d); err == nil {
			for _, e := range ents {
				r.RuntimeDir = append(r.RuntimeDir, e.Name())
			}
		} else {
			fail(fmt.Errorf("runtime dir: %w", err))
		}
	}

	if err := unix.Stat("/proc/1/ns/net", &st); err == nil {
		r.NetnsDev, r.NetnsIno = uint64(st.Dev), st.Ino
	} else {
		fail(err)
	}

	if f, err := os.Open("/proc/1/mountinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if fields := strings.Fields(sc.Text()); len(fields) > 4 {
				r.Mounts = append(r.Mounts, fields[4])
			}
		}
		f.Close()
	} else {
		fail(err)
	}

	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			r.Links = append(r.Links, i.Name)
		}
	} else {
		fail(err)
	}
	r.Hostname, _ = os.Hostname()
	if data, err := os.ReadFile("/proc/1/status"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
				if _, err := fmt.Sscanf(strings.TrimSpace(v), "%x", &r.CapEff); err != nil {
					fail(fmt.Errorf("CapEff %q: %w", v, err))
				}
			}
		}
	} else {
		fail(err)
	}
	return r
}
