package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/config"
	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/telemetry"
	"github.com/ndlb/ndlb/upstream"
)

// runtime is the running process: its listeners, and the reloads of its
// config file.
type runtime struct {
	c     *cli.Context // the command line
	log   *slog.Logger
	level *slog.LevelVar

	mu    sync.Mutex
	insts []*instance // guarded by mu

	failed   chan error     // a listener failed on its own
	draining sync.WaitGroup // listeners replaced or removed by a reload
	dirty    atomic.Bool    // a replaced or removed listener dropped lines at its shutdown
	book     *dispatch.Book // every NDJSON listener's ledger, by name
	loaded   [32]byte       // hash of the config file as first loaded

	reloads, reloadFailures atomic.Uint64
	lastReload              atomic.Pointer[admin.ReloadInfo]
}

// runBalancer is the default action: balance until SIGTERM or SIGINT;
// reload the config file on SIGHUP or when it changes.
func runBalancer(c *cli.Context) error {
	if c.Args().Present() {
		return usageError("unexpected argument %q (flags start with - or --; see ndlb --help)", c.Args().First())
	}
	r := &runtime{c: c, failed: make(chan error, 16), book: dispatch.NewBook()}
	// The content being loaded: a change made before the watcher starts
	// is then still seen as a change.
	r.loaded = fileHash(c.String("config"))
	g, insts, err := loadSetup(c)
	if err != nil {
		return err
	}
	if r.log, r.level, err = newLogger(g); err != nil {
		return err
	}
	// Telemetry first, so that the servers' instruments reach the SDK.
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{Version: version(), Prometheus: g.String("admin") != ""})
	if err != nil {
		return usageError("invalid OTEL_* settings: %v", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tel.Shutdown(ctx); err != nil {
			r.log.Warn("telemetry did not flush", "err", err)
		}
	}()
	if tel.Traces || tel.MetricsPushed {
		r.log.Info("OpenTelemetry export on", "traces", tel.Traces, "metrics", tel.MetricsPushed)
	}
	if reg, err := r.observeReloads(); err == nil {
		defer reg.Unregister()
	}
	if reg, err := ndjson.ObserveLedgers(r.book); err == nil {
		defer reg.Unregister()
	}
	for _, in := range insts {
		if in.srv, err = newServer(in.c, in.logger(r.log), in.name, r.book); err != nil {
			return in.wrap(err)
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
	for i, in := range insts {
		if err := in.listen(""); err != nil {
			for _, prev := range insts[:i] {
				prev.ln.Close()
			}
			return err
		}
	}
	r.insts = insts
	adm, err := newAdmin(g, r.log, r.shown, r.reloadInfo, tel.Metrics())
	if err != nil {
		for _, in := range insts {
			in.ln.Close()
		}
		return err
	}
	for _, in := range insts {
		r.start(in)
	}
	if adm != nil {
		adm.Start()
	}
	changed, stopWatch := r.watchConfig()
	defer stopWatch()
	for done := false; !done; {
		select {
		case sig := <-sigs:
			r.log.Info("signal received; shutting down (a second signal exits at once)", "signal", sig.String())
			done = true
		case <-hup:
			r.reload("SIGHUP")
		case <-changed:
			r.reload("file changed")
		case err := <-r.failed:
			r.log.Error("listener failed", "err", err)
			shutdownAll(r.snapshot())
			r.draining.Wait()
			r.logLedgers()
			return cli.Exit("", exitError)
		}
	}
	if adm != nil {
		adm.Stopping()
		defer adm.Shutdown(context.Background())
	}
	go func() {
		sig := <-sigs
		var lost []any
		for _, in := range r.snapshot() {
			lost = append(lost, in.srv.lost()...)
		}
		r.log.Error("second signal: exiting without finishing the shutdown", append([]any{"signal", sig.String()}, lost...)...)
		os.Exit(exitError)
	}()
	clean := shutdownAll(r.snapshot())
	r.draining.Wait()
	if !r.logLedgers() || !clean || r.dirty.Load() {
		return cli.Exit("", exitError)
	}
	return nil
}

// logLedgers logs each NDJSON listener's ledger over its whole life
// (replaced and removed instances included) and reports whether none
// dropped lines at shutdown and every ledger closes.
func (r *runtime) logLedgers() (ok bool) {
	ok = true
	for _, name := range r.book.Names() {
		l := r.book.Stats(name)
		attrs := []any{"listener", name, "received", l.Received, "delivered", l.Delivered,
			"dropped", l.DroppedTotal(), "in_flight", l.InFlight}
		for _, reason := range dispatch.DropReasons {
			attrs = append(attrs, "dropped_"+reason, l.Dropped[reason])
		}
		level := slog.LevelInfo
		if l.Dropped[dispatch.DropShutdown] > 0 || l.InFlight > 0 || !l.Closed() {
			level, ok = slog.LevelError, false
		}
		r.log.Log(context.Background(), level, "ledger", attrs...)
	}
	return ok
}

func (r *runtime) snapshot() []*instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.insts)
}

// shown is what the admin API lists.
func (r *runtime) shown() []admin.Listener {
	var out []admin.Listener
	for _, in := range r.snapshot() {
		out = append(out, in.shown)
	}
	return out
}

func (r *runtime) reloadInfo() admin.ReloadInfo {
	info := admin.ReloadInfo{Path: r.c.String("config"), Reloads: r.reloads.Load(), Failures: r.reloadFailures.Load()}
	if last := r.lastReload.Load(); last != nil {
		info.Last, info.LastError = last.Last, last.LastError
	}
	return info
}

// start starts in and reports its listener failing on its own.
func (r *runtime) start(in *instance) {
	in.start()
	go func() {
		if err := <-in.srv.err(); err != nil {
			r.failed <- fmt.Errorf("listener %q: %w", in.name, err)
		}
	}()
}

// shutdownAll shuts every instance down at once and reports whether all
// were clean.
func shutdownAll(insts []*instance) bool {
	clean := make(chan bool, len(insts))
	for _, in := range insts {
		go func() { clean <- in.shutdown() }()
	}
	ok := true
	for range insts {
		ok = <-clean && ok
	}
	return ok
}

// instance is one listener: its flags, server, listener, and the checks and
// DNS discovery that run beside it.
type instance struct {
	name  string
	file  *config.File   // nil: flags only
	sec   config.Section // its table in file
	c     *cli.Context   // its flags
	args  map[string][]string
	srv   *server
	addr  string // the address it was asked to listen on
	ln    net.Listener
	shown admin.Listener // what the admin API shows

	stopChecks, stopDiscovery, stopPrune func()
}

// logger is log for this instance's server.
func (in *instance) logger(log *slog.Logger) *slog.Logger {
	if in.file == nil {
		return log
	}
	return log.With("listener", in.name)
}

// wrap places a usage error of a listener from the file at its line.
func (in *instance) wrap(err error) error {
	if in.file == nil {
		return err
	}
	var ec cli.ExitCoder
	if !errors.As(err, &ec) || ec.ExitCode() != exitUsage {
		return err
	}
	line := in.sec.Line
	if m := flagName.FindStringSubmatch(err.Error()); m != nil {
		line = in.sec.LineOf(m[1])
	}
	return usageError("%s", (&config.Error{Path: in.file.Path, Line: line, Msg: fmt.Sprintf("listener %q: %v", in.name, err)}).Error())
}

var flagName = regexp.MustCompile(`--([a-z][a-z-]*)`)

// listen opens the instance's port. bind, if set, is the address to bind
// instead of the configured one.
func (in *instance) listen(bind string) error {
	addr, err := listenAddr(in.c)
	if err != nil {
		return in.wrap(err)
	}
	in.addr = addr
	if bind == "" {
		bind = addr
	}
	lc := net.ListenConfig{KeepAlive: in.srv.keepAlive}
	ln, err := lc.Listen(context.Background(), "tcp", bind)
	if err != nil {
		return cli.Exit(fmt.Sprintf("listen on %s: %v", bind, err), exitError)
	}
	in.use(ln)
	return nil
}

// use makes ln the instance's listening socket.
func (in *instance) use(ln net.Listener) {
	in.ln = ln
	in.shown = in.srv.admin(in.name, ln.Addr().String())
}

// takeOver gives in the listening socket of o, which stops accepting: the
// connections waiting in its backlog are in's to serve, so a reload resets
// none. It reports false when o's socket cannot be handed over.
func (in *instance) takeOver(o *instance) bool {
	if o.srv.handover == nil {
		return false
	}
	ln := o.srv.handover()
	if ln == nil {
		return false
	}
	in.use(ln)
	return true
}

// start resolves DNS targets once, then serves, checks, resolves and
// prunes removed targets in the background.
func (in *instance) start() {
	if d := in.srv.discovery; d != nil {
		in.stopDiscovery = in.runDiscovery(d)
	}
	in.srv.start(in.ln)
	if ch := in.srv.checks; ch != nil {
		ctx, cancel := context.WithCancel(context.Background())
		in.stopChecks = background(cancel, ch.Run, ctx)
	}
	ctx, cancel := context.WithCancel(context.Background())
	in.stopPrune = background(cancel, in.prune, ctx)
}

func (in *instance) runDiscovery(d *discovery.Discoverer) func() {
	ctx, cancel := context.WithCancel(context.Background())
	d.Refresh(ctx)
	return background(cancel, d.Run, ctx)
}

// prune drops targets removed by a reload once they have drained.
func (in *instance) prune(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			in.srv.set.Prune()
		}
	}
}

// background runs run(ctx) and returns a function that stops it and waits.
func background(cancel context.CancelFunc, run func(context.Context), ctx context.Context) func() {
	done := make(chan struct{})
	go func() { defer close(done); run(ctx) }()
	return func() { cancel(); <-done }
}

// shutdown drains the server, then stops what runs beside it.
func (in *instance) shutdown() bool {
	clean := in.srv.shutdown()
	for _, stop := range []func(){in.stopChecks, in.stopDiscovery, in.stopPrune} {
		if stop != nil {
			stop()
		}
	}
	return clean
}

// changedKeys lists the keys whose values differ between a and b.
func changedKeys(a, b map[string][]string) []string {
	var out []string
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// reload reads the config file again and applies it: new listeners start,
// removed ones drain, changed targets, policies and checks apply in place,
// and other changes replace a listener while the old one drains. A file
// that does not load or validate changes nothing.
func (r *runtime) reload(why string) {
	if r.c.String("config") == "" {
		r.log.Warn("nothing to reload: ndlb runs without --config", "trigger", why)
		return
	}
	err := r.apply()
	info := &admin.ReloadInfo{Last: time.Now()}
	// The record and the counters first, then the log: whoever reads the
	// log line and then asks the admin API sees this reload.
	if err != nil {
		info.LastError = err.Error()
		r.lastReload.Store(info)
		r.reloadFailures.Add(1)
		r.log.Error("config reload refused; the running config stays", "trigger", why, "err", err)
	} else {
		r.lastReload.Store(info)
		r.reloads.Add(1)
		r.log.Info("config reloaded", "trigger", why)
	}
}

func (r *runtime) apply() (err error) {
	_, span := tracer.Start(context.Background(), "ndlb.config.reload")
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	g, next, err := loadSetup(r.c)
	if err != nil {
		return err
	}
	if _, _, err := newLogger(g); err != nil {
		return err
	}
	for _, in := range next {
		if in.srv, err = newServer(in.c, in.logger(r.log), in.name, r.book); err != nil {
			return in.wrap(err)
		}
	}
	var lvl slog.Level
	if lvl.UnmarshalText([]byte(g.String("log-level"))) == nil && lvl != r.level.Level() {
		r.level.Set(lvl)
		r.log.Info("log level changed", "level", lvl.String())
	}
	old := map[string]*instance{}
	for _, in := range r.snapshot() {
		old[in.name] = in
	}
	// A listener renamed on the same address takes over the old one's
	// socket, as a replacement does.
	byAddr := map[string]*instance{}
	for _, in := range next {
		if o := old[in.name]; o == nil {
			if a, err := listenAddr(in.c); err == nil {
				byAddr[a] = nil
			}
		}
	}
	for _, o := range old {
		if _, ok := byAddr[o.addr]; ok && !slices.ContainsFunc(next, func(n *instance) bool { return n.name == o.name }) {
			byAddr[o.addr] = o
		}
	}
	var result []*instance
	for _, in := range next {
		o := old[in.name]
		delete(old, in.name)
		switch keys := changedKeysOf(o, in); {
		case o == nil:
			a, _ := listenAddr(in.c)
			if prev := byAddr[a]; prev != nil && in.takeOver(prev) {
				in.addr = a
				delete(old, prev.name)
				byAddr[a] = nil
				r.start(in)
				span.AddEvent("listener renamed", trace.WithAttributes(upstream.AttrListener.String(in.name)))
				r.log.Info("listener added on the socket of a removed one; the old one drains", "listener", in.name,
					"removed", prev.name, "addr", in.ln.Addr().String())
				r.drain(prev)
				result = append(result, in)
				continue
			}
			if err := in.listen(""); err != nil {
				r.log.Error("new listener cannot listen; skipped", "listener", in.name, "err", err)
				continue
			}
			r.start(in)
			span.AddEvent("listener added", trace.WithAttributes(upstream.AttrListener.String(in.name)))
			r.log.Info("listener added", "listener", in.name, "addr", in.ln.Addr().String())
			result = append(result, in)
		case len(keys) == 0:
			result = append(result, o)
		case allLive(keys):
			if err := r.applyLive(o, in, keys); err != nil {
				return err
			}
			span.AddEvent("listener changed in place", trace.WithAttributes(upstream.AttrListener.String(in.name),
				attribute.StringSlice("ndlb.changed", keys)))
			result = append(result, o)
		default:
			a, err := listenAddr(in.c)
			if err != nil {
				return in.wrap(err)
			}
			if a == o.addr && in.takeOver(o) {
				// The same socket: clients in its backlog are served
				// by the replacement.
				in.addr = a
			} else if err := in.listen(""); err != nil {
				r.log.Error("changed listener cannot listen; the old one stays", "listener", in.name, "err", err)
				result = append(result, o)
				continue
			}
			r.start(in)
			span.AddEvent("listener replaced", trace.WithAttributes(upstream.AttrListener.String(in.name)))
			r.log.Info("listener replaced; the old one drains", "listener", in.name, "changed", keys)
			r.drain(o)
			result = append(result, in)
		}
	}
	for _, o := range old {
		span.AddEvent("listener removed", trace.WithAttributes(upstream.AttrListener.String(o.name)))
		r.log.Info("listener removed; draining", "listener", o.name)
		r.drain(o)
	}
	r.mu.Lock()
	r.insts = result
	r.mu.Unlock()
	return nil
}

func changedKeysOf(o, n *instance) []string {
	if o == nil {
		return nil
	}
	return changedKeys(o.args, n.args)
}

// allLive reports whether a reload can apply every key to the running
// listener (see settings.Reload).
func allLive(keys []string) bool {
	for _, k := range keys {
		if !settings.RuleOf(k).Live() {
			return false
		}
	}
	return true
}

// drain shuts o down in the background; lines it drops make the exit code
// 1, as the listeners still running at exit do.
func (r *runtime) drain(o *instance) {
	r.draining.Go(func() {
		if !o.shutdown() {
			r.dirty.Store(true)
		}
	})
}

// applyLive applies changed live keys of n to the running o.
func (r *runtime) applyLive(o, n *instance, keys []string) error {
	log := o.logger(r.log)
	has := func(rule settings.Reload) bool {
		return slices.ContainsFunc(keys, func(k string) bool { return settings.RuleOf(k) == rule })
	}
	if has(settings.LiveTargets) {
		static, err := targets(n.c)
		if err != nil {
			return n.wrap(err)
		}
		dcfg, discover, err := discoveryConfig(n.c, log, static)
		if err != nil {
			return n.wrap(err)
		}
		if o.stopDiscovery != nil {
			o.stopDiscovery()
			o.stopDiscovery = nil
		}
		if discover {
			d, err := discovery.New(dcfg, o.srv.set)
			if err != nil {
				return n.wrap(usageError("%v", err))
			}
			o.stopDiscovery = o.runDiscovery(d)
		} else {
			logUpdate(log, o.srv.set, static)
		}
	}
	if has(settings.LiveBalance) && o.srv.setBalance != nil {
		if err := o.srv.setBalance(n.c.String("balance")); err != nil {
			return n.wrap(usageError("%v", err))
		}
		log.Info("balancing policy changed", "balance", n.c.String("balance"))
	}
	if has(settings.LiveChecks) {
		if o.stopChecks != nil {
			o.stopChecks()
			o.stopChecks = nil
		}
		chk, err := newChecker(n.c, log, o.srv.targetTLS, o.srv.set)
		if err != nil {
			return n.wrap(err)
		}
		if chk != nil {
			ctx, cancel := context.WithCancel(context.Background())
			o.stopChecks = background(cancel, chk.Run, ctx)
		} else {
			for _, t := range o.srv.set.Targets() { // no checks: no verdict
				t.SetChecked(upstream.CheckResult{}, true, true)
			}
		}
		log.Info("health checks changed", "check", n.c.String("check"))
	}
	o.c, o.sec, o.args, o.file = n.c, n.sec, n.args, n.file
	return nil
}

// logUpdate makes addrs the set's static targets and logs the change.
func logUpdate(log *slog.Logger, set *upstream.Set, addrs []string) {
	added, removed := set.Update(addrs)
	for _, t := range added {
		log.Info("target added", "target", t.Addr)
	}
	for _, t := range removed {
		log.Info("target removed; draining", "target", t.Addr)
	}
}

var tracer = otel.Tracer("github.com/ndlb/ndlb/cmd/ndlb")

// observeReloads reports the reload counters as a metric.
func (r *runtime) observeReloads() (metric.Registration, error) {
	m := otel.Meter("github.com/ndlb/ndlb/cmd/ndlb")
	c, err := m.Int64ObservableCounter("ndlb.config.reloads", metric.WithUnit("{reload}"),
		metric.WithDescription("Config reloads, by ndlb.outcome: applied, or refused (the running config stayed)."))
	if err != nil {
		return nil, err
	}
	applied := metric.WithAttributes(attribute.String("ndlb.outcome", "applied"))
	refused := metric.WithAttributes(attribute.String("ndlb.outcome", "refused"))
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(c, int64(r.reloads.Load()), applied)
		o.ObserveInt64(c, int64(r.reloadFailures.Load()), refused)
		return nil
	}, c)
}
