package qemuguest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// virtioNetModules are the modules a Debian kernel needs for virtio-net, in
// load order. Built-in or absent ones are skipped.
var virtioNetModules = []string{
	"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
	"virtio_pci", "failover", "net_failover", "virtio_net",
}

// shareModules are the modules of a virtio-9p share (Config.ExtraFiles
// hooks mount one, e.g. the record's live copy), in load order; packed
// when the kernel has them.
var shareModules = []string{"netfs", "fscache", "9pnet", "9pnet_virtio", "9p"}

// readyMarker is printed by /init once the modules are loaded, just before
// the console shell starts.
const readyMarker = "VMNIC-GUEST-READY"

// initramfsFormat changes whenever the archive layout or /init changes, so
// cached archives of an older layout are not reused.
const initramfsFormat = "vmnic-testguest-2"

const initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo 1 > /proc/sys/kernel/printk
for m in $(cat /etc/modules-load); do
  insmod /lib/modules/$m.ko || echo "vmnic-guest: insmod $m failed"
done
ip link set lo up
hostname vmnic-guest
# Hooks of Config.ExtraFiles (/etc/vmnic-init.d/*), in name order.
for f in /etc/vmnic-init.d/*; do
  [ -x "$f" ] && "$f"
done
echo ` + readyMarker + `
# The console shell: a session of its own with ttyS0 as controlling tty (so
# ^C reaches a stuck command), no echo, no CR before LF, no prompts.
while :; do
  setsid sh -c 'exec </dev/ttyS0 >/dev/ttyS0 2>&1; stty -echo -onlcr; PS1= PS2= exec sh -i'
  echo "vmnic-guest: console shell exited, restarting"
  sleep 1
done
`

// kernelInfo is a kernel image and its module tree.
type kernelInfo struct {
	Image   string // /boot/vmlinuz-<version>
	Version string
	Modules string // /lib/modules/<version>
}

// findKernel picks image (or, when empty, the newest /boot/vmlinuz-* with a
// module tree) and its module directory.
func findKernel(image string) (kernelInfo, error) {
	if image != "" {
		ver := strings.TrimPrefix(filepath.Base(image), "vmlinuz-")
		k := kernelInfo{Image: image, Version: ver, Modules: filepath.Join("/lib/modules", ver)}
		if _, err := os.Stat(image); err != nil {
			return kernelInfo{}, fmt.Errorf("kernel: %w", err)
		}
		return k, nil
	}
	images, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Sort(sort.Reverse(sort.StringSlice(images)))
	for _, img := range images {
		ver := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		mods := filepath.Join("/lib/modules", ver)
		if _, err := os.Stat(filepath.Join(mods, "modules.dep")); err == nil {
			return kernelInfo{Image: img, Version: ver, Modules: mods}, nil
		}
	}
	return kernelInfo{}, errors.New("no /boot/vmlinuz-* with a /lib/modules tree (install linux-image-amd64)")
}

// checkStatic fails unless path is a statically linked ELF executable.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("busybox %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("busybox %s is dynamically linked (install busybox-static)", path)
		}
	}
	return nil
}

// moduleFile is one module to pack: where it is and whether it is built in.
type moduleFile struct {
	Name    string
	Path    string // empty when built in or absent
	Builtin bool
}

// findModules resolves virtioNetModules in the module tree (via modules.dep
// and modules.builtin).
func findModules(modDir string) ([]moduleFile, error) {
	norm := func(p string) string {
		b := filepath.Base(p)
		for _, ext := range []string{".xz", ".zst", ".gz"} {
			b = strings.TrimSuffix(b, ext)
		}
		return strings.ReplaceAll(strings.TrimSuffix(b, ".ko"), "-", "_")
	}
	paths := map[string]string{}
	dep, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("module tree: %w", err)
	}
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		p, _, _ := strings.Cut(sc.Text(), ":")
		paths[norm(p)] = filepath.Join(modDir, p)
	}
	dep.Close()
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" {
				builtin[norm(l)] = true
			}
		}
	}
	var mods []moduleFile
	for _, m := range virtioNetModules {
		mods = append(mods, moduleFile{Name: m, Path: paths[m], Builtin: builtin[m]})
	}
	if last := mods[len(mods)-1]; last.Path == "" && !last.Builtin {
		return nil, fmt.Errorf("kernel in %s has no virtio_net (neither a module nor built in)", modDir)
	}
	for _, m := range shareModules {
		mods = append(mods, moduleFile{Name: m, Path: paths[m], Builtin: builtin[m]})
	}
	return mods, nil
}

// readModule returns the uncompressed module (.ko, .ko.gz, .ko.xz via the
// xz tool, .ko.zst via the zstd tool).
func readModule(path string) ([]byte, error) {
	switch {
	case strings.HasSuffix(path, ".ko"):
		return os.ReadFile(path)
	case strings.HasSuffix(path, ".gz"):
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		return io.ReadAll(zr)
	case strings.HasSuffix(path, ".xz"), strings.HasSuffix(path, ".zst"):
		tool := "xz"
		if strings.HasSuffix(path, ".zst") {
			tool = "zstd"
		}
		var stderr bytes.Buffer
		cmd := exec.Command(tool, "-dc", path)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("decompress %s with %s: %w: %s", path, tool, err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown module file type %s", path)
}

// initramfs returns the path of a cached initramfs for kernel k, building it
// under cacheDir when missing. The cache key covers the busybox binary, the
// module files and /init, so an upgraded package yields a new archive.
func initramfs(cacheDir, busybox string, k kernelInfo) (string, error) {
	if err := checkStatic(busybox); err != nil {
		return "", err
	}
	mods, err := findModules(k.Modules)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n", initramfsFormat, initScript)
	stamp := func(p string) error {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d %d\n", p, st.Size(), st.ModTime().UnixNano())
		return nil
	}
	if err := stamp(busybox); err != nil {
		return "", fmt.Errorf("busybox: %w", err)
	}
	for _, m := range mods {
		if m.Path != "" && !m.Builtin {
			if err := stamp(m.Path); err != nil {
				return "", fmt.Errorf("module %s: %w", m.Name, err)
			}
		}
	}
	out := filepath.Join(cacheDir, fmt.Sprintf("initramfs-%s-%s.cpio", k.Version, hex.EncodeToString(h.Sum(nil))[:12]))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("initramfs cache: %w", err)
	}
	if err := buildInitramfs(out, busybox, mods); err != nil {
		return "", fmt.Errorf("build initramfs: %w", err)
	}
	return out, nil
}

func buildInitramfs(out, busybox string, mods []moduleFile) error {
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".initramfs-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	w := newCPIOWriter(tmp)
	for _, d := range []string{"bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "etc", "etc/vmnic-init.d", "lib", "lib/modules", "mnt"} {
		if err := w.Dir(d); err != nil {
			return err
		}
	}
	// The kernel opens /dev/console for init before devtmpfs is mounted.
	if err := w.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := w.File("bin/busybox", 0o755, bb); err != nil {
		return err
	}
	if err := w.Symlink("bin/sh", "busybox"); err != nil {
		return err
	}
	if err := w.File("init", 0o755, []byte(initScript)); err != nil {
		return err
	}
	var load []string
	for _, m := range mods {
		if m.Builtin || m.Path == "" {
			continue // built in, or not in this kernel at all
		}
		body, err := readModule(m.Path)
		if err != nil {
			return err
		}
		if err := w.File("lib/modules/"+m.Name+".ko", 0o644, body); err != nil {
			return err
		}
		load = append(load, m.Name)
	}
	if err := w.File("etc/modules-load", 0o644, []byte(strings.Join(load, "\n")+"\n")); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}
