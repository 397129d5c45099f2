package upstream

import (
	"strings"
	"testing"
)

func TestValidHost(t *testing.T) {
	for host, want := range map[string]bool{
		"10.0.0.5":                       true,
		"::1":                            true,
		"fe80::1%eth0":                   true,
		"recv-1":                         true,
		"recv-1.logs.svc.cluster.local.": true,
		"_syslog._tcp.example.com":       true,
		"localhost":                      true,
		"":                               false,
		".":                              false,
		"recv 1":                         false,
		"recv<1>":                        false,
		"a/b":                            false,
		"-recv":                          false,
		"recv-":                          false,
		"a..b":                           false,
		"ex\x00ample":                    false,
		"exämple.com":                    false,
		strings.Repeat("a", 64):          false,
		strings.Repeat("a.", 127) + "a":  false,
		strings.Repeat("a", 63):          true,
	} {
		if got := ValidHost(host); got != want {
			t.Errorf("ValidHost(%q) = %v, want %v", host, got, want)
		}
	}
}
