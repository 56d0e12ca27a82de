package qemuguest

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// File is a file added to the guest's initramfs (Config.ExtraFiles).
type File struct {
	// Path in the guest, e.g. "bin/agent" or "etc/vmnic-init.d/50-agent"
	// (an executable there is run by /init before the console starts, in
	// name order; it must not block).
	Path string
	Mode uint32 // permission bits; 0 = 0644
	Data []byte
}

// withExtraFiles returns the initrd to boot: base when there are no extra
// files, else a copy of base in workDir followed by a second cpio archive
// of the files (the kernel unpacks concatenated archives in order).
func withExtraFiles(base, workDir string, files []File) (string, error) {
	if len(files) == 0 {
		return base, nil
	}
	out := filepath.Join(workDir, "initrd.cpio")
	f, err := os.Create(out)
	if err != nil {
		return "", fmt.Errorf("initrd with extra files: %w", err)
	}
	defer f.Close()
	in, err := os.Open(base)
	if err != nil {
		return "", fmt.Errorf("initrd with extra files: %w", err)
	}
	n, err := io.Copy(f, in)
	in.Close()
	if err != nil {
		return "", fmt.Errorf("initrd with extra files: %w", err)
	}
	if r := n % 4; r != 0 { // the next archive starts 4-byte aligned
		if _, err := f.Write(make([]byte, 4-r)); err != nil {
			return "", fmt.Errorf("initrd with extra files: %w", err)
		}
	}
	w := newCPIOWriter(f)
	dirs := map[string]bool{}
	for _, x := range files {
		p := strings.TrimPrefix(filepath.Clean("/"+x.Path), "/")
		if p == "" || p == "init" {
			return "", fmt.Errorf("initrd with extra files: path %q is not allowed", x.Path)
		}
		for d := filepath.Dir(p); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	sorted := make([]string, 0, len(dirs))
	for d := range dirs {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted) // a parent sorts before its children
	for _, d := range sorted {
		if err := w.Dir(d); err != nil {
			return "", err
		}
	}
	for _, x := range files {
		mode := x.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := w.File(strings.TrimPrefix(filepath.Clean("/"+x.Path), "/"), mode, x.Data); err != nil {
			return "", err
		}
	}
	if err := w.Close(); err != nil {
		return "", err
	}
	return out, f.Close()
}
