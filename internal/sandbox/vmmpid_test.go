package sandbox

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVMMHostPID: a VMM that reports the pid vmnic sees keeps it; one whose
// reported pid is not the socket's peer, in any of the peer's pid
// namespaces, keeps the reported pid and gets an error (the fd handoff's
// peer check then refuses it). The pid-namespace case (a VMM container
// reporting pid 1) runs in the containerd e2e suite (TestFdHandoffUnprivilegedVMM).
func TestVMMHostPID(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vmm.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	self := os.Getpid()
	if got, err := vmmHostPID(sock, self); err != nil || got != self {
		t.Errorf("vmmHostPID(own pid %d) = %d, %v; want it unchanged", self, got, err)
	}
	if got, err := vmmHostPID(sock, 0); err != nil || got != 0 {
		t.Errorf("vmmHostPID(0) = %d, %v; want 0 (no pid reported)", got, err)
	}
	other := self + 100000
	got, err := vmmHostPID(sock, other)
	if err == nil || got != other || !strings.Contains(err.Error(), "not the pid") {
		t.Errorf("vmmHostPID(%d, a pid the peer is not) = %d, %v; want it unchanged with an error", other, got, err)
	}
	if _, err := vmmHostPID(filepath.Join(t.TempDir(), "none.sock"), 7); err == nil {
		t.Errorf("vmmHostPID on a missing socket: no error")
	}
}
