package setup

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/supervisor"
)

// Source is one listener, or the process-wide settings, as configured: its
// values, and where in the config file they came from, so that a bad value
// is reported at its line.
type Source struct {
	Name string
	File *config.File   // nil: flags only
	Sec  config.Section // its table in File (the top for the process)
	// Values are its settings: the flags, or the file's under them.
	Values Values
	// Flags are the command line's and NDLB_* variables' settings, which
	// take the place of the file's (nil: flags only).
	Flags Values
	// Args are the settings as set (name: values), for a reload to
	// compare.
	Args map[string][]string
}

// FlagsOnly is the process and the one listener, called name, that flags
// describe without a config file.
func FlagsOnly(flags Values, name string) (proc *Source, listeners []*Source) {
	return &Source{Values: flags}, []*Source{{Name: name, Values: flags}}
}

// Load reads the config file at path; the settings flags set (the command
// line, NDLB_* variables) take the place of the file's (nil: the file
// alone). Its errors, as
// those of Spec and the Source methods, are one line for the user, naming
// the FILE:LINE or the flag.
func Load(path string, flags Values) (proc *Source, listeners []*Source, err error) {
	f, err := config.Load(path, settings.Schema())
	var ce *config.Error
	if errors.As(err, &ce) {
		return nil, nil, err
	} else if err != nil {
		return nil, nil, fmt.Errorf("cannot read the config file: %w", err)
	}
	if len(f.Listeners) > 1 {
		for _, s := range settings.All {
			if !s.Global && !s.CommandLine && flags != nil && flags.IsSet(s.Name) {
				return nil, nil, fmt.Errorf("--%s (or %s) is set, but %s has %d listeners: set it in the file", s.Name, s.Env(), path, len(f.Listeners))
			}
		}
	}
	for _, sec := range f.Listeners {
		v := Layered{Flags: flags, File: valuesOf(sec)}
		listeners = append(listeners, &Source{Name: sec.Name, File: f, Sec: sec, Values: v, Flags: flags, Args: v.Set()})
	}
	return &Source{File: f, Sec: f.Global, Values: Layered{Flags: flags, File: valuesOf(f.Global)}, Flags: flags}, listeners, nil
}

// valuesOf is a section's typed values by key.
func valuesOf(sec config.Section) map[string]any {
	out := map[string]any{}
	for _, v := range sec.Values {
		out[v.Key] = v.V
	}
	return out
}

// Process checks the process-wide settings of s.
func (s *Source) Process() (Process, error) {
	p, err := ProcessOf(s.Values)
	return p, s.Place(err)
}

// Listener checks the source's settings and turns them into the
// supervisor's Listener; log is the process's logger.
func (s *Source) Listener(log *slog.Logger) (supervisor.Listener, error) {
	if s.File != nil {
		log = log.With("listener", s.Name)
	}
	l, err := Listener(s.Name, s.Values, s.Args, log)
	return l, s.Place(err)
}

// Place turns a *settings.Error into the line the user reads: at the
// setting's line in the file (or the table's), or, for a value a flag or
// variable set, naming them. Other errors are returned as they are.
func (s *Source) Place(err error) error {
	var se *settings.Error
	if !errors.As(err, &se) {
		return err
	}
	if s.File == nil {
		return errors.New(se.Msg)
	}
	line, msg := s.Sec.Line, se.Msg
	if se.Setting != "" {
		line = s.Sec.LineOf(se.Setting)
		if s.Flags != nil && s.Flags.IsSet(se.Setting) {
			// Set by a flag or variable, over the file: no line of it.
			line, msg = 0, fmt.Sprintf("%s (set by --%s or %s)", msg, se.Setting, settings.Setting{Name: se.Setting}.Env())
		}
	}
	return &config.Error{Path: s.File.Path, Line: line, Listener: s.Sec.Name, Msg: msg, Err: se}
}

// Spec turns the process-wide settings and the listeners' sources into a
// checked Spec; log is the process's logger.
func Spec(proc *Source, listeners []*Source, log *slog.Logger) (supervisor.Spec, error) {
	p, err := proc.Process()
	if err != nil {
		return supervisor.Spec{}, err
	}
	spec := supervisor.Spec{LogLevel: p.LogLevel, Process: map[string][]string{}}
	for _, s := range settings.All {
		if s.Global {
			spec.Process[s.Name] = []string{Text(proc.Values, s)}
		}
	}
	for _, in := range listeners {
		l, err := in.Listener(log)
		if err != nil {
			return supervisor.Spec{}, err
		}
		// The admin API is TCP: a UDP listener may share its port.
		if p.Admin.Addr != "" && l.Mode.Network() != "udp" && supervisor.SameAddr(p.Admin.Addr, l.Addr) {
			return supervisor.Spec{}, proc.Place(settings.Errorf("admin", "invalid value %q for --admin: it is also the address of listener %q", p.Admin.Addr, l.Name))
		}
		spec.Listeners = append(spec.Listeners, l)
	}
	// Two listeners on one address: refused here, with the second one's
	// line, at start, in check-config and on a reload alike.
	if err := spec.Validate(); err != nil {
		msg, _ := Explain(err, listeners)
		return supervisor.Spec{}, errors.New(msg)
	}
	return spec, nil
}

// Explain is the line the user reads for an error of the supervisor
// (supervisor.New, Check, Spec.Validate), placed at its listener's line;
// listen is true when a socket could not be opened (a runtime failure, not
// a bad setting).
func Explain(err error, listeners []*Source) (msg string, listen bool) {
	var se *supervisor.Error
	if !errors.As(err, &se) {
		return err.Error(), false
	}
	for _, in := range listeners {
		if in.Name != se.Listener {
			continue
		}
		if se.Listen {
			if in.File == nil {
				return se.Err.Error(), true
			}
			return (&config.Error{Path: in.File.Path, Line: in.Sec.LineOf("port"), Listener: in.Sec.Name, Msg: se.Err.Error()}).Error(), true
		}
		setting := ""
		if errors.Is(se.Err, supervisor.ErrSameAddr) {
			setting = "port"
		}
		return in.Place(settings.Errorf(setting, "%v", se.Err)).Error(), false
	}
	return err.Error(), se.Listen
}
