package sandbox

import (
	"errors"

	"github.com/vmnic/vmnic/internal/netns"
	"github.com/vmnic/vmnic/netsetup"
)

// inRecordedNetns runs fn in the netns of rec, entered only when the
// namespace at the recorded path is still the recorded one (nsfs dev:ino,
// rec.NetnsID; a record without one is entered as it is). When another
// namespace is there now (the recorded one was deleted and a new one made
// at its path, for another VM), nothing in it is touched and the log says
// so; the error is then one netns.IsGone accepts: the recorded namespace,
// and everything vmnic made in it, can no longer be reached by its path.
func (m *Manager) inRecordedNetns(rec *netsetup.NetSetup, fn func() error) error {
	path := rec.ResolvedNetnsPath()
	err := netns.DoExpected(path, rec.NetnsID, fn)
	if errors.Is(err, netns.ErrReplaced) {
		m.log().Warn("the netns at the recorded path is not the recorded one: leaving it alone",
			"sandbox", rec.SandboxID, "netns", path, "error", err)
	}
	return err
}

// removeOwnedNetns unmounts and removes the owned netns of rec, unless the
// path holds another namespace than the recorded one now: that one is not
// vmnic's to remove (logged).
func (m *Manager) removeOwnedNetns(rec *netsetup.NetSetup) error {
	path := rec.ResolvedNetnsPath()
	if rec.NetnsID != nil {
		if cur, err := netsetup.IdentifyNetns(path); err == nil && cur != *rec.NetnsID {
			m.log().Warn("the owned netns path holds another namespace than the recorded one: not removing it",
				"sandbox", rec.SandboxID, "netns", path, "recorded", rec.NetnsID.String(), "found", cur.String())
			return nil
		}
	}
	return netns.Remove(path)
}
