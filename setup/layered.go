package setup

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/settings"
)

// Layered are a listener's (or the process's) settings: those Flags set
// (flags and NDLB_* variables), else the config file's, else the defaults.
type Layered struct {
	Flags Values         // nil: the file alone (check-config)
	File  map[string]any // typed as config.Value.V
}

// get returns the value of name and whether flags or the file set it.
func (l Layered) get(name string) (any, bool) {
	if l.Flags != nil && l.Flags.IsSet(name) {
		s, _ := settings.Lookup(name)
		switch s.Kind {
		case config.Int:
			return l.Flags.Int(name), true
		case config.Bool:
			return l.Flags.Bool(name), true
		case config.Duration:
			return l.Flags.Duration(name), true
		case config.Strings:
			return l.Flags.StringSlice(name), true
		}
		return l.Flags.String(name), true
	}
	if v, ok := l.File[name]; ok {
		return v, true
	}
	s, _ := settings.Lookup(name)
	return s.Default, false
}

func (l Layered) String(n string) string { v, _ := l.get(n); s, _ := v.(string); return s }
func (l Layered) Int(n string) int       { v, _ := l.get(n); i, _ := v.(int); return i }
func (l Layered) Bool(n string) bool     { v, _ := l.get(n); b, _ := v.(bool); return b }
func (l Layered) Duration(n string) time.Duration {
	v, _ := l.get(n)
	d, _ := v.(time.Duration)
	return d
}
func (l Layered) StringSlice(n string) []string { v, _ := l.get(n); s, _ := v.([]string); return s }
func (l Layered) IsSet(n string) bool           { _, ok := l.get(n); return ok }

// Set renders every setting that is set, for a reload to compare.
func (l Layered) Set() map[string][]string {
	out := map[string][]string{}
	for _, s := range settings.All {
		v, ok := l.get(s.Name)
		if !ok {
			continue
		}
		if list, isList := v.([]string); isList {
			out[s.Name] = list
		} else {
			out[s.Name] = []string{fmt.Sprint(v)}
		}
	}
	return out
}

// Text is the value of setting s in v, as text.
func Text(v Values, s settings.Setting) string {
	switch s.Kind {
	case config.Int:
		return strconv.Itoa(v.Int(s.Name))
	case config.Bool:
		return strconv.FormatBool(v.Bool(s.Name))
	case config.Duration:
		return v.Duration(s.Name).String()
	case config.Strings:
		return strings.Join(v.StringSlice(s.Name), ",")
	}
	return v.String(s.Name)
}
