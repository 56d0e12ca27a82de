// Command mkimage packs local files into a single-layer OCI image layout tar
// for `ctr images import`.
//
//	mkimage -name localhost/vmnic-e2e/pause:1 -o pause.tar -entrypoint /pause -file /pause=./pause
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/vmnic/vmnic/e2e/internal/ociimage"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var files, entrypoint listFlag
	name := flag.String("name", "", "image reference, e.g. localhost/vmnic-e2e/pause:1")
	out := flag.String("o", "", "output tar")
	flag.Var(&files, "file", "DEST=SRC: put host file SRC at DEST in the image (repeatable)")
	flag.Var(&entrypoint, "entrypoint", "entrypoint argument (repeatable)")
	flag.Parse()
	if err := run(*name, *out, files, entrypoint); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(name, out string, files, entrypoint []string) error {
	if name == "" || out == "" {
		return fmt.Errorf("-name and -o are required")
	}
	img := ociimage.Image{Name: name, Entrypoint: entrypoint}
	for _, f := range files {
		dst, src, ok := strings.Cut(f, "=")
		if !ok {
			return fmt.Errorf("-file %q: want DEST=SRC", f)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		st, err := os.Stat(src)
		if err != nil {
			return err
		}
		img.Files = append(img.Files, ociimage.File{Path: dst, Mode: int64(st.Mode().Perm()), Data: data})
	}
	return ociimage.WriteFile(out, img)
}
