package tapguest

import (
	"os"
	"strings"
	"testing"

	"github.com/vmnic/vmnic/internal/testkit/testenv"
)

// TestGuestOnHandedFd: a guest on a TAP fd someone else opened (what a VMM
// is handed with fd handoff) learns the TAP from the fd and answers the
// host's pings through the tc redirect; the handed fd stays the caller's.
// A fd that is not a TAP is refused.
func TestGuestOnHandedFd(t *testing.T) {
	testenv.RequireRoot(t)
	f := newFixture(t, 16, 1)
	tap, err := OpenTap(TapOptions{NetnsPath: f.nsPath, Name: f.tap})
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	var got *Tap
	g, err := Open(Config{Tap: f.tap, MAC: f.guestMAC, IP: f.guestIP, Gateway: f.gateway,
		Opener: func() (*Tap, error) { got, err = TapFromFile(tap.f); return got, err }})
	if err != nil {
		t.Fatalf("guest on the handed fd: %v", err)
	}
	defer g.Close()
	if got.Name() != f.tap || got.MultiQueue() || got.VnetHdrLen() != VnetHdrLen {
		t.Errorf("TapFromFile learned %q multiqueue=%v hdr=%d, want %s single-queue hdr %d", got.Name(), got.MultiQueue(), got.VnetHdrLen(), f.tap, VnetHdrLen)
	}
	hostPing(t, f.guestIP.Addr())
	if st := g.Stats(); st.EchoAnswered < 3 {
		t.Fatalf("after the host's ping: %+v, want ≥3 echo requests answered", st)
	}
	g.Close()
	// The caller's fd is still open and still the TAP's.
	if _, err := TapFromFile(tap.f); err != nil {
		t.Errorf("the handed fd after the guest closed: %v", err)
	}

	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if _, err := TapFromFile(null); err == nil || !strings.Contains(err.Error(), "TUNGETIFF") {
		t.Errorf("TapFromFile(/dev/null) = %v, want a TUNGETIFF error", err)
	}
}
