// Package hostnet makes the host-side pieces of a vmnic NIC with netlink and
// ioctls (never by running ip or tc): the TAP, the tc redirect between a
// veth and its TAP, the TAP's bridge port, and the bridge backend's FORWARD
// ACCEPT rules (go-iptables). Functions that act on links act in the network
// namespace of the calling thread: callers enter the sandbox netns first.
package hostnet

import (
	"crypto/sha256"
	"encoding/hex"
)

// MaxIfNameLen is IFNAMSIZ-1.
const MaxIfNameLen = 15

// TapNameInNetns is the TAP name for the interface ifname in the sandbox
// netns: "tap"+ifname when that fits and ifname is plain ([A-Za-z0-9_.-]),
// else "tap" and 12 hex digits of a hash of ifname. It is unique within the
// netns as ifnames are. An ifname Linux allows but a VMM's option syntax
// does not (',', '=', unicode…) never reaches a TAP name, so no NIC field
// can smuggle an option into a VMM command line.
func TapNameInNetns(ifname string) string {
	if n := "tap" + ifname; len(n) <= MaxIfNameLen && plainName(ifname) {
		return n
	}
	return "tap" + hash12(ifname)
}

func plainName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// TapNameOnHost is the TAP name of the bridge backend, where TAPs of all
// sandboxes share the host netns: "vmt" and 12 hex digits of a hash of the
// sandbox id and the ifname.
func TapNameOnHost(sandboxID, ifname string) string {
	return "vmt" + hash12(sandboxID+"/"+ifname)
}

func hash12(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}
