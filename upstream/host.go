package upstream

import (
	"net/netip"
	"strings"
)

// ValidHost reports whether host, the HOST of a target's HOST:PORT, could
// be dialled: an IP address (an IPv6 one may carry a zone, fe80::1%eth0)
// or a DNS name of at most 253 bytes whose labels are 1..63 letters,
// digits, hyphens and underscores (SRV and some internal names use
// underscores), a hyphen neither first nor last. A name with a space, a
// slash or any other byte was accepted before and failed only when dialled.
func ValidHost(host string) bool {
	if _, err := netip.ParseAddr(host); err == nil {
		return true
	}
	name := strings.TrimSuffix(host, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
