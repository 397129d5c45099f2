package main

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/settings"
)

// decimal is a whole number as people write it: no leading zero, no
// base prefix, no underscores.
var decimal = regexp.MustCompile(`^[+-]?(0|[1-9][0-9]*)$`)

// checkWholeNumbers refuses whole-number settings, on the command line
// (args, without the program's name) or in NDLB_* variables, that are
// not plain decimal. The flag package reads them in any base Go knows:
// --port 023420 would listen on 10000 (octal), and 0x10 would be 16.
func checkWholeNumbers(args []string, env func(string) (string, bool)) error {
	bad := func(v, where string) error {
		return fmt.Errorf("invalid value for %s: %q; write it in decimal, without a leading zero or a base prefix (it would not be read as decimal)", where, v)
	}
	isInt := func(name string) bool {
		s, ok := settings.Lookup(name)
		return ok && s.Kind == config.Int
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, v, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !isInt(name) {
			continue
		}
		if !hasValue {
			if i+1 >= len(args) {
				continue
			}
			i++
			v = args[i]
		}
		if v != "" && !decimal.MatchString(v) && looksNumeric(v) {
			return bad(v, "--"+name)
		}
	}
	for _, s := range settings.All {
		if s.Kind != config.Int {
			continue
		}
		if v, ok := env(s.Env()); ok && v != "" && !decimal.MatchString(v) && looksNumeric(v) {
			return bad(v, s.Env())
		}
	}
	return nil
}

// looksNumeric reports whether v starts like a number: other text is left
// for the flag package to refuse as it does.
func looksNumeric(v string) bool {
	v = strings.TrimLeft(v, "+-")
	return v != "" && v[0] >= '0' && v[0] <= '9'
}
