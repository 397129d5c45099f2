package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/supervisor"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // runtime failure, or lines dropped at shutdown
	exitUsage = 2 // bad flags or values
)

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run executes the command line and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	app := newApp(stdout, stderr)
	known := envNames(app)
	known[supervisor.UpgradeEnv] = true // how an upgrade's new process learns what it inherits
	app.Metadata = map[string]any{envNoticesKey: screenEnv(os.Environ(), known, os.Unsetenv)}
	if len(args) > 1 {
		if err := checkWholeNumbers(args[1:], os.LookupEnv); err != nil {
			fmt.Fprintln(stderr, "ndlb: "+err.Error())
			return exitUsage
		}
	}
	err := app.Run(args)
	if err == nil {
		return exitOK
	}
	msg := err.Error()
	code := exitError
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		code = ec.ExitCode()
	}
	if msg != "" {
		fmt.Fprintln(stderr, "ndlb: "+msg)
	}
	return code
}

// usageError is a bad flag or value: exit 2 with one line.
func usageError(format string, a ...any) error {
	return cli.Exit(fmt.Sprintf(format, a...), exitUsage)
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:      "ndlb",
		Usage:     "a TCP load balancer that understands lines",
		UsageText: "ndlb --target HOST:PORT[,HOST:PORT...] [options]\n   ndlb --passthrough --target HOST:PORT[,...] [--balance POLICY] [options]\n   ndlb --config ndlb.toml [options]\n   ndlb check-config ndlb.toml\n   ndlb demo\n   ndlb version",
		Description: "ndlb reads newline-delimited streams (such as NDJSON logs) from its clients and spreads\n" +
			"them, in batches of whole lines, over persistent connections to all targets. A line is\n" +
			"never torn, and a batch leaves ndlb only when the target's TCP stack has acknowledged it.\n" +
			"With --passthrough it is a plain L4 balancer instead: each connection goes whole to one\n" +
			"target (round-robin, first available, least connections, random or consistent hash).\n" +
			"Every flag can also be set with the environment variable shown beside it.",
		Version:         version(),
		Writer:          stdout,
		ErrWriter:       stderr,
		Flags:           flags(),
		Action:          runBalancer,
		HideHelpCommand: true,
		ExitErrHandler:  func(*cli.Context, error) {}, // run() prints and exits
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError("%s (see ndlb --help)", explainFlagError(err))
		},
		Commands: []*cli.Command{
			{Name: "demo", Usage: "run two targets, ndlb and a generator in-process, kill a target midway, and count every line", Flags: demoFlags(), Action: runDemo},
			{Name: "check-config", Usage: "check a config file without running it: exit 0 if valid, else 2 with FILE:LINE", ArgsUsage: "FILE", Action: runCheckConfig},
			{Name: "version", Usage: "print the version", Action: func(c *cli.Context) error {
				fmt.Fprintln(c.App.Writer, "ndlb", version())
				return nil
			}},
			{Name: "healthcheck", Usage: "exit 0 if ndlb's admin API answers /healthz (--admin, or admin in --config), else if every listener (of --config, or --addr/--port) accepts connections (a UDP one: holds its port); else 1 (for container HEALTHCHECKs)",
				Flags: healthcheckFlags(), Action: runHealthcheck},
		},
	}
	// --version says what `ndlb version` says.
	cli.VersionPrinter = func(c *cli.Context) { fmt.Fprintln(c.App.Writer, "ndlb", c.App.Version) }
	for _, cmd := range app.Commands {
		cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
			return usageError("%s: %v (see ndlb %s --help; the balancer's flags go before the command)", cmd.Name, err, cmd.Name)
		}
		if cmd.ArgsUsage == "" { // takes none: a stray word is a mistake, not ignored
			action := cmd.Action
			cmd.Action = func(c *cli.Context) error {
				if c.Args().Present() {
					return usageError("%s takes no arguments, got %q (see ndlb %s --help)", cmd.Name, c.Args().First(), cmd.Name)
				}
				return action(c)
			}
		}
	}
	return app
}
