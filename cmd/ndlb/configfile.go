package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/supervisor"
)

// global reports whether the setting called name is process-wide: in a
// config file it sits at the top, not in a [[listener]] table.
func global(name string) bool {
	s, _ := settings.Lookup(name)
	return s.Global
}

// loadSetup returns the process-wide flags and the listeners to run: the
// one the flags describe, or those of --config, with flags (and NDLB_*
// variables) overriding the file.
func loadSetup(c *cli.Context) (*cli.Context, []*source, error) {
	path := c.String("config")
	if path == "" {
		return c, []*source{{name: listenerName, c: c}}, nil
	}
	return loadFile(c, path, overrides(c))
}

// loadFile reads the config file at path, with over in place of its values.
func loadFile(c *cli.Context, path string, over map[string][]string) (*cli.Context, []*source, error) {
	f, err := config.Load(path, settings.Schema())
	if err != nil {
		return nil, nil, usageError("invalid config: %v", err)
	}
	g, err := parseFlags(c, merge(f.Global, over, true))
	if err != nil {
		return nil, nil, usageError("%s: %v", path, err)
	}
	var insts []*source
	for _, sec := range f.Listeners {
		if len(f.Listeners) > 1 {
			for name := range over {
				if !global(name) {
					return nil, nil, usageError("--%s is set, but %s has %d listeners: set it in the file", name, path, len(f.Listeners))
				}
			}
		}
		in := &source{name: sec.Name, file: f, sec: sec}
		args := merge(sec, over, false)
		if in.c, err = parseFlags(c, args); err != nil {
			return nil, nil, in.wrap(usageError("%v", err))
		}
		in.args = byKey(args)
		insts = append(insts, in)
	}
	return g, insts, nil
}

// byKey groups "--key=value" arguments by key, in order.
func byKey(args []string) map[string][]string {
	out := map[string][]string{}
	for _, a := range args {
		k, v, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		out[k] = append(out[k], v)
	}
	return out
}

// overrides renders the flags set on the command line or by NDLB_*
// variables as arguments, by flag name.
func overrides(c *cli.Context) map[string][]string {
	out := map[string][]string{}
	for _, f := range flags() {
		name := f.Names()[0]
		if name == "config" || !c.IsSet(name) {
			continue
		}
		switch f.(type) {
		case *cli.StringSliceFlag:
			for _, v := range c.StringSlice(name) {
				out[name] = append(out[name], "--"+name+"="+v)
			}
		case *cli.BoolFlag:
			out[name] = []string{"--" + name + "=" + strconv.FormatBool(c.Bool(name))}
		case *cli.IntFlag:
			out[name] = []string{"--" + name + "=" + strconv.Itoa(c.Int(name))}
		case *cli.DurationFlag:
			out[name] = []string{"--" + name + "=" + c.Duration(name).String()}
		default:
			out[name] = []string{"--" + name + "=" + c.String(name)}
		}
	}
	return out
}

// merge returns the section's arguments with the overrides of its level
// in place of the file's values.
func merge(sec config.Section, over map[string][]string, top bool) []string {
	var args []string
	for _, v := range sec.Values {
		if _, ok := over[v.Key]; !ok {
			args = append(args, v.Args...)
		}
	}
	for name, a := range over {
		if global(name) == top {
			args = append(args, a...)
		}
	}
	return args
}

// parseFlags parses args with ndlb's flags, ignoring the environment (the
// caller has already applied it), and returns the context.
func parseFlags(parent *cli.Context, args []string) (*cli.Context, error) {
	var got *cli.Context
	app := &cli.App{
		Name: "ndlb", Flags: withoutEnv(flags()), HideHelp: true, HideVersion: true,
		Writer: parent.App.Writer, ErrWriter: parent.App.ErrWriter,
		Action:         func(c *cli.Context) error { got = c; return nil },
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   func(_ *cli.Context, err error, _ bool) error { return err },
	}
	if err := app.Run(append([]string{"ndlb"}, args...)); err != nil {
		return nil, err
	}
	if got == nil {
		return nil, fmt.Errorf("arguments %q were not parsed", args)
	}
	return got, nil
}

// withoutEnv strips the environment variables from fs.
func withoutEnv(fs []cli.Flag) []cli.Flag {
	for _, f := range fs {
		switch x := f.(type) {
		case *cli.StringFlag:
			x.EnvVars = nil
		case *cli.IntFlag:
			x.EnvVars = nil
		case *cli.BoolFlag:
			x.EnvVars = nil
		case *cli.DurationFlag:
			x.EnvVars = nil
		case *cli.StringSliceFlag:
			x.EnvVars = nil
		}
	}
	return fs
}

// runCheckConfig checks a config file as ndlb would run it, without
// listening: exit 0, or 2 with FILE:LINE and the problem.
func runCheckConfig(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("check-config takes one argument: the config file")
	}
	path := c.Args().First()
	g, insts, err := loadFile(c, path, nil)
	if err != nil {
		return err
	}
	if _, _, err := newLogger(g); err != nil {
		return usageError("%s: %v", path, err)
	}
	spec, err := specOf(g, insts, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	if err := supervisor.Check(spec); err != nil {
		return exitOf(err, insts)
	}
	var names []string
	for _, in := range insts {
		names = append(names, in.name)
	}
	if tf := g.String("admin-token-file"); tf != "" {
		if _, err := os.ReadFile(tf); err != nil {
			return usageError("%s: admin-token-file: %v", path, err)
		}
	}
	fmt.Fprintf(c.App.Writer, "ok: %s: %d listeners (%s)\n", path, len(insts), strings.Join(names, ", "))
	return nil
}
