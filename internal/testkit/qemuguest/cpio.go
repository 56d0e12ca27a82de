package qemuguest

import (
	"bufio"
	"fmt"
	"io"
	"strings"
)

// File-type bits of a cpio mode (as in stat(2)).
const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

// cpioWriter writes a "newc" (SVR4, no CRC) cpio archive, the format the
// kernel unpacks as an initramfs. Timestamps and owners are zero, so the
// same input gives the same archive.
type cpioWriter struct {
	w   *bufio.Writer
	ino uint32
	n   int64 // bytes written, for padding
}

func newCPIOWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: bufio.NewWriter(w), ino: 1} }

func (c *cpioWriter) write(b []byte) error {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

// entry writes one header, name and body. name has no leading "/".
func (c *cpioWriter) entry(name string, mode uint32, body []byte, rdevMajor, rdevMinor uint32) error {
	name = strings.TrimPrefix(name, "/")
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(body), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.ino++
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	if err := c.pad(); err != nil {
		return err
	}
	if err := c.write(body); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) Dir(name string) error { return c.entry(name, modeDir|0o755, nil, 0, 0) }

func (c *cpioWriter) File(name string, perm uint32, body []byte) error {
	return c.entry(name, modeRegular|perm, body, 0, 0)
}

func (c *cpioWriter) Symlink(name, target string) error {
	return c.entry(name, modeSymlink|0o777, []byte(target), 0, 0)
}

func (c *cpioWriter) CharDev(name string, perm, major, minor uint32) error {
	return c.entry(name, modeCharDev|perm, nil, major, minor)
}

// Close writes the trailer and flushes.
func (c *cpioWriter) Close() error {
	if err := c.entry("TRAILER!!!", 0, nil, 0, 0); err != nil {
		return err
	}
	return c.w.Flush()
}
