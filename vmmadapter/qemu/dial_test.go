package qemu

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vmnic/vmnic/vmmadapter"
)

// TestDialRefusesASymlinkedSocket is issue 16 item 10 for QEMU: the QMP
// socket's directory belongs to the VMM container, which can put a symlink
// to another sandbox's socket where its own was. The adapter must not
// follow it (nor dial anything outside opts.SocketDirs).
func TestDialRefusesASymlinkedSocket(t *testing.T) {
	other := newFakeQMP(t, newSim().handle)
	link := filepath.Join(t.TempDir(), "qmp.sock")
	if err := os.Symlink(other.path, link); err != nil {
		t.Fatal(err)
	}
	a, err := Open(link, vmmadapter.Options{})
	if err == nil {
		a.Close()
	}
	other.mu.Lock()
	conns := other.conns
	other.mu.Unlock()
	if err == nil || conns != 0 {
		t.Fatalf("Open through a symlink: error %v, the other QEMU got %d connections", err, conns)
	}
}
