package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// NICID is the VMM device id vmnic gives the NIC on ifname: the ifname when
// it matches [A-Za-z0-9_]+ (valid for every VMM), else a sanitised form with
// a hash suffix (nicIDHash).
func NICID(ifname string) string {
	ok := ifname != ""
	var b strings.Builder
	for i := 0; i < len(ifname); i++ {
		c := ifname[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
			ok = false
		}
	}
	if ok {
		return ifname
	}
	return b.String() + "_" + nicIDHash(ifname)
}

// nicIDHash tells apart the ifnames NICID sanitises to the same form: 8 hex
// digits, the first 4 bytes of SHA-256("/" + ifname). (These are the ids of
// NICs already recorded: they were first made as a slice of the bridge
// backend's host TAP name for an empty sandbox id, which hashes
// sandboxID+"/"+ifname; the function keeps them.)
func nicIDHash(ifname string) string {
	sum := sha256.Sum256([]byte("/" + ifname))
	return hex.EncodeToString(sum[:4])
}
