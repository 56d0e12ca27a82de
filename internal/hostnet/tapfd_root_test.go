package hostnet

import (
	"errors"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmnic/vmnic/internal/testkit/netfixture"
	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

func fdCount(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestOpenTapQueues(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netfixture.Netns(t, netfixture.Name("vmnict-q"))
	netfixture.In(t, ns, func() error {
		if _, err := CreateTap(TapSpec{Name: "tapsq", QueuePairs: 1, Owner: -1, Group: -1}); err != nil {
			t.Fatal(err)
		}
		if _, err := CreateTap(TapSpec{Name: "tapmq", QueuePairs: 4, Owner: -1, Group: -1}); err != nil {
			t.Fatal(err)
		}
		before := fdCount(t)
		for _, tc := range []struct {
			tap   string
			pairs int
			mq    bool
		}{{"tapsq", 1, false}, {"tapmq", 2, true}, {"tapmq", 4, true}} {
			files, err := OpenTapQueues(tc.tap, tc.pairs)
			if err != nil {
				t.Fatalf("OpenTapQueues(%s, %d): %v", tc.tap, tc.pairs, err)
			}
			if len(files) != tc.pairs {
				t.Errorf("%d files, want %d", len(files), tc.pairs)
			}
			for _, f := range files {
				name, flags, err := TapQueueInfo(f)
				if err != nil || name != tc.tap || flags&unix.IFF_TAP == 0 || flags&unix.IFF_VNET_HDR == 0 ||
					(flags&unix.IFF_MULTI_QUEUE != 0) != tc.mq {
					t.Errorf("queue fd of %s: %q flags %#x err %v", tc.tap, name, flags, err)
				}
				fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
				if err != nil || fl&unix.FD_CLOEXEC == 0 {
					t.Errorf("queue fd not close-on-exec (%#x, %v): it would leak into children", fl, err)
				}
			}
			CloseFiles(files)
		}
		if got := fdCount(t); got != before {
			t.Errorf("%d fds open, %d before: leak", got, before)
		}

		// A single-queue TAP takes one queue: a second holder is refused,
		// and the failed call leaves nothing open.
		held, err := OpenTapQueues("tapsq", 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := OpenTapQueues("tapsq", 1); !errors.Is(err, unix.EBUSY) {
			t.Errorf("second open of a held single-queue TAP = %v, want EBUSY", err)
		}
		CloseFiles(held)
		for _, tc := range []struct {
			tap   string
			pairs int
			want  error
		}{
			{"tapsq", 2, unix.EINVAL}, // multi-queue request on a single-queue TAP
			{"tapmq", 1, unix.EINVAL}, // and the other way round
		} {
			if _, err := OpenTapQueues(tc.tap, tc.pairs); !errors.Is(err, tc.want) {
				t.Errorf("OpenTapQueues(%s, %d) = %v, want %v", tc.tap, tc.pairs, err, tc.want)
			}
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "notatap"}}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"notatap", "missing0", "", "averyveryverylongname"} {
			if _, err := OpenTapQueues(name, 1); err == nil {
				t.Errorf("OpenTapQueues(%q) opened something", name)
			}
		}
		if _, err := netlink.LinkByName("missing0"); err == nil {
			t.Error("OpenTapQueues created a missing TAP")
		}
		for _, pairs := range []int{0, -1, MaxQueuePairs + 1} {
			if _, err := OpenTapQueues("tapmq", pairs); err == nil {
				t.Errorf("OpenTapQueues with %d pairs accepted", pairs)
			}
		}
		if got := fdCount(t); got != before {
			t.Errorf("%d fds open after the failures, %d before: leak", got, before)
		}
		return nil
	})
}
