package main

import (
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/setup"
	"github.com/ndlb/ndlb/telemetry"
)

func env(name string) []string {
	return []string{settings.Setting{Name: name}.Env()}
}

// flags is the command-line contract of docs/design.md, made from the settings
// registry. Every flag reads an NDLB_* environment variable; single- and
// double-dash spellings both work.
func flags() []cli.Flag {
	out := make([]cli.Flag, 0, len(settings.All))
	for _, s := range settings.All {
		out = append(out, flagOf(s))
	}
	return out
}

// flagOf is the flag of setting s.
func flagOf(s settings.Setting) cli.Flag {
	envs := []string{s.Env()}
	switch s.Kind {
	case config.Int:
		v, _ := s.Default.(int)
		return &cli.IntFlag{Name: s.Name, Category: s.Group, Value: v, DefaultText: s.DefaultText, Usage: s.Usage, EnvVars: envs}
	case config.Bool:
		v, _ := s.Default.(bool)
		return &cli.BoolFlag{Name: s.Name, Category: s.Group, Value: v, DefaultText: s.DefaultText, Usage: s.Usage, EnvVars: envs}
	case config.Duration:
		v, _ := s.Default.(time.Duration)
		text := s.DefaultText
		if text == "" {
			text = shortDuration(v)
		}
		return &cli.DurationFlag{Name: s.Name, Category: s.Group, Value: v, DefaultText: text, Usage: s.Usage, EnvVars: envs}
	case config.Strings:
		return &cli.StringSliceFlag{Name: s.Name, Category: s.Group, DefaultText: s.DefaultText, Usage: s.Usage, EnvVars: envs}
	}
	v, _ := s.Default.(string)
	return &cli.StringFlag{Name: s.Name, Category: s.Group, Value: v, DefaultText: s.DefaultText, Usage: s.Usage, EnvVars: envs}
}

// shortDuration is d as people write it: 5m, not 5m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// healthcheckFlags are the healthcheck command's own: where to find ndlb,
// from the same environment variables the balancer reads.
func healthcheckFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "addr", Value: "0.0.0.0", Usage: "ndlb's listen address (0.0.0.0 means 127.0.0.1)", EnvVars: env("addr")},
		&cli.IntFlag{Name: "port", Value: 9000, Usage: "ndlb's listen port", EnvVars: env("port")},
		&cli.BoolFlag{Name: "udp", Usage: "ndlb listens for UDP: check that the port is held", EnvVars: env("udp")},
		&cli.StringFlag{Name: "proto", Value: "tcp", Usage: "tcp, or udp (as --udp)", EnvVars: env("proto")},
		&cli.StringFlag{Name: "admin", Usage: "ndlb's admin API HOST:PORT: ask its /healthz instead", EnvVars: env("admin")},
		&cli.StringFlag{Name: "config", Usage: "ndlb's config file: its admin API, else its listeners", EnvVars: env("config")},
	}
}

// newLogger builds the logger of p's format and level. The level can be
// changed later through the returned LevelVar.
func newLogger(p setup.Process, w io.Writer) (*slog.Logger, *slog.LevelVar) {
	var level slog.LevelVar
	level.Set(p.LogLevel)
	opts := &slog.HandlerOptions{Level: &level}
	if p.LogFormat == "json" {
		return slog.New(telemetry.LogHandler(slog.NewJSONHandler(w, opts))), &level
	}
	return slog.New(telemetry.LogHandler(slog.NewTextHandler(w, opts))), &level
}

// flagParseError is how the flag package refuses a value it cannot parse.
var flagParseError = regexp.MustCompile(`^invalid value "(.*)" for flag -([a-z0-9-]+): parse error$`)

// explainFlagError adds to the flag package's "parse error" what the
// setting wants, as a config file's error says.
func explainFlagError(err error) string {
	m := flagParseError.FindStringSubmatch(err.Error())
	if m == nil {
		return err.Error()
	}
	value, name := m[1], m[2]
	s, ok := settings.Lookup(name)
	if !ok {
		return err.Error()
	}
	switch s.Kind {
	case config.Duration:
		return fmt.Sprintf("invalid value for --%s: %s", name, config.DurationError(value))
	case config.Int:
		return fmt.Sprintf("invalid value for --%s: %q is not a whole number", name, value)
	case config.Bool:
		return fmt.Sprintf("invalid value for --%s: %q; want true or false (--%s alone is true)", name, value, name)
	}
	return err.Error()
}
