package guestconfig

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/guestconfig")

var goldenDir = filepath.Join("..", "..", "testdata", "guestconfig")

func ext(f Format) string {
	switch f {
	case CloudInit:
		return "cloud-init.yaml"
	case Networkd:
		return "networkd"
	case Kernel:
		return "kernel"
	}
	return "json"
}

// TestGolden renders every case in every format and compares the bytes,
// and what the format reports lost, with testdata/guestconfig (go test
// -update rewrites them). Rendering twice must give the same bytes.
func TestGolden(t *testing.T) {
	for _, c := range goldenCases() {
		for _, f := range Formats() {
			t.Run(c.name+"/"+string(f), func(t *testing.T) {
				out, err := Render(c.rec, f)
				if err != nil {
					t.Fatalf("Render: %v", err)
				}
				again, err := Render(c.rec, f)
				if err != nil || !bytes.Equal(out.Bytes(), again.Bytes()) {
					t.Fatalf("rendering twice differs (%v)", err)
				}
				got := out.Bytes()
				lost := strings.Join(out.Lost, "\n")
				if lost != "" {
					lost += "\n"
				}
				base := filepath.Join(goldenDir, c.name+"."+ext(f))
				if *update {
					writeGolden(t, base, got)
					if lost != "" {
						writeGolden(t, base+".lost", []byte(lost))
					} else {
						os.Remove(base + ".lost")
					}
					return
				}
				compareGolden(t, base, got)
				wantLost, err := os.ReadFile(base + ".lost")
				if err != nil && !os.IsNotExist(err) {
					t.Fatal(err)
				}
				if string(wantLost) != lost {
					t.Errorf("lost:\n%s\nwant (%s.lost):\n%s", lost, base, wantLost)
				}
			})
		}
	}
}

func writeGolden(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("golden file: %v (run go test -update to write it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}
