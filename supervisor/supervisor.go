package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/health"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/upstream"
)

// Config is how a Supervisor runs.
type Config struct {
	Logger *slog.Logger // nil: slog.Default()
	// Level is the logger's level, which a reload changes (nil: none).
	Level *slog.LevelVar
	// Book keeps every NDJSON listener's ledger by name (nil: a new one).
	Book *dispatch.Book
	// Load reads the Spec again for Reload; nil means there is nothing to
	// reload. Its errors are shown as they are.
	Load func() (Spec, error)
	// Path is the config file, for the admin API.
	Path string
	// PruneInterval is how often targets removed from the config are
	// dropped once drained (default 1s).
	PruneInterval time.Duration
	// Listen opens the socket of the listener called name on network
	// ("tcp" or "udp"; a UDP socket is a *listener.Packet), nil: a new
	// socket. A process started by Upgrade passes Inherited.Listen.
	Listen func(name, network, addr string, keepAlive time.Duration) (net.Listener, error)
	// StateFile, if set, keeps operators' drains and disables and failed
	// health verdicts across restarts: read at New, written (atomically)
	// within PruneInterval of a change and at Shutdown.
	StateFile string
}

// Supervisor runs the listeners of a Spec and reloads them.
type Supervisor struct {
	cfg   Config
	log   *slog.Logger
	tally *tally // target counts across a listener's instances (admin API)

	mu      sync.Mutex
	insts   []*instance         // guarded by mu
	process map[string][]string // guarded by mu

	stateHanded atomic.Bool // an upgrade's new process writes the state file
	stateOff    atomic.Bool // the state file could not be read: it is not written
	stateMu     sync.Mutex  // guards savedState, pending, pendingUntil
	savedState  []byte      // what the state file holds now
	// pending are the state file's entries whose targets are not in their
	// set yet (DNS finds them later), kept until pendingUntil.
	pending      map[string]map[string]pendingTarget
	pendingUntil time.Time
	stateLog     rate.Sometimes // write failures, once a minute

	failed   chan error
	draining sync.WaitGroup // instances replaced or removed by a reload
	dirty    atomic.Bool    // one of them dropped lines at its shutdown

	reloads, reloadFailures atomic.Uint64
	reloadPartial           atomic.Uint64 // of reloads, those applied in part
	lastReload              atomic.Pointer[admin.ReloadInfo]

	stopPrune func()
	upgrading atomic.Bool

	// stopping is cancelled when Shutdown begins: a reload's hand-off of
	// clients to a replacement then stops waiting.
	stopping context.Context
	stop     context.CancelFunc
}

// New makes the servers of spec and opens their sockets; Start serves
// them. An error is a *Error naming the listener, or wraps ErrSpec.
func New(cfg Config, spec Spec) (*Supervisor, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Book == nil {
		cfg.Book = dispatch.NewBook()
	}
	if cfg.PruneInterval <= 0 {
		cfg.PruneInterval = time.Second
	}
	if cfg.Listen == nil {
		cfg.Listen = func(_, network, addr string, keepAlive time.Duration) (net.Listener, error) {
			return listen(network, addr, keepAlive)
		}
	}
	s := &Supervisor{cfg: cfg, log: cfg.Logger, failed: make(chan error, 16), process: spec.Process, tally: newTally()}
	s.stopping, s.stop = context.WithCancel(context.Background())
	insts, err := s.build(spec)
	if err != nil {
		return nil, err
	}
	for i, in := range insts {
		if err := in.listen(); err != nil {
			for _, prev := range insts[:i] {
				prev.ln.Close()
			}
			return nil, err
		}
	}
	s.insts = insts
	if cfg.StateFile != "" {
		s.stateLog = rate.Sometimes{First: 1, Interval: time.Minute}
		s.restoreState()
	}
	return s, nil
}

// build makes an instance of every listener of spec, without sockets.
func (s *Supervisor) build(spec Spec) ([]*instance, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	var out []*instance
	for _, l := range spec.Listeners {
		in, err := s.newInstance(l)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, nil
}

// Book is the ledgers of every NDJSON listener, by name.
func (s *Supervisor) Book() *dispatch.Book { return s.cfg.Book }

// Start serves every listener, with its checks and discovery.
func (s *Supervisor) Start() {
	for _, in := range s.snapshot() {
		s.start(in)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopPrune = background(cancel, s.prune, ctx)
}

// Failed reports a listener that failed on its own; the process should
// then shut down.
func (s *Supervisor) Failed() <-chan error { return s.failed }

// Shutdown drains every listener at once, waits for those a reload
// replaced or removed, logs each NDJSON listener's ledger, and reports
// whether nothing was lost: no listener dropped lines at its shutdown and
// every ledger closes.
func (s *Supervisor) Shutdown() (clean bool) {
	if s.stop != nil {
		s.stop() // hand-offs of replaced listeners end now; they drain
	}
	insts := s.snapshot()
	done := make(chan bool, len(insts))
	for _, in := range insts {
		go func() { done <- in.shutdown() }()
	}
	clean = true
	for range insts {
		clean = <-done && clean
	}
	s.draining.Wait()
	if s.stopPrune != nil {
		s.stopPrune()
	}
	if s.cfg.StateFile != "" {
		s.saveState() // the pruner has stopped: this goroutine's alone
	}
	return s.logLedgers() && clean && !s.dirty.Load()
}

// Lost describes, for the log, what exiting now would abandon.
func (s *Supervisor) Lost() []any {
	var out []any
	for _, in := range s.snapshot() {
		out = append(out, in.mode.Lost(in.srv)...)
	}
	return out
}

// Listeners is what the admin API lists.
func (s *Supervisor) Listeners() []admin.Listener {
	var out []admin.Listener
	for _, in := range s.snapshot() {
		out = append(out, in.shown)
	}
	return out
}

// Addrs returns each listener's address, by name.
func (s *Supervisor) Addrs() map[string]net.Addr {
	out := map[string]net.Addr{}
	for _, in := range s.snapshot() {
		out[in.name] = in.ln.Addr()
	}
	return out
}

// logLedgers logs each NDJSON listener's ledger over its whole life
// (replaced and removed instances included) and reports whether none
// dropped lines at shutdown and every ledger closes.
func (s *Supervisor) logLedgers() (ok bool) {
	ok = true
	book := s.cfg.Book
	for _, name := range book.Names() {
		l := book.Net(name) // spooled: what is left in the spool now
		attrs := []any{"listener", name, "received", l.Received, "delivered", l.Delivered,
			"dropped", l.DroppedTotal(), "spooled", l.Spooled, "replayed", l.Replayed, "in_flight", l.InFlight}
		for _, reason := range dispatch.DropReasons {
			attrs = append(attrs, "dropped_"+reason, l.Dropped[reason])
		}
		level := slog.LevelInfo
		if l.Dropped[dispatch.DropShutdown] > 0 || l.InFlight > 0 || !l.Closed() {
			level, ok = slog.LevelError, false
		}
		s.log.Log(context.Background(), level, "ledger", attrs...)
	}
	return ok
}

func (s *Supervisor) snapshot() []*instance {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.insts)
}

// start starts in and reports its listener failing on its own.
func (s *Supervisor) start(in *instance) {
	in.tally = s.tally
	s.tally.start(in)
	in.start(func() {
		if s.cfg.StateFile != "" {
			s.applyPending() // after the first DNS answer, before serving
		}
	})
	go func() {
		// Servers signal Err only when they fail on their own, so the
		// wait ends at the instance's shutdown too: a reload replaces
		// listeners for as long as the process runs, and each waiter
		// would keep its server's memory.
		select {
		case err := <-in.srv.Err():
			if err != nil {
				select {
				case s.failed <- fmt.Errorf("listener %q: %w", in.name, err):
				case <-in.stopped:
				}
			}
		case <-in.stopped:
		}
	}()
}

// prune drops, for every listener, the targets a reload or DNS removed
// once they have drained. It is the only pruner.
func (s *Supervisor) prune(ctx context.Context) {
	tick := time.NewTicker(s.cfg.PruneInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s.pruneOnce()
			if s.cfg.StateFile != "" {
				s.saveState()
			}
		}
	}
}

func (s *Supervisor) pruneOnce() {
	s.mu.Lock()
	insts := slices.Clone(s.insts)
	s.mu.Unlock()
	for _, in := range insts {
		for _, t := range in.srv.Set().Prune() {
			in.log.Info("target left the set: drained", "target", t.Addr)
		}
	}
}

// instance is one running listener: its spec, server and socket, and the
// checks and DNS discovery that run beside it.
type instance struct {
	// name and mode never change, so any goroutine may read them; spec
	// is the main goroutine's (reloads change it).
	name   string
	mode   Mode
	spec   Listener
	log    *slog.Logger
	book   *dispatch.Book
	srv    Server
	checks *health.Checker
	disc   *discovery.Discoverer
	ln     net.Listener
	shown  admin.Listener // what the admin API shows
	tally  *tally         // the supervisor's, once started

	stopChecks, stopDiscovery func()
	stopped                   chan struct{} // closed by shutdown
	stopOnce                  sync.Once
	open                      func(name, network, addr string, keepAlive time.Duration) (net.Listener, error)

	// next is the instance a reload put in this one's place and handed its
	// clients to (drainHandingOff): a hand-off still running from an
	// earlier reload follows it to the newest. Nil when the replacement
	// could not take them (a change to how connections are made).
	next atomic.Pointer[instance]
	// replacedBy is the instance a reload put in this one's place, in
	// every case (next only when it took the clients); nil when the
	// listener was removed. A retired server's undelivered lines follow
	// it to the newest.
	replacedBy atomic.Pointer[instance]
}

// newInstance makes the server of l and what runs beside it.
func (s *Supervisor) newInstance(l Listener) (*instance, error) {
	in := &instance{name: l.Name, mode: l.Mode, spec: l, log: l.Logger, book: s.cfg.Book, open: s.cfg.Listen, stopped: make(chan struct{})}
	if in.log == nil {
		in.log = s.log
	}
	var err error
	if in.srv, err = l.Mode.New(l.Name, s.cfg.Book); err != nil {
		return nil, &Error{Listener: l.Name, Err: err}
	}
	if l.Health != nil {
		hc := *l.Health
		hc.Name = l.Name
		if in.checks, err = health.New(hc, in.srv.Set()); err != nil {
			return nil, &Error{Listener: l.Name, Err: err}
		}
	}
	if l.Discovery != nil {
		if in.disc, err = discovery.New(*l.Discovery, in.srv.Set()); err != nil {
			return nil, &Error{Listener: l.Name, Err: err}
		}
	}
	return in, nil
}

// sock names the instance's socket: network and address.
func (in *instance) sock() string { return in.mode.Network() + " " + in.spec.Addr }

// listen opens the instance's socket.
func (in *instance) listen() error {
	ln, err := in.open(in.spec.Name, in.mode.Network(), in.spec.Addr, in.spec.Mode.KeepAlive())
	if err != nil {
		return &Error{Listener: in.spec.Name, Listen: true, Err: fmt.Errorf("listen on %s: %w", in.spec.Addr, err)}
	}
	in.use(asConfigured(ln, in.spec.Addr))
	return nil
}

// asConfigured is ln, whose Addr says 0.0.0.0 when it was asked for. Go
// opens one dual-stack socket for 0.0.0.0 (IPv6 clients are served too),
// and would show it as [::], which the logs and the admin API then said
// although the settings said 0.0.0.0.
func asConfigured(ln net.Listener, addr string) net.Listener {
	host, _, _ := net.SplitHostPort(addr)
	if p, ok := ln.(*listener.Packet); ok {
		if a, isUDP := p.LocalAddr().(*net.UDPAddr); isUDP && host == "0.0.0.0" && a.IP.To4() == nil && a.IP.IsUnspecified() {
			return listener.NewPacket(p.UDPConn, &net.UDPAddr{IP: net.IPv4zero, Port: a.Port})
		}
		return ln
	}
	tl, ok := ln.(*net.TCPListener)
	if a, isTCP := ln.Addr().(*net.TCPAddr); ok && isTCP && host == "0.0.0.0" && a.IP.To4() == nil && a.IP.IsUnspecified() {
		return shownListener{TCPListener: tl, addr: &net.TCPAddr{IP: net.IPv4zero, Port: a.Port}}
	}
	return ln
}

// shownListener is a TCP listener that shows another (equivalent) address.
type shownListener struct {
	*net.TCPListener
	addr net.Addr
}

// Addr is the address as configured.
func (l shownListener) Addr() net.Addr { return l.addr }

// Unwrap is the socket, for the listener's raw accepts
// (listener.TCPWrapper).
func (l shownListener) Unwrap() *net.TCPListener { return l.TCPListener }

// use makes ln the instance's listening socket.
func (in *instance) use(ln net.Listener) {
	in.ln = ln
	in.shown = shown{in: in, addr: ln.Addr().String()}
}

// shown adapts an instance to admin.Listener.
type shown struct {
	in   *instance
	addr string
}

// Info is the instance's, with the connections of the listener's other
// instances, running or stopped (tally).
func (a shown) Info() admin.ListenerInfo {
	info := a.in.mode.Info(a.in.srv, a.in.name, a.addr, a.in.book)
	if a.in.tally == nil {
		return info
	}
	return a.in.tally.listener(a.in, info)
}

func (a shown) Targets() *upstream.Set { return a.in.srv.Set() }

// TargetStats is t's stats with the counts of the listener's other
// instances, running or stopped (tally).
func (a shown) TargetStats(t *upstream.Target) upstream.Stats {
	st := t.Stats()
	if a.in.tally == nil {
		return st
	}
	return a.in.tally.total(a.in, st)
}

// takeOver gives in the listening socket of o, which stops accepting: the
// connections waiting in its backlog are in's to serve, so a reload resets
// none. It reports false when o's socket cannot be handed over (or is of
// another network).
func (in *instance) takeOver(o *instance) bool {
	if in.mode.Network() != o.mode.Network() {
		return false
	}
	ln := o.srv.Handover()
	if ln == nil {
		return false
	}
	in.use(asConfigured(ln, in.spec.Addr)) // a new listener when event loops accepted
	return true
}

// start resolves DNS targets once, then serves, checks and resolves in the
// background.
func (in *instance) start(beforeServing func()) {
	if in.disc != nil {
		in.stopDiscovery = runDiscovery(in.disc)
	}
	beforeServing()
	in.srv.Start(in.ln)
	if in.checks != nil {
		ctx, cancel := context.WithCancel(context.Background())
		in.stopChecks = background(cancel, in.checks.Run, ctx)
	}
}

// runDiscovery resolves d's names and then goes on in the background. A
// discoverer seeded from the one it replaces (a reload) makes its first
// lookups in the background too: the reload does not wait for DNS.
func runDiscovery(d *discovery.Discoverer) func() {
	ctx, cancel := context.WithCancel(context.Background())
	if !d.Seeded() {
		d.Refresh(ctx)
		return background(cancel, d.Run, ctx)
	}
	return background(cancel, func(ctx context.Context) {
		d.Refresh(ctx)
		d.Run(ctx)
	}, ctx)
}

// background runs run(ctx) and returns a function that stops it and waits.
func background(cancel context.CancelFunc, run func(context.Context), ctx context.Context) func() {
	done := make(chan struct{})
	go func() { defer close(done); run(ctx) }()
	return func() { cancel(); <-done }
}

// shutdown drains the server, then stops what runs beside it.
func (in *instance) shutdown() bool {
	clean := in.srv.Drain()
	in.stopOnce.Do(func() {
		close(in.stopped)
		if in.tally != nil {
			in.tally.stop(in)
		}
	})
	for _, stop := range []func(){in.stopChecks, in.stopDiscovery} {
		if stop != nil {
			stop()
		}
	}
	return clean
}

// Close closes the sockets of a Supervisor that was never started.
func (s *Supervisor) Close() {
	if s.stop != nil {
		s.stop()
	}
	for _, in := range s.snapshot() {
		in.ln.Close()
	}
}

// Check makes every server of spec, as New does, without opening sockets
// or starting anything: what `ndlb check-config` runs.
func Check(spec Spec) error {
	s := &Supervisor{cfg: Config{Book: dispatch.NewBook(), Listen: func(_, network, addr string, ka time.Duration) (net.Listener, error) {
		return listen(network, addr, ka)
	}}, log: slog.New(slog.DiscardHandler)}
	_, err := s.build(spec)
	return err
}
