package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/setup"
	"github.com/ndlb/ndlb/supervisor"
)

// loadSetup returns the process-wide settings and the listeners to run: the
// one the flags describe, or those of --config, with flags (and NDLB_*
// variables) overriding the file. Its errors are usage errors (exit 2).
func loadSetup(c *cli.Context) (*setup.Source, []*setup.Source, error) {
	path := c.String("config")
	if path == "" {
		proc, srcs := setup.FlagsOnly(c, listenerName)
		return proc, srcs, nil
	}
	proc, srcs, err := setup.Load(path, c)
	return proc, srcs, usage(err)
}

// specOf is setup.Spec, its errors usage errors (exit 2).
func specOf(proc *setup.Source, srcs []*setup.Source, log *slog.Logger) (supervisor.Spec, error) {
	spec, err := setup.Spec(proc, srcs, log)
	return spec, usage(err)
}

// usage is err as a usage error: exit 2 with its one line.
func usage(err error) error {
	if err == nil {
		return nil
	}
	return usageError("%v", err)
}

// runCheckConfig checks a config file as ndlb would run it (NDLB_*
// variables and flags before the command included), without listening:
// exit 0, or 2 with FILE:LINE and the problem.
func runCheckConfig(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError("check-config takes one argument: the config file")
	}
	path := c.Args().First()
	for _, n := range envNotices(c) {
		fmt.Fprintf(c.App.ErrWriter, "ndlb: warning: %s\n", n.msg)
	}
	proc, srcs, err := setup.Load(path, c)
	if err != nil {
		return usage(err)
	}
	spec, err := specOf(proc, srcs, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	if err := supervisor.Check(spec); err != nil {
		return exitOf(err, srcs)
	}
	// A warning only: the directory may be made when the service starts
	// (systemd's RuntimeDirectory=); the run refuses it if it is not.
	if p, err := proc.Process(); err == nil {
		if err := supervisor.CheckPID(p.PIDFile); err != nil {
			fmt.Fprintf(c.App.ErrWriter, "ndlb: warning: --pid-file %s cannot be written now (%v); a run would refuse it\n", p.PIDFile, err)
		}
	}
	var names []string
	for _, in := range srcs {
		names = append(names, in.Name)
	}
	noun := "listeners"
	if len(srcs) == 1 {
		noun = "listener"
	}
	fmt.Fprintf(c.App.Writer, "ok: %s: %d %s (%s)\n", path, len(srcs), noun, strings.Join(names, ", "))
	return nil
}
