package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
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
func loadSetup(c *cli.Context) (setup.Values, []*source, error) {
	path := c.String("config")
	if path == "" {
		return c, []*source{{name: listenerName, c: c}}, nil
	}
	return loadFile(c, path, true)
}

// loadFile reads the config file at path; with over, the settings set on
// the command line or by NDLB_* variables take the place of the file's.
func loadFile(c *cli.Context, path string, over bool) (setup.Values, []*source, error) {
	f, err := config.Load(path, settings.Schema())
	if err != nil {
		return nil, nil, usageError("invalid config: %v", err)
	}
	var flags setup.Values
	if over {
		flags = c
		if len(f.Listeners) > 1 {
			for _, s := range settings.All {
				if !s.Global && !s.CommandLine && c.IsSet(s.Name) {
					return nil, nil, usageError("--%s is set, but %s has %d listeners: set it in the file", s.Name, path, len(f.Listeners))
				}
			}
		}
	}
	var srcs []*source
	for _, sec := range f.Listeners {
		v := setup.Layered{Flags: flags, File: valuesOf(sec)}
		srcs = append(srcs, &source{name: sec.Name, file: f, sec: sec, c: v, args: v.Set()})
	}
	return setup.Layered{Flags: flags, File: valuesOf(f.Global)}, srcs, nil
}

// valuesOf is a section's typed values by key.
func valuesOf(sec config.Section) map[string]any {
	out := map[string]any{}
	for _, v := range sec.Values {
		out[v.Key] = v.V
	}
	return out
}

// runCheckConfig checks a config file as ndlb would run it, without
// listening: exit 0, or 2 with FILE:LINE and the problem.
func runCheckConfig(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("check-config takes one argument: the config file")
	}
	path := c.Args().First()
	g, srcs, err := loadFile(c, path, false)
	if err != nil {
		return err
	}
	if _, _, err := newLogger(g, io.Discard); err != nil {
		return usageError("%s: %v", path, err)
	}
	spec, err := specOf(g, srcs, slog.New(slog.DiscardHandler))
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
	if tf := g.String("admin-token-file"); tf != "" {
		if _, err := os.ReadFile(tf); err != nil {
			return usageError("%s: admin-token-file: %v", path, err)
		}
	}
	fmt.Fprintf(c.App.Writer, "ok: %s: %d listeners (%s)\n", path, len(srcs), strings.Join(names, ", "))
	return nil
}
