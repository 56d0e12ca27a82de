package netsetup

import (
	"encoding/json"
	"errors"
)

// MirrorGuestConfigKey is the key of the record's live copy (MirrorFile)
// that holds the guest config document (GuestConfig, the json format of
// `vmnicctl guest-config`): an agent in the guest that watches the copy
// applies a hot-added NIC from it. The record in the state dir does not
// carry it.
const MirrorGuestConfigKey = "guest_config"

// mirrored is the record's live copy: the record plus its guest config.
type mirrored struct {
	*NetSetup
	GuestConfig *GuestConfig `json:"guest_config"`
}

// mirrorContent is what the live copy of rec holds: the record (data, as
// saved) and, under MirrorGuestConfigKey, the rendered guest config. For a
// record without a runtime dir (no copy) it is data unchanged.
func mirrorContent(rec *NetSetup, data []byte) []byte {
	if rec.MirrorPath() == "" {
		return data
	}
	out, err := json.MarshalIndent(mirrored{NetSetup: rec, GuestConfig: rec.GuestConfig()}, "", "  ")
	if err != nil {
		return data // cannot happen for these types; the copy is the record then
	}
	return append(out, '\n')
}

// ReadMirrorGuestConfig parses the guest config out of the record's live
// copy (the contents of MirrorFile).
func ReadMirrorGuestConfig(data []byte) (*GuestConfig, error) {
	var m struct {
		GuestConfig *GuestConfig `json:"guest_config"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	if m.GuestConfig == nil {
		return nil, errNoGuestConfig
	}
	return m.GuestConfig, nil
}

var errNoGuestConfig = errors.New("the record copy has no " + MirrorGuestConfigKey)
