package qemuguest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync"
)

const (
	tailSize = 16 << 10 // console bytes kept for diagnostics
	maxBuf   = 4 << 20  // unconsumed console bytes kept for Run
)

// console collects the guest's serial output: a buffer that Run and the
// boot wait consume, a tail for error messages, and a log file.
type console struct {
	mu     sync.Mutex
	buf    []byte
	tail   []byte
	change chan struct{} // closed (and replaced) on new output or EOF
	eof    bool
	log    *os.File
	tee    io.Writer // optional live copy
}

func newConsole(log *os.File, tee io.Writer) *console {
	return &console{change: make(chan struct{}), log: log, tee: tee}
}

// readFrom copies QEMU's stdout (the serial console) until EOF.
func (c *console) readFrom(r io.Reader) {
	b := make([]byte, 4096)
	for {
		n, err := r.Read(b)
		if n > 0 {
			data := bytes.ReplaceAll(b[:n], []byte{'\r'}, nil)
			c.mu.Lock()
			c.buf = append(c.buf, data...)
			if len(c.buf) > maxBuf {
				c.buf = append([]byte(nil), c.buf[len(c.buf)-maxBuf/2:]...)
			}
			c.tail = append(c.tail, data...)
			if len(c.tail) > 2*tailSize {
				c.tail = append([]byte(nil), c.tail[len(c.tail)-tailSize:]...)
			}
			if c.log != nil {
				c.log.Write(data)
			}
			if c.tee != nil {
				c.tee.Write(data)
			}
			close(c.change)
			c.change = make(chan struct{})
			c.mu.Unlock()
		}
		if err != nil {
			c.mu.Lock()
			c.eof = true
			close(c.change)
			c.change = make(chan struct{})
			c.mu.Unlock()
			return
		}
	}
}

var errConsoleClosed = errors.New("guest console closed (QEMU exited)")

// wait calls match on the unconsumed output whenever it grows, until match
// returns ok (then the first n bytes are consumed), ctx ends, QEMU exits or
// the console closes.
func (c *console) wait(ctx context.Context, exited <-chan struct{}, match func([]byte) (n int, ok bool)) error {
	for {
		c.mu.Lock()
		n, ok := match(c.buf)
		if ok {
			c.buf = append(c.buf[:0], c.buf[n:]...)
			c.mu.Unlock()
			return nil
		}
		eof, change := c.eof, c.change
		c.mu.Unlock()
		if eof {
			return errConsoleClosed
		}
		select {
		case <-change:
		case <-exited:
			// Let the reader drain what QEMU wrote last, then look once more.
			exited = nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Tail returns the last console output.
func (c *console) Tail() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.tail
	if len(t) > tailSize {
		t = t[len(t)-tailSize:]
	}
	return string(t)
}

func (c *console) closeLog() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.log != nil {
		c.log.Close()
		c.log = nil
	}
}
