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
	p, err := proc.Process()
	if err != nil {
		return usage(err)
	}
	log, level := newLogger(p, c.App.ErrWriter)
	// What logs through slog's default or the standard log package (the
	// admin API's certificate reloads, a library) keeps --log-format.
	slog.SetDefault(log)
	for _, n := range envNotices(c) {
		log.Warn(n.msg, n.args...)
	}
	// Telemetry first, so that the servers' instruments reach the SDK.
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{Version: version(), Prometheus: p.Admin.Addr != "", Logger: log})
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
	cfg := supervisor.Config{Logger: log, Level: level, Path: path, StateFile: p.StateFile}
	// Started by an upgrade: the old process's sockets are ours.
	inh, err := supervisor.Inherit(log)
	if err != nil {
		return cli.Exit(fmt.Sprintf("upgrade: %v", err), exitError)
	}
	// A PID file that cannot be written stops a fresh start: systemd's
	// PIDFile= and `kill -USR2 $(cat …)` would wait for it. After an
	// upgrade's takeover it is only logged: the old process is gone.
	if err := supervisor.CheckPID(p.PIDFile); err != nil && inh == nil {
		return usageError("invalid value for --pid-file: cannot write %s: %v", p.PIDFile, err)
	}
	listenAdmin := func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
	if inh != nil {
		cfg.Listen = inh.Listen
		listenAdmin = func(addr string) (net.Listener, error) { return inh.Listen(adminSocket, "tcp", addr, 0) }
	}
	if path != "" {
		cfg.Load = func() (supervisor.Spec, error) {
			proc, srcs, err := loadSetup(c)
			if err != nil {
				return supervisor.Spec{}, err
			}
			// Not specOf: a reload logs the error, and keeps its chain
			// (reloadRetry looks for the setting at fault).
			return setup.Spec(proc, srcs, log)
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
	// An upgrade runs beside this loop, so that a signal is acted on
	// while it waits (for the new process, or for clients to move): a
	// SIGTERM ends it, and reloads wait for its end.
	var retry reloadRetry // a reload refused for files it could not load
	reloadNow := func(why string) {
		retry.after(sup.Reload(why), why, log)
	}
	var upgrade <-chan error // while one runs
	cancelUpgrade := func() {}
	defer func() { cancelUpgrade() }()
	reload := "" // a reload asked for during an upgrade
	for done := false; !done; {
		select {
		case sig := <-sigs:
			log.Info("signal received; shutting down (a second signal exits at once)", "signal", sig.String())
			if upgrade != nil {
				cancelUpgrade()
				upgraded = <-upgrade == nil // the new process was ready: it owns the PID file
			}
			done = true
		case <-usr2:
			if upgrade != nil {
				log.Warn("SIGUSR2 ignored: an upgrade is already in progress")
				continue
			}
			var extra []supervisor.Socket
			if adm != nil {
				extra = append(extra, supervisor.Socket{Name: adminSocket, Addr: p.Admin.Addr, Listener: adm.Socket()})
			}
			upgrade, cancelUpgrade = startUpgrade(sup, p.UpgradeTimeout, extra)
		case err := <-upgrade:
			cancelUpgrade()
			upgrade = nil
			if err == nil {
				if reload != "" {
					log.Info("the reload asked for during the upgrade is the new process's: it read the config at its start", "reason", reload)
				}
				upgraded, done = true, true
				continue
			}
			log.Error("upgrade failed; this process serves on", "err", err)
			if reload != "" {
				reloadNow(reload)
				reload = ""
			}
		case <-hup:
			retry.reset()
			if upgrade != nil {
				reload = "SIGHUP"
				log.Info("reload waits for the upgrade in progress", "reason", reload)
				continue
			}
			reloadNow("SIGHUP")
		case <-changed:
			retry.reset()
			if upgrade != nil {
				reload = "file changed"
				log.Info("reload waits for the upgrade in progress", "reason", reload)
				continue
			}
			reloadNow("file changed")
		case <-retry.c:
			retry.c = nil
			if upgrade != nil {
				reload = retry.why
				continue
			}
			reloadNow(retry.why + ", tried again")
		case err := <-sup.Failed():
			log.Error("listener failed", "err", err)
			if upgrade != nil { // a new process not ready yet is stopped
				cancelUpgrade()
				upgraded = <-upgrade == nil
			}
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

// startUpgrade runs sup.Upgrade until it returns or cancel is called, and
// sends its result.
func startUpgrade(sup *supervisor.Supervisor, timeout time.Duration, extra []supervisor.Socket) (result <-chan error, cancel context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- sup.Upgrade(ctx, "", timeout, extra...) }()
	return ch, cancel
}

// adminSocket names the admin API's socket among those an upgrade passes on.
const adminSocket = "process:admin"

// exitOf turns an error of supervisor.New or Check into the exit: 1 when a
// socket cannot be opened, else 2, with the listener's place in the file.
func exitOf(err error, srcs []*setup.Source) error {
	msg, listen := setup.Explain(err, srcs)
	if listen {
		return cli.Exit(msg, exitError)
	}
	return usageError("%s", msg)
}

// reloadRetry tries a reload again that was refused because files it
// names could not be loaded (TLS certificates and keys): mid-rotation, a
// certificate and its key may not match for a moment (a Kubernetes Secret
// and the ConfigMap that changed with it update apart), and the reload
// that came with them, of targets say, would otherwise wait for the next
// SIGHUP or edit. It tries after 1 s, doubling to 30 s, maxReloadRetries
// times; a new SIGHUP or edit starts over.
type reloadRetry struct {
	c     <-chan time.Time
	tries int
	why   string
}

// maxReloadRetries bounds the tries of one refused reload (about 3 min).
const maxReloadRetries = 10

// retriedSettings are the settings whose refusal is about files that may
// be in the middle of a change.
var retriedSettings = map[string]bool{"tls-cert": true, "tls-target-ca": true}

// after schedules a try after a reload that ended with err, if err is
// about such files; why is the reload's first trigger.
func (r *reloadRetry) after(err error, why string, log *slog.Logger) {
	var se *settings.Error
	if err == nil || !errors.As(err, &se) || !retriedSettings[se.Setting] || r.tries >= maxReloadRetries {
		r.reset()
		return
	}
	d := min(time.Second<<r.tries, 30*time.Second)
	r.tries++
	if r.why == "" {
		r.why = why
	}
	log.Warn("the refused reload is tried again: the files it names may be changing", "in", d.String(), "try", r.tries, "of", maxReloadRetries)
	r.c = time.After(d)
}

// reset forgets a pending try.
func (r *reloadRetry) reset() { r.c, r.tries, r.why = nil, 0, "" }
