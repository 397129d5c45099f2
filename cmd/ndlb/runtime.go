package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/setup"
	"github.com/ndlb/ndlb/supervisor"
	"github.com/ndlb/ndlb/telemetry"
)

// runBalancer is the default action: balance until SIGTERM or SIGINT;
// reload the config file on SIGHUP or when it changes.
func runBalancer(c *cli.Context) error {
	if c.Args().Present() {
		return usageError("unexpected argument %q (flags start with - or --; see ndlb --help)", c.Args().First())
	}
	path := c.String("config")
	// The content being loaded: a change made before the watcher starts
	// is then still seen as a change.
	loaded := config.Hash(path)
	proc, srcs, err := loadSetup(c)
	if err != nil {
		return err
	}
	p, err := proc.process()
	if err != nil {
		return err
	}
	log, level := newLogger(p, c.App.ErrWriter)
	// Telemetry first, so that the servers' instruments reach the SDK.
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{Version: version(), Prometheus: p.Admin.Addr != ""})
	if err != nil {
		return usageError("invalid OTEL_* settings: %v", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tel.Shutdown(ctx); err != nil {
			log.Warn("telemetry did not flush", "err", err)
		}
	}()
	if tel.Traces || tel.MetricsPushed {
		log.Info("OpenTelemetry export on", "traces", tel.Traces, "metrics", tel.MetricsPushed)
	}
	spec, err := specOf(proc, srcs, log)
	if err != nil {
		return err
	}
	cfg := supervisor.Config{Logger: log, Level: level, Path: path}
	// Started by an upgrade: the old process's sockets are ours.
	inh, err := supervisor.Inherit(log)
	if err != nil {
		return cli.Exit(fmt.Sprintf("upgrade: %v", err), exitError)
	}
	listenAdmin := func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	if inh != nil {
		cfg.Listen = inh.Listen
		listenAdmin = func(addr string) (net.Listener, error) { return inh.Listen(adminSocket, addr, 0) }
	}
	if path != "" {
		cfg.Load = func() (supervisor.Spec, error) {
			proc, srcs, err := loadSetup(c)
			if err != nil {
				return supervisor.Spec{}, err
			}
			return specOf(proc, srcs, log)
		}
	}
	// Signals are caught before the listeners open, so one that arrives as
	// soon as a port answers is never the default "die at once".
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	sup, err := supervisor.New(cfg, spec)
	if err != nil {
		return exitOf(err, srcs)
	}
	if reg, err := sup.ObserveReloads(); err == nil {
		defer reg.Unregister()
	}
	if reg, err := ndjson.ObserveLedgers(sup.Book()); err == nil {
		defer reg.Unregister()
	}
	adm, err := newAdmin(p, log, sup.Listeners, sup.ReloadInfo, tel.Metrics(), listenAdmin)
	if err != nil {
		sup.Close()
		return err
	}
	sup.Start()
	if adm != nil {
		adm.Start()
	}
	if inh != nil {
		go inh.Serve(sup) // tells the old process we are ready, then takes its clients
	}
	pidFile := p.PIDFile
	if err := supervisor.WritePID(pidFile); err != nil {
		log.Error("cannot write the PID file", "path", pidFile, "err", err)
	}
	upgraded := false
	defer func() {
		if !upgraded {
			supervisor.RemovePID(pidFile)
		}
	}()
	changed, stopWatch := config.Watch(path, loaded, log)
	defer stopWatch()
	for done := false; !done; {
		select {
		case sig := <-sigs:
			log.Info("signal received; shutting down (a second signal exits at once)", "signal", sig.String())
			done = true
		case <-usr2:
			var extra []supervisor.Socket
			if adm != nil {
				extra = append(extra, supervisor.Socket{Name: adminSocket, Addr: p.Admin.Addr, Listener: adm.Socket()})
			}
			if err := sup.Upgrade(context.Background(), "", p.UpgradeTimeout, extra...); err != nil {
				log.Error("upgrade failed; this process serves on", "err", err)
				continue
			}
			upgraded, done = true, true
		case <-hup:
			_ = sup.Reload("SIGHUP")
		case <-changed:
			_ = sup.Reload("file changed")
		case err := <-sup.Failed():
			log.Error("listener failed", "err", err)
			sup.Shutdown()
			return cli.Exit("", exitError)
		}
	}
	if adm != nil {
		adm.Stopping()
		defer adm.Shutdown(context.Background())
	}
	go func() {
		sig := <-sigs
		log.Error("second signal: exiting without finishing the shutdown", append([]any{"signal", sig.String()}, sup.Lost()...)...)
		os.Exit(exitError)
	}()
	if !sup.Shutdown() {
		return cli.Exit("", exitError)
	}
	return nil
}

// adminSocket names the admin API's socket among those an upgrade passes on.
const adminSocket = "process:admin"

// exitOf turns an error of supervisor.New into the exit: 1 when a socket
// cannot be opened, else 2 with the listener's place in the file.
func exitOf(err error, srcs []*source) error {
	var se *supervisor.Error
	if !errors.As(err, &se) {
		return usageError("%v", err)
	}
	for _, in := range srcs {
		if in.name == se.Listener {
			if se.Listen {
				if in.file == nil {
					return cli.Exit(se.Err.Error(), exitError)
				}
				return cli.Exit((&config.Error{Path: in.file.Path, Line: in.sec.LineOf("port"), Listener: in.sec.Name, Msg: se.Err.Error()}).Error(), exitError)
			}
			setting := ""
			if errors.Is(se.Err, supervisor.ErrSameAddr) {
				setting = "port"
			}
			return in.wrap(settings.Errorf(setting, "%v", se.Err))
		}
	}
	return usageError("%v", err)
}

// specOf turns the process-wide settings proc and the listeners' sources
// into a Spec, checking every value; log is the process's logger.
func specOf(proc *source, srcs []*source, log *slog.Logger) (supervisor.Spec, error) {
	p, err := proc.process()
	if err != nil {
		return supervisor.Spec{}, err
	}
	spec := supervisor.Spec{LogLevel: p.LogLevel, Process: map[string][]string{}}
	for _, s := range settings.All {
		if s.Global {
			spec.Process[s.Name] = []string{setup.Text(proc.c, s)}
		}
	}
	for _, in := range srcs {
		l, err := in.spec(log)
		if err != nil {
			return supervisor.Spec{}, err
		}
		if p.Admin.Addr != "" && supervisor.SameAddr(p.Admin.Addr, l.Addr) {
			return supervisor.Spec{}, proc.wrap(settings.Errorf("admin", "invalid value %q for --admin: it is also the address of listener %q", p.Admin.Addr, l.Name))
		}
		spec.Listeners = append(spec.Listeners, l)
	}
	// Two listeners on one address: refused here, with the second one's
	// line, at start, in check-config and on a reload alike.
	if err := spec.Validate(); err != nil {
		return supervisor.Spec{}, exitOf(err, srcs)
	}
	return spec, nil
}

// source is one listener, or the process-wide settings, as configured: its
// values, and where in the config file they came from.
type source struct {
	name string
	file *config.File   // nil: flags only
	sec  config.Section // its table in file (the top for the process)
	c    setup.Values   // its settings
	// flags are the command line's and NDLB_* variables' settings, which
	// take the place of the file's (nil: flags only).
	flags setup.Values
	args  map[string][]string
}

// process checks the process-wide settings of proc.
func (in *source) process() (setup.Process, error) {
	p, err := setup.ProcessOf(in.c)
	return p, in.wrap(err)
}

// logger is log for this listener.
func (in *source) logger(log *slog.Logger) *slog.Logger {
	if in.file == nil {
		return log
	}
	return log.With("listener", in.name)
}

// spec turns the source into the supervisor's Listener, checking every
// value and naming the flag (or FILE:LINE) of a wrong one.
func (in *source) spec(log *slog.Logger) (supervisor.Listener, error) {
	l, err := setup.Listener(in.name, in.c, in.args, in.logger(log))
	return l, in.wrap(err)
}

// wrap turns a bad setting into a usage error (exit 2), placed at its line
// when the listener comes from the config file.
func (in *source) wrap(err error) error {
	var se *settings.Error
	if !errors.As(err, &se) {
		return err
	}
	if in.file == nil {
		return usageError("%s", se.Msg)
	}
	line, msg := in.sec.Line, se.Msg
	if se.Setting != "" {
		line = in.sec.LineOf(se.Setting)
		if in.flags != nil && in.flags.IsSet(se.Setting) {
			// Set by a flag or variable, over the file: no line of it.
			line, msg = 0, fmt.Sprintf("%s (set by --%s or %s)", msg, se.Setting, settings.Setting{Name: se.Setting}.Env())
		}
	}
	return usageError("%s", (&config.Error{Path: in.file.Path, Line: line, Listener: in.sec.Name, Msg: msg}).Error())
}
