package sockdial

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/vmnic/vmnic/vmmadapter"
)

func listen(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
}

func TestDial(t *testing.T) {
	base := t.TempDir()
	allowed, other := filepath.Join(base, "allowed"), filepath.Join(base, "other")
	for _, d := range []string{allowed, other} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(allowed, "api.sock")
	listen(t, sock)
	otherSock := filepath.Join(other, "api.sock")
	listen(t, otherSock)
	os.Symlink(otherSock, filepath.Join(allowed, "link.sock"))
	os.Symlink(other, filepath.Join(allowed, "sub"))
	os.WriteFile(filepath.Join(allowed, "file"), nil, 0o600)

	me, notMe := uint32(os.Geteuid()), uint32(os.Geteuid()+4242)
	for _, tc := range []struct {
		name, path string
		dirs       []string
		refused    bool
		errno      error // when not refused
		owner      *uint32
	}{
		{name: "the socket", path: sock, dirs: []string{allowed}},
		{name: "no confinement", path: otherSock},
		{name: "a symlink to another socket", path: filepath.Join(allowed, "link.sock"), dirs: []string{allowed}, refused: true},
		{name: "a symlink, unconfined", path: filepath.Join(allowed, "link.sock"), refused: true},
		{name: "through a symlinked dir out of the allowed ones", path: filepath.Join(allowed, "sub", "api.sock"), dirs: []string{allowed}, refused: true},
		{name: "outside the allowed dirs", path: otherSock, dirs: []string{allowed}, refused: true},
		{name: "owned as expected", path: sock, owner: &me},
		{name: "another owner", path: sock, owner: &notMe, refused: true},
		{name: "missing", path: filepath.Join(allowed, "none.sock"), dirs: []string{allowed}, errno: syscall.ENOENT},
		{name: "not a socket", path: filepath.Join(allowed, "file"), dirs: []string{allowed}, errno: syscall.ENOTSOCK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Dial(context.Background(), tc.path, vmmadapter.Options{SocketDirs: tc.dirs, SocketOwner: tc.owner})
			if err == nil {
				defer c.Close()
				b := make([]byte, 2)
				c.Read(b)
				if tc.refused || tc.errno != nil || string(b) != "ok" {
					t.Fatalf("dialled %s (read %q), want an error", tc.path, b)
				}
				return
			}
			var oe *net.OpError
			if !errors.As(err, &oe) || oe.Op != "dial" {
				t.Errorf("error %v is not a dial *net.OpError", err)
			}
			switch {
			case tc.refused && (!errors.Is(err, ErrRefused) || !errors.Is(err, vmmadapter.ErrUnavailable)):
				t.Errorf("error %v, want ErrRefused and ErrUnavailable", err)
			case !tc.refused && tc.errno == nil:
				t.Errorf("Dial: %v", err)
			case tc.errno != nil && !errors.Is(err, tc.errno):
				t.Errorf("error %v, want %v", err, tc.errno)
			}
		})
	}
}
