package vmmsim

import (
	"fmt"
	"net/http"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// TestCHNetFiles: NetFiles hands out duplicates of the TAP fds a NIC came
// with (still queues of that TAP, valid after the caller's copy closed), none
// for a NIC unknown or removed.
func TestCHNetFiles(t *testing.T) {
	testenv.RequireRoot(t)
	name := fmt.Sprintf("vmsimf%d", os.Getpid()%100000)
	tap := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP, Queues: 1,
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE}
	if err := netlink.LinkAdd(tap); err != nil {
		t.Fatalf("add tap: %v", err)
	}
	t.Cleanup(func() { netlink.LinkDel(tap) })
	files := tap.Fds // the queue netlink attached: what vmnic hands over
	s := NewCH(t, CHConfig{})
	status, body := rawWithFds(t, s.Socket(), http.MethodPut, "/api/v1/vm.add-net", `{"id":"n1","num_queues":2}`, files)
	for _, f := range files {
		f.Close()
	}
	if status != http.StatusOK {
		t.Fatalf("vm.add-net with the TAP fd = %d %s", status, body)
	}
	dups, err := s.NetFiles("n1")
	if err != nil || len(dups) != 1 {
		t.Fatalf("NetFiles(n1) = %v, %v; want one fd", dups, err)
	}
	defer dups[0].Close()
	ifr, _ := unix.NewIfreq("")
	if err := unix.IoctlIfreq(int(dups[0].Fd()), unix.TUNGETIFF, ifr); err != nil || ifr.Name() != name {
		t.Errorf("TUNGETIFF on the duplicate: %q %v, want %s", ifr.Name(), err, name)
	}
	if got, err := s.NetFiles("nosuch"); err != nil || len(got) != 0 {
		t.Errorf("NetFiles(nosuch) = %v, %v; want none", got, err)
	}
	if status, body, err := raw(t, s.Socket(), http.MethodPut, "/api/v1/vm.remove-device", `{"id":"n1"}`); err != nil || status/100 != 2 {
		t.Fatalf("vm.remove-device = %d %s %v", status, body, err)
	}
	if got, err := s.NetFiles("n1"); err != nil || len(got) != 0 {
		t.Errorf("NetFiles(n1) after remove-device = %v, %v; want none", got, err)
	}
}
