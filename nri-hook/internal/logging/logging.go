// Package logging is the NRI plugin's log: a slog logger whose destination
// and level can change after start (the configuration arrives only with the
// runtime's Configure request), and a bridge that sends the NRI stub's own
// log lines to it.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
)

// Log is a slog logger with a switchable destination and level.
type Log struct {
	*slog.Logger
	level slog.LevelVar
	out   *switchWriter
}

type switchWriter struct {
	mu   sync.Mutex
	w    io.Writer
	file *os.File
	path string
}

func (s *switchWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// New logs to w (normally stderr) at info level.
func New(w io.Writer) *Log {
	l := &Log{out: &switchWriter{w: w}}
	l.level.Set(slog.LevelInfo)
	l.Logger = slog.New(slog.NewTextHandler(l.out, &slog.HandlerOptions{Level: &l.level}))
	return l
}

// Configure sends the log to file (appending; "" keeps the current
// destination) at the given level.
func (l *Log) Configure(file string, level slog.Level) error {
	l.level.Set(level)
	if file == "" {
		return nil
	}
	l.out.mu.Lock()
	defer l.out.mu.Unlock()
	if l.out.path == file {
		return nil
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open log file: %w", err)
	}
	if l.out.file != nil {
		l.out.file.Close()
	}
	l.out.w, l.out.file, l.out.path = f, f, file
	return nil
}

// NRI adapts the log to the NRI stub's logger interface.
type NRI struct{ L *slog.Logger }

func (n NRI) Debugf(ctx context.Context, format string, args ...interface{}) {
	n.L.DebugContext(ctx, fmt.Sprintf(format, args...), "src", "nri")
}

func (n NRI) Infof(ctx context.Context, format string, args ...interface{}) {
	n.L.InfoContext(ctx, fmt.Sprintf(format, args...), "src", "nri")
}

func (n NRI) Warnf(ctx context.Context, format string, args ...interface{}) {
	n.L.WarnContext(ctx, fmt.Sprintf(format, args...), "src", "nri")
}

func (n NRI) Errorf(ctx context.Context, format string, args ...interface{}) {
	n.L.ErrorContext(ctx, fmt.Sprintf(format, args...), "src", "nri")
}
