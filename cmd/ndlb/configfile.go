package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/setup"
	"github.com/ndlb/ndlb/supervisor"
)

// loadSetup returns the process-wide settings and the listeners to run: the
// one the flags describe, or those of --config, with flags (and NDLB_*
// variables) overriding the file.
func loadSetup(c *cli.Context) (*source, []*source, error) {
	path := c.String("config")
	if path == "" {
		return &source{c: c}, []*source{{name: listenerName, c: c}}, nil
	}
	return loadFile(c, path)
}

// loadFile reads the config file at path; the settings set on the command
// line or by NDLB_* variables take the place of the file's.
func loadFile(c *cli.Context, path string) (*source, []*source, error) {
	f, err := config.Load(path, settings.Schema())
	var ce *config.Error
	if errors.As(err, &ce) {
		return nil, nil, usageError("%v", err)
	} else if err != nil {
		return nil, nil, usageError("cannot read the config file: %v", err)
	}
	if len(f.Listeners) > 1 {
		for _, s := range settings.All {
			if !s.Global && !s.CommandLine && c.IsSet(s.Name) {
				return nil, nil, usageError("--%s (or %s) is set, but %s has %d listeners: set it in the file", s.Name, s.Env(), path, len(f.Listeners))
			}
		}
	}
	var srcs []*source
	for _, sec := range f.Listeners {
		v := setup.Layered{Flags: c, File: valuesOf(sec)}
		srcs = append(srcs, &source{name: sec.Name, file: f, sec: sec, c: v, flags: c, args: v.Set()})
	}
	return &source{file: f, sec: f.Global, c: setup.Layered{Flags: c, File: valuesOf(f.Global)}, flags: c}, srcs, nil
}

// valuesOf is a section's typed values by key.
func valuesOf(sec config.Section) map[string]any {
	out := map[string]any{}
	for _, v := range sec.Values {
		out[v.Key] = v.V
	}
	return out
}

// runCheckConfig checks a config file as ndlb would run it (NDLB_*
// variables and flags before the command included), without listening:
// exit 0, or 2 with FILE:LINE and the problem.
func runCheckConfig(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("check-config takes one argument: the config file")
	}
	path := c.Args().First()
	proc, srcs, err := loadFile(c, path)
	if err != nil {
		return err
	}
	spec, err := specOf(proc, srcs, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	if err := supervisor.Check(spec); err != nil {
		return exitOf(err, srcs)
	}
	var names []string
	for _, in := range srcs {
		names = append(names, in.name)
	}
	noun := "listeners"
	if len(srcs) == 1 {
		noun = "listener"
	}
	fmt.Fprintf(c.App.Writer, "ok: %s: %d %s (%s)\n", path, len(srcs), noun, strings.Join(names, ", "))
	return nil
}
