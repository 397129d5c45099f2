package settings

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ndlb/ndlb/config"
)

// Mode is the kind of listener a setting applies to.
type Mode int

// The modes.
const (
	Both        Mode = iota // either mode
	NDJSON                  // line mode, the default
	Passthrough             // --passthrough
)

func (m Mode) String() string {
	switch m {
	case NDJSON:
		return "NDJSON mode"
	case Passthrough:
		return "--passthrough"
	}
	return "both modes"
}

// Reload is what a config reload does when a setting's value changes.
type Reload int

// The reload rules. The zero value is the safe one: a change replaces the
// listener.
const (
	// Replace starts a new listener instance with the new value on the
	// same socket (clients in its backlog are served by the new one)
	// while the old instance drains.
	Replace Reload = iota
	// LiveTargets applies to the running listener: its static targets and
	// DNS discovery. New targets get connections; removed ones drain.
	LiveTargets
	// LiveBalance switches the running listener's balancing policy.
	LiveBalance
	// LiveChecks restarts the running listener's health checks.
	LiveChecks
	// LiveProcess applies to the whole process at once (the log level).
	LiveProcess
	// Restart is read only at start; a reload that changes it says so in
	// the log and keeps the running value.
	Restart
)

// Live reports whether the rule changes a running listener in place.
func (r Reload) Live() bool { return r == LiveTargets || r == LiveBalance || r == LiveChecks }

func (r Reload) String() string {
	switch r {
	case LiveTargets:
		return "live (targets)"
	case LiveBalance:
		return "live (balancing)"
	case LiveChecks:
		return "live (health checks)"
	case LiveProcess:
		return "live (process)"
	case Restart:
		return "restart"
	}
	return "replace"
}

// Setting is one setting: a flag, its NDLB_* variable and its config file
// key.
type Setting struct {
	Name string
	Kind config.Kind
	// Default is the value when unset: a string, int, bool,
	// time.Duration or nil (no default; a list is empty).
	Default any
	// DefaultText, if set, is shown in --help instead of Default.
	DefaultText string
	Group       string // the --help group
	Usage       string // one line for --help
	Mode        Mode
	// Global settings are process-wide: at the top of a config file,
	// never in a [[listener]] table.
	Global bool
	// CommandLine settings exist only as flags and variables, not in a
	// config file (the file's own path).
	CommandLine bool
	Reload      Reload
	// Fields are the library config fields the setting fills, each as
	// PACKAGE.FIELD, the field dotted as an invalid.Error from that
	// package's Config.Validate names it ("ndjson.Pool.Connections",
	// "health.Interval"), so that a rejected value names its setting
	// without matching text.
	Fields []string
}

// Env is the setting's environment variable.
func (s Setting) Env() string {
	return "NDLB_" + strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
}

// Lookup returns the setting called name.
func Lookup(name string) (Setting, bool) {
	for _, s := range All {
		if s.Name == name {
			return s, true
		}
	}
	return Setting{}, false
}

// ByField returns the setting that fills the library config field f, as
// PACKAGE.FIELD (see Setting.Fields).
func ByField(f string) (Setting, bool) {
	for _, s := range All {
		if slices.Contains(s.Fields, f) {
			return s, true
		}
	}
	return Setting{}, false
}

// RuleOf is the reload rule of the setting called name; an unknown name
// replaces.
func RuleOf(name string) Reload {
	s, _ := Lookup(name)
	return s.Reload
}

// OnlyIn lists the settings of mode m alone: setting one in the other mode
// is a usage error, not a silent no-op.
func OnlyIn(m Mode) []string {
	var out []string
	for _, s := range All {
		if s.Mode == m {
			out = append(out, s.Name)
		}
	}
	return out
}

// Schema is what a config file may hold: every setting but the
// command-line-only ones.
func Schema() config.Schema {
	var out config.Schema
	for _, s := range All {
		if !s.CommandLine {
			out = append(out, config.Key{Name: s.Name, Kind: s.Kind, Global: s.Global})
		}
	}
	return out
}

// Error is a bad value of a setting, or a setting that needs another.
// Setting names it (empty when no one setting is at fault), so that the
// command line and a config file can point at it without reading the
// message.
type Error struct {
	Setting string // "" when no one setting is at fault
	Msg     string // the whole message, naming the setting's flag
	// Err, if set, is the library's error the message was made from
	// (an *invalid.Error from a Config.Validate).
	Err error
}

// Error is Msg.
func (e *Error) Error() string { return e.Msg }

// Unwrap is Err.
func (e *Error) Unwrap() error { return e.Err }

// Errorf returns an *Error about setting.
func Errorf(setting, format string, a ...any) error {
	return &Error{Setting: setting, Msg: fmt.Sprintf(format, a...)}
}
