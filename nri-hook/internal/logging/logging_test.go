package logging

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigure(t *testing.T) {
	var stderr bytes.Buffer
	l := New(&stderr)
	l.Debug("hidden at info")
	l.Info("before")
	file := filepath.Join(t.TempDir(), "nri.log")
	if err := l.Configure(file, slog.LevelDebug); err != nil {
		t.Fatal(err)
	}
	l.Debug("after", "k", "v")
	NRI{L: l.Logger}.Warnf(context.Background(), "stub says %d", 42)
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if s := stderr.String(); !strings.Contains(s, "before") || strings.Contains(s, "hidden") || strings.Contains(s, "after") {
		t.Errorf("stderr: %q", s)
	}
	if s := string(data); !strings.Contains(s, "msg=after k=v") || !strings.Contains(s, `msg="stub says 42" src=nri`) {
		t.Errorf("log file: %q", s)
	}
	if err := l.Configure(filepath.Join(t.TempDir(), "no", "such", "dir", "x.log"), slog.LevelInfo); err == nil {
		t.Error("unwritable log file accepted")
	}
}
