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
// netns: "tap"+ifname when that fits, else "tap" and 12 hex digits of a hash
// of ifname. It is unique within the netns as ifnames are.
func TapNameInNetns(ifname string) string {
	if n := "tap" + ifname; len(n) <= MaxIfNameLen {
		return n
	}
	return "tap" + hash12(ifname)
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
