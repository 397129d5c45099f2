package ndjson

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/time/rate"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/internal/mono"
	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/pool"
	"github.com/ndlb/ndlb/route"
	"github.com/ndlb/ndlb/spool"
	"github.com/ndlb/ndlb/upstream"
)

// Defaults for Config.
const (
	// DefaultDrainTimeout is Config.DrainTimeout.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultDeliverTimeout is Config.DeliverTimeout.
	DefaultDeliverTimeout = 30 * time.Second
	// DefaultClientMemory is Config.ClientMemory: 64 MiB.
	DefaultClientMemory = 64 << 20
	// DefaultLineTimeout is Config.LineTimeout.
	DefaultLineTimeout = time.Minute
	// DefaultReadCoalesce is Config.ReadCoalesce.
	DefaultReadCoalesce = time.Millisecond
)

// ErrConfig is wrapped by Config.Validate's errors.
var ErrConfig = errors.New("ndjson: invalid config")

// Config is the whole NDJSON mode. Start from DefaultConfig.
type Config struct {
	Targets []string
	// Name labels the server's metrics (ndlb.listener); "" means "default".
	Name string
	// Discovered means targets also come from DNS discovery, so Targets
	// may start empty.
	Discovered bool
	Framer     framer.Config
	Queue      dispatch.Config
	Pool       pool.Config
	// Listener configures the client side: TLS termination, PROXY
	// protocol, the connection limit. Its Logger is set from Logger.
	Listener listener.Config
	// DrainTimeout is how long clients may go on sending after Shutdown.
	DrainTimeout time.Duration
	// DeliverTimeout is how much longer delivery may take after that.
	DeliverTimeout time.Duration
	// ClientMemory bounds, in bytes, what every client connection holds
	// together before its lines reach the queue: read buffers, partial
	// lines, TLS read buffers, batches waiting to be queued (see
	// framer.Budget for what happens when it is spent).
	ClientMemory int64
	// LineTimeout is how long a client may hold a partial line without
	// sending; then the fragment is dropped as incomplete and the
	// connection closed. Zero means no limit.
	LineTimeout time.Duration
	// ReadCoalesce, if positive, lets the bytes of a fast client gather
	// in the kernel: once three quarters of what it sends per
	// ReadCoalesce come to half a read (Framer.ReadBytes / 2, at most
	// 256 KiB) or more, its reader is woken only when that much is
	// waiting (rounded down to a power of two, at most 256 KiB and half
	// the socket's receive buffer), a few times per ReadCoalesce at most,
	// so that each wake-up, and the batches and writes to targets after
	// it, carry several of its writes; a byte waits at most about
	// ReadCoalesce longer. Slower clients are read as their bytes come.
	// Plain TCP clients on Linux 5.11 or later (SO_RCVLOWAT); zero turns
	// it off.
	ReadCoalesce time.Duration
	// ClientRate, if positive, bounds what one client connection may
	// send, in bytes per second: past it, ndlb reads from it no faster,
	// so the client is slowed through TCP, and nothing is dropped.
	ClientRate int64
	// Framing is how clients delimit messages: framer.Newline (the
	// default, also for "") or framer.OctetCounted (RFC 6587, syslog's
	// TCP framing, whose messages may hold newlines).
	Framing framer.Framing
	// TargetFraming is how messages are written to the targets; "" means
	// Framing. Octet-counted clients to newline targets: a message's
	// newlines are written "#012" (see framer.OctetReader); newline
	// clients to octet-counted targets: each line is a message.
	TargetFraming framer.Framing
	// Spool, if set, is the write-ahead spool: every batch read is
	// appended to it before it is queued, and leaves it once a target
	// acknowledged it; at start, what a previous process left is
	// delivered first. The queue then holds only a window of the spool.
	// Its Dir is this listener's own.
	Spool *spool.Config
	// Route routes each message to a target group and a target by a key
	// taken from it (see package route); its zero value routes nothing.
	// With Route.Groups, the targets are the groups' and Targets must be
	// empty.
	Route route.Config
	// UDP makes the listener one of datagrams: each holds one or more
	// lines (a missing final newline is added), framed by the same limits
	// and queued like a connection's. TLS, PROXY headers, per-source
	// limits and ClientRate do not apply to it.
	UDP bool
	// Book, if set, is where the server files its ledger under its name,
	// and what reports the ledger metrics (the caller registers them with
	// ObserveLedgers). Nil: the server keeps and reports its own.
	Book *dispatch.Book
	// Logger receives every log; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the documented defaults, without targets.
func DefaultConfig() Config {
	return Config{
		Framer:         framer.DefaultConfig(),
		Queue:          dispatch.DefaultConfig(),
		Pool:           pool.DefaultConfig(),
		DrainTimeout:   DefaultDrainTimeout,
		DeliverTimeout: DefaultDeliverTimeout,
		ClientMemory:   DefaultClientMemory,
		LineTimeout:    DefaultLineTimeout,
		ReadCoalesce:   DefaultReadCoalesce,
	}
}

// framing is the framer's configuration for a client connection. From
// octet-counted clients to octet-counted targets its line bound is twice
// MaxLineBytes: the octet reader drops a message over the limit by its
// length prefix, which is what the targets get, and inside it escapes
// backslashes and newlines (framer.OctetReader), which may double a
// message's length; the framer must not drop for that.
func (c Config) framing() framer.Config {
	fc := c.Framer
	if c.Framing == framer.OctetCounted && cmp.Or(c.TargetFraming, c.Framing) == framer.OctetCounted {
		fc.MaxLineBytes = min(2*fc.MaxLineBytes, framer.MaxMaxLineBytes)
	}
	return fc
}

// Validate reports the first problem as an *invalid.Error naming the field
// ("Pool.Connections" for one of a nested config's), wrapping ErrConfig
// (and the nested package's).
func (c Config) Validate() error {
	bad := func(field, format string, a ...any) error { return invalid.Field(ErrConfig, field, format, a...) }
	if err := c.Framer.Validate(); err != nil {
		return invalid.In(ErrConfig, "Framer", err)
	}
	if err := c.Queue.Validate(c.Framer); err != nil {
		return invalid.In(ErrConfig, "Queue", err)
	}
	switch min := int64(2 * c.framing().MaxBatchBytes()); {
	case len(c.Targets) == 0 && !c.Discovered && len(c.Route.Groups) == 0:
		return bad("Targets", "no targets")
	case c.DrainTimeout <= 0 || c.DrainTimeout > invalid.MaxTimeout:
		return bad("DrainTimeout", "drain timeout %s: want more than 0, at most %s", c.DrainTimeout, invalid.MaxTimeout)
	case c.DeliverTimeout <= 0 || c.DeliverTimeout > invalid.MaxTimeout:
		return bad("DeliverTimeout", "deliver timeout %s: want more than 0, at most %s", c.DeliverTimeout, invalid.MaxTimeout)
	case c.LineTimeout < 0 || c.LineTimeout > invalid.MaxTimeout || c.LineTimeout > 0 && c.LineTimeout < invalid.MinTimeout:
		return bad("LineTimeout", "line timeout %s: want 0 (no limit) or %s to %s", c.LineTimeout, invalid.MinTimeout, invalid.MaxTimeout)
	case c.ReadCoalesce < 0:
		return bad("ReadCoalesce", "read coalescing of %s must not be negative (0: off)", c.ReadCoalesce)
	case c.ClientRate < 0:
		return bad("ClientRate", "client rate of %d bytes/s must not be negative (0: no limit)", c.ClientRate)
	case c.ClientMemory < min:
		return bad("ClientMemory", "client memory of %s cannot hold two longest lines and their reads (%s)", invalid.Bytes(c.ClientMemory), invalid.Bytes(min))
	}
	if err := c.Pool.Validate(); err != nil {
		return invalid.In(ErrConfig, "Pool", err)
	}
	if err := c.Route.Validate(); err != nil {
		return invalid.In(ErrConfig, "Route", err)
	}
	if c.Spool != nil && c.Route.Enabled() {
		return bad("Spool", "a spool with routing by key is not supported yet")
	}
	if len(c.Route.Groups) > 0 && (len(c.Targets) > 0 || c.Discovered) {
		return bad("Targets", "with target groups, every target is in a group: list none for the listener itself")
	}
	for field, f := range map[string]framer.Framing{"Framing": c.Framing, "TargetFraming": c.TargetFraming} {
		if f != "" && f != framer.Newline && f != framer.OctetCounted {
			return bad(field, "framing %q: want newline or octet-counted", f)
		}
	}
	if c.UDP && c.Framing == framer.OctetCounted {
		return bad("Framing", "a datagram is one message already: octet counting is for TCP")
	}
	if l := c.Listener; c.UDP {
		switch {
		case l.TLS != nil:
			return bad("Listener.TLS", "a UDP listener cannot terminate TLS")
		case l.AcceptProxy || len(l.ProxyFrom) > 0:
			return bad("Listener.AcceptProxy", "a UDP listener cannot read PROXY headers")
		case l.MaxConnsPerSource != 0 || l.ConnRatePerSource != 0:
			return bad("Listener.MaxConnsPerSource", "per-source limits apply to TCP connections, not datagrams")
		case c.ClientRate != 0:
			return bad("ClientRate", "a client rate slows TCP connections; datagrams cannot be slowed")
		}
	}
	return invalid.In(ErrConfig, "Listener", c.Listener.Validate())
}

// Server is the NDJSON mode: listener, framers, queue and pool.
type Server struct {
	cfg       Config
	log       *slog.Logger
	bufs      *framer.Pool
	budget    *framer.Budget
	ledger    *dispatch.Ledger
	book      *dispatch.Book // cfg.Book, or the server's own
	q         *dispatch.Queue
	set       *upstream.Set
	router    *route.Router               // nil without routing
	sp        atomic.Pointer[spool.Spool] // nil without a spool, and until it opens
	fed       chan struct{}               // closed when the spool's feeder stopped (or never started)
	unqueued  *framer.Batch               // a record the feeder read and could not queue at the hard stop; written by feed before fed closes
	spoolMu   sync.Mutex                  // serialises the spool's opening and the shutdown
	noSpool   bool                        // the shutdown began: do not open it; guarded by spoolMu
	spoolStop chan struct{}               // closed when the shutdown begins: openSpool stops waiting
	pool      *pool.Pool
	ln        *listener.Listener // nil for UDP
	udp       *datagrams         // UDP only
	udpWarn   rate.Sometimes
	binWarn   rate.Sometimes // binary lines from TCP clients
	memWarn   rate.Sometimes // lines dropped for the client memory budget
	binary    atomic.Uint64  // lines from TCP clients dropped for a NUL byte

	// hard is cancelled when delivery must stop: pushes and the pool
	// give up, and what is left is counted as dropped.
	hard       context.Context
	hardCancel context.CancelFunc
	// untilSpool is hard, also cancelled when the spool opens (with a
	// spool): a client waiting for room in the queue in memory, before
	// the spool opened, goes on to the spool then.
	untilSpool      context.Context
	untilSpoolOpens context.CancelFunc
	// retired, set by Retire before Shutdown, defers the end of delivery
	// of a server a reload replaced or removed until the process stops.
	retired  context.Context        // never done when nil
	next     func() *Server         // with retired: the listener's server now
	handTo   atomic.Pointer[Server] // the successor expire chose
	stopping atomic.Bool            // Shutdown has begun
	serveErr chan error
	poolDone chan struct{}
	shutdown sync.Once
	summary  Summary

	oversize, incomplete, memory, dropShutdown atomic.Uint64
	spoolErrors                                atomic.Uint64
	unspooled                                  atomic.Uint64          // lines queued in memory while the spool was not open
	spoolLastErr                               atomic.Pointer[string] // the last failed append's error
	spoolFailedAt                              atomic.Int64           // when an append last failed (mono); 0: never
	failingFor                                 atomic.Int64           // Stats.SpoolFailing stays true this long (ns) after a failed append
	heldBack                                   atomic.Int64           // clients in push to memory after a failed append (Stats.SpoolHeldBack)
	spoolWarn                                  rate.Sometimes         // logs failed appends
	lineTimeouts, cutAtDrain, badFrames        atomic.Uint64
	metrics                                    []metric.Registration

	scratch struct {
		sync.Mutex
		buf []byte // for counting what is dropped unread at shutdown
	}

	clients  sync.Map // *clientConn → struct{}: the connections HandOff can move
	giving   atomic.Pointer[handOff]
	resuming sync.Map // ksuid.KSUID → resumeAt: connections Adopt took over inside a dropped message
}

// New returns a server for a valid cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Pool.Logger = cfg.Logger
	cfg.Pool.Name = cfg.Name
	if cfg.Framing == "" {
		cfg.Framing = framer.Newline
	}
	if cfg.TargetFraming == "" {
		cfg.TargetFraming = cfg.Framing
	}
	if cfg.TargetFraming == framer.OctetCounted {
		reversible := cfg.Framing == framer.OctetCounted
		cfg.Pool.Encode = func(dst, data []byte) []byte { return framer.EncodeOctet(dst, data, reversible) }
		if reversible {
			cfg.Route.Unescape = framer.UnescapeOctet // keys from the messages as sent
		}
	}
	s := &Server{cfg: cfg, log: cfg.Logger, bufs: framer.NewPool(), budget: framer.NewBudget(cfg.ClientMemory),
		ledger: dispatch.NewLedger(), book: cfg.Book, set: upstream.NewSet(cfg.Targets),
		spoolWarn: rate.Sometimes{First: 1, Interval: 10 * time.Second}}
	s.failingFor.Store(int64(spoolFailingFor))
	if len(cfg.Route.Groups) > 0 {
		s.set.UpdateGroups(cfg.Route.TargetGroups())
	}
	qc := cfg.Queue
	qc.Ledger = s.ledger
	if cfg.Spool != nil {
		// A directory ndlb cannot write is an error now; the spool itself
		// opens at Start (a reload builds instances it may not run, and
		// the one it replaces holds the spool until it stops).
		if err := spool.Check(cfg.Spool.Dir); err != nil {
			return nil, fmt.Errorf("listener %s: %w", s.name(), err)
		}
		qc.OnDone = func(b *framer.Batch) {
			if sp := s.sp.Load(); sp != nil && b.Spool.Set {
				sp.Ack(spool.ID{Seg: b.Spool.Seg, Off: b.Spool.Off}, b.Spool.Lines)
			}
		}
	}
	if cfg.Route.Enabled() {
		qc.Orphans = func(bs []*framer.Batch) { s.router.Orphans(bs) }
	}
	s.q = dispatch.New(qc)
	if s.book == nil {
		s.book = dispatch.NewBook()
	}
	if cfg.Route.Enabled() {
		s.router = route.New(cfg.Route, s.q, s.set, s.ledger, s.bufs, s.log)
		cfg.Pool.Lanes = s.router.Lanes
		s.cfg.Pool.Lanes = s.router.Lanes
	}
	s.pool = pool.New(cfg.Pool, s.q, s.set)
	s.hard, s.hardCancel = context.WithCancel(context.Background())
	s.untilSpool, s.untilSpoolOpens = context.WithCancel(s.hard)
	return s, nil
}

// Start serves ln in the background (a *listener.Packet for UDP). Call
// Shutdown to stop.
func (s *Server) Start(ln net.Listener) {
	lc := s.cfg.Listener
	lc.Logger = s.log
	s.serveErr = make(chan error, 1)
	s.poolDone = make(chan struct{})
	s.book.Add(s.name(), s.ledger) // only servers that run are on the books
	if pc, ok := ln.(*listener.Packet); ok {
		s.udpWarn = rate.Sometimes{First: 1, Interval: 10 * time.Second}
		s.startDatagrams(pc)
	} else {
		s.binWarn = rate.Sometimes{First: 1, Interval: 10 * time.Second}
		s.memWarn = rate.Sometimes{First: 1, Interval: 10 * time.Second}
		s.ln = listener.New(ln, s, lc)
		go func() { s.serveErr <- s.ln.Serve() }()
	}
	if s.cfg.Spool != nil {
		s.fed, s.spoolStop = make(chan struct{}), make(chan struct{})
		if sp, err := spool.Open(s.spoolConfig()); err == nil {
			s.adoptSpool(sp) // before the first client: the usual case
			go s.feed(sp)
		} else {
			go s.openSpool(err)
		}
	}
	if s.router != nil {
		routed := make(chan struct{})
		go func() { defer close(routed); s.router.Run(s.hard) }()
		go func() { defer close(s.poolDone); s.pool.Run(s.hard); <-routed }()
	} else {
		go func() { defer close(s.poolDone); s.pool.Run(s.hard) }()
	}
	regs := []func() (metric.Registration, error){
		func() (metric.Registration, error) { return s.ln.ObserveMetrics(s.attrs()...) },
		func() (metric.Registration, error) { return s.observe(s.attrs()...) },
		func() (metric.Registration, error) { return s.set.ObserveMetrics(s.name()) },
	}
	if s.cfg.Book == nil {
		regs = append(regs, func() (metric.Registration, error) { return ObserveLedgers(s.book) })
	}
	if s.router != nil {
		regs = append(regs, func() (metric.Registration, error) { return s.router.ObserveMetrics(s.attrs()...) })
	}
	if s.cfg.Spool != nil {
		regs = append(regs, func() (metric.Registration, error) { return s.observeSpool(s.attrs()...) })
	}
	if s.ln == nil {
		regs = regs[1:] // no connections
	}
	s.metrics = registerAll(s.log, regs...)
	targets := s.cfg.Targets
	if len(s.cfg.Route.Groups) > 0 {
		targets = nil
		for _, t := range s.set.Targets() {
			targets = append(targets, t.Group()+":"+t.Addr)
		}
	}
	s.log.Info("listening", "addr", ln.Addr().String(), "mode", "ndjson", "proto", network(s.udp != nil), "targets", targets,
		"connections_per_target", s.cfg.Pool.Connections, "tls", lc.TLS != nil,
		"accept_proxy", lc.AcceptProxy, "max_conns", lc.MaxConns, "client_memory", s.cfg.ClientMemory,
		"line_timeout", s.cfg.LineTimeout.String(), "route", s.cfg.Route.String())
}

// push queues b, through the router when there is one, and takes it. It
// returns the lines not queued because the shutdown deadline passed or the
// queue closed (the caller counts them).
func (s *Server) push(b *framer.Batch, sc **route.Scratch) (notQueued int, err error) {
	sp := s.sp.Load()
	if sp == nil && s.cfg.Spool != nil {
		s.unspooled.Add(uint64(b.Lines))
	}
	if sp != nil {
		// When the feeder has caught up and the queue has room, the
		// batch goes to the queue from memory once it is spooled:
		// only batches that wait are read back from the disk.
		// The room is taken only then, under the spool's lock: a client
		// waiting for room in a full spool holds none of the queue's.
		var take func() bool
		if s.router == nil {
			take = func() bool { return s.q.Reserve(b) }
		}
		id, handed, err := sp.AppendHandOff(b.Data, b.Lines, take)
		if err != nil && !errors.Is(err, spool.ErrClosed) {
			s.spoolFailedAt.Store(mono.Now())
		}
		switch {
		case err == nil && handed:
			s.ledger.Received(uint64(b.Lines))
			b.Spool = framer.SpoolRef{Seg: id.Seg, Off: id.Off, Lines: b.Lines, Set: true}
			if s.q.PushReserved(b) != nil {
				b.Release() // the queue closed: the record stays spooled for the next start
			}
			return 0, nil
		case err == nil:
			s.ledger.Received(uint64(b.Lines))
			b.Release()
			return 0, nil
		case errors.Is(err, spool.ErrClosed):
			// The shutdown deadline passed while the spool was full.
			n := b.Lines
			b.Release()
			return n, err
		default:
			n := s.spoolErrors.Add(1)
			msg := err.Error()
			s.spoolLastErr.Store(&msg)
			s.spoolWarn.Do(func() {
				s.log.Error("spool: cannot append; lines go to the queue in memory, without the spool's protection",
					"err", err, "failed_appends", n)
			})
			// While it waits for room there, the listener holds its
			// client back: not ready for more (Stats.SpoolFailing).
			s.heldBack.Add(1)
			defer s.heldBack.Add(-1)
		}
	}
	if s.router != nil {
		if *sc == nil {
			*sc = new(route.Scratch)
		}
		return s.router.Push(s.hard, b, *sc)
	}
	n := b.Lines
	ctx := s.hard
	if sp == nil && s.cfg.Spool != nil {
		ctx = s.untilSpool
	}
	if err := s.q.Push(ctx, b); err != nil {
		if s.hard.Err() == nil && ctx != s.hard && s.sp.Load() != nil {
			// The spool opened while the client waited for room in
			// the queue in memory (every target down): its lines go
			// to the spool, and it goes on sending.
			s.unspooled.Add(^uint64(n - 1))
			return s.push(b, sc)
		}
		if s.hard.Err() != nil && s.handOn(b) == nil {
			// A replaced server past its deadline (a client held back
			// by a full queue stayed, and is read to its end): its
			// replacement takes the lines, as it takes the queue.
			s.ledger.Received(uint64(n))
			return 0, nil
		}
		b.Release()
		return n, err
	}
	return 0, nil
}

// feed moves the spool's records into the queue, oldest first, as room
// appears: what a previous process left, then what clients send. It
// stops when the spool's input ended and every record is queued, or at
// the shutdown deadline (what is not queued stays in the spool).
// openSpool opens the spool, trying again while another instance holds
// it (the one a reload replaces, which drains first); until then lines go
// to the queue in memory. Then it feeds.
func (s *Server) openSpool(first error) {
	sc := s.spoolConfig()
	s.log.Warn("spool not open yet: lines go to the queue in memory until it is", "dir", sc.Dir, "err", first)
	wait := 100 * time.Millisecond
	start := time.Now()
	held := rate.Sometimes{Interval: time.Minute}
	for {
		select {
		case <-time.After(wait):
		case <-s.spoolStop:
		}
		if errors.Is(first, spool.ErrInUse) && time.Since(start) > spoolHeldWarning {
			// Longer than a reload or an upgrade hands it over: another
			// process (or listener) uses the directory.
			held.Do(func() {
				s.log.Error("spool still not open: lines go to the queue in memory, without the spool's protection; another process holds the directory (an older ndlb still delivering after an upgrade, or another ndlb with the same --spool-dir)",
					"dir", sc.Dir, "for", time.Since(start).Round(time.Second).String(), "lines_unspooled", s.unspooled.Load())
			})
		}
		wait = min(2*wait, 5*time.Second)
		s.spoolMu.Lock()
		if s.noSpool {
			s.spoolMu.Unlock()
			close(s.fed)
			return
		}
		sp, err := spool.Open(sc)
		if err == nil {
			s.adoptSpool(sp)
			s.spoolMu.Unlock()
			s.log.Info("spool open: lines are spooled again", "dir", sc.Dir)
			s.feed(sp)
			return
		}
		s.spoolMu.Unlock()
		first = err
		if !errors.Is(err, spool.ErrInUse) {
			s.log.Error("spool cannot open; lines go to the queue in memory", "dir", sc.Dir, "err", err)
		}
	}
}

// leftInProcess is what instances of this process left in their spools
// when they stopped, by directory: the instance a reload starts in its
// place opens the spool and replays them (dispatch.LedgerStats.Inherited).
var leftInProcess = spoolsLeft{m: map[string]*spoolLeft{}}

// spoolsLeft is lines left in spools, by directory.
type spoolsLeft struct {
	mu sync.Mutex
	m  map[string]*spoolLeft // guarded by mu
}

// spoolLeft is what an instance left in a spool: lines, once ready is
// closed.
type spoolLeft struct {
	ready chan struct{}
	lines uint64
}

// closing records that the spool in dir is about to close: its count
// comes (put) once it is closed, and an instance that opens the spool
// meanwhile waits for it in take.
func (l *spoolsLeft) closing(dir string) {
	l.mu.Lock()
	l.m[spoolKey(dir)] = &spoolLeft{ready: make(chan struct{})}
	l.mu.Unlock()
}

// put records that lines were left in the spool in dir, which closing
// announced.
func (l *spoolsLeft) put(dir string, lines uint64) {
	l.mu.Lock()
	if e := l.m[spoolKey(dir)]; e != nil {
		e.lines = lines
		close(e.ready)
	}
	l.mu.Unlock()
}

// take returns what was left in dir, and forgets it.
func (l *spoolsLeft) take(dir string) uint64 {
	k := spoolKey(dir)
	l.mu.Lock()
	e := l.m[k]
	delete(l.m, k)
	l.mu.Unlock()
	if e == nil {
		return 0
	}
	select {
	case <-e.ready:
		return e.lines
	case <-time.After(time.Second): // counted just after the close; never this long
		return 0
	}
}

func spoolKey(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return filepath.Clean(dir)
}

// spoolHeldWarning is how long the spool may stay unopened before that is
// logged as an error: a replaced instance or an upgraded process hands it
// over well within it.
const spoolHeldWarning = 30 * time.Second

// adoptSpool makes sp the server's. The lines it holds (left by the
// instance or process before) are received again, in this instance's
// ledger: the one before counted them as spooled when it stopped.
func (s *Server) adoptSpool(sp *spool.Spool) {
	st := sp.Stats()
	if st.CorruptTails > 0 {
		s.log.Warn("spool: damaged records found at open and cut out; the whole records after them are kept",
			"dir", s.cfg.Spool.Dir, "segments_cut", st.CorruptTails, "bytes_cut", st.CorruptBytes, "lines_kept", st.Lines)
	}
	s.ledger.Replayed(uint64(st.Lines))
	s.ledger.Inherited(min(uint64(st.Lines), leftInProcess.take(s.cfg.Spool.Dir)))
	s.sp.Store(sp)
	s.untilSpoolOpens() // after the Store: a push it wakes finds the spool
	// At the shutdown deadline, a client waiting for room in a full
	// spool gives up, as one waiting for the queue does.
	context.AfterFunc(s.hard, sp.EndInput)
}

// spoolConfig is the spool's config, with its drops counted in the ledger.
func (s *Server) spoolConfig() spool.Config {
	sc := *s.cfg.Spool
	sc.OnDrop = func(_, lines int) { s.ledger.Dropped(dispatch.DropSpoolFull, uint64(lines)) }
	sc.OnLost = func(records, lines int, err error) {
		s.log.Error("spool: records could not be read back; their lines are lost", "dir", sc.Dir,
			"records", records, "lines", lines, "err", err)
		s.ledger.Dropped(dispatch.DropSpoolLost, uint64(lines))
	}
	return sc
}

func (s *Server) feed(sp *spool.Spool) {
	defer close(s.fed)
	wait := 100 * time.Millisecond
	warn := rate.Sometimes{First: 1, Interval: 10 * time.Second}
	for {
		var b *framer.Batch
		rec, err := sp.NextInto(func(n int) []byte {
			if b != nil {
				b.Release() // a record that did not check: Next goes on to the next
			}
			b = s.bufs.GetEmpty(n)
			return b.Data[:n]
		})
		if err != nil {
			if b != nil {
				b.Release()
			}
			if errors.Is(err, io.EOF) || errors.Is(err, spool.ErrClosed) {
				return
			}
			// Out of file descriptors, an I/O error: it may pass, and
			// the record stays where it is. Try again.
			warn.Do(func() {
				s.log.Error("spool: cannot read; spooled lines wait until it can", "err", err)
			})
			select {
			case <-time.After(wait):
			case <-s.hard.Done():
				return
			}
			wait = min(2*wait, 5*time.Second)
			continue
		}
		wait = 100 * time.Millisecond
		b.Data, b.Lines = rec.Data, rec.Lines
		b.Spool = framer.SpoolRef{Seg: rec.ID.Seg, Off: rec.ID.Off, Lines: rec.Lines, Set: true}
		if err := s.q.PushCounted(s.hard, b); err != nil {
			// The record stays in the spool for the next start; Shutdown
			// counts it with what the queue holds.
			s.unqueued = b
			return
		}
	}
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr {
	if s.udp != nil {
		return s.udp.pc.Addr()
	}
	return s.ln.Addr()
}

func network(udp bool) string {
	if udp {
		return "udp"
	}
	return "tcp"
}

// Err is signalled if the listener fails on its own (not by Shutdown).
func (s *Server) Err() <-chan error { return s.serveErr }

// ServeConn frames one client connection into the queue. It implements
// listener.Handler.
func (s *Server) ServeConn(c *listener.Conn) {
	cs := &clientConn{s: s, c: c, start: time.Now(), warn: rate.Sometimes{First: 1, Interval: time.Second}}
	c.Log.Debug("client connected")
	cs.src = clientReader(c, s.cfg.Framer.ReadBytes, s.cfg.ReadCoalesce)
	cs.r = cs.src
	var res resumeAt
	if v, ok := s.resuming.LoadAndDelete(c.ID); ok {
		res = v.(resumeAt)
	}
	if s.cfg.Framing == framer.OctetCounted {
		// It reads through the client reader, which holds what came
		// with a PROXY header (or a hand-over) and does the final reads
		// at the deadline. A hand-over rewinds it to the start of the
		// frame in progress (clientConn.handOff).
		inner := cs.src
		readBytes := s.cfg.Framer.ReadBytes
		if _, isBR := inner.(framer.BufferReader); !isBR || isTLS(inner) {
			readBytes = min(readBytes, tlsRecordBytes) // see serve
		}
		o := framer.NewOctetReader(inner, readBytes, s.cfg.Framer.MaxLineBytes,
			s.cfg.TargetFraming == framer.OctetCounted)
		cs.final = func(p []byte) (int, error) { return readFinal(c, inner, p) }
		o.OnOversize = func(n int) { cs.dropped(framer.Drop{Reason: framer.ReasonOversize, Bytes: n}) }
		o.Skip(res.skipBytes)
		cs.r = o
	}
	skipping := res.skipping
	movable := true
	cs.idleFrom = res.idleFrom
	switch r := cs.src.(type) {
	case *idleReader:
		r.moving, r.heard = &cs.moving, &cs.heard
	case *tlsReader:
		r.moving, r.heard = &cs.moving, &cs.heard
	default:
		movable = false
	}
	if movable {
		s.clients.Store(cs, struct{}{})
		defer func() {
			s.clients.Delete(cs)
			cs.settled(true)
		}()
		if h := s.giving.Load(); h != nil && (h.tls || !isTLS(cs.src)) { // a HandOff began as it was tracked
			cs.moving.Store(true)
			_ = c.SetReadDeadline(time.Unix(1, 0))
		}
	}
	for {
		err := cs.serve(skipping)
		if !errors.Is(err, framer.ErrSuspend) {
			cs.countCutRecord()
			cs.logClose(err)
			return
		}
		var resume bool
		if resume, skipping = cs.handOff(); !resume {
			return
		}
	}
}

// serve frames the connection until its reader fails, and returns why.
// skipping says the stream starts inside a dropped line (see
// framer.Resume). When HandOff suspends the reads, it returns
// framer.ErrSuspend with cs.partial and cs.skipping set.
func (cs *clientConn) serve(skipping bool) error {
	s, c := cs.s, cs.c
	fc := s.cfg.framing()
	if _, isBR := cs.r.(framer.BufferReader); !isBR || isTLS(cs.r) {
		// A TLS client: a read returns one record, at most 16 KiB, so a
		// larger buffer would only hold memory (while the client is idle
		// too, where TLS cannot wait without one).
		fc.ReadBytes = min(fc.ReadBytes, tlsRecordBytes)
	}
	f := framer.New(cs.r, fc, s.bufs)
	f.Budget, f.Stop, f.OnDrop = s.budget, s.hard.Done(), cs.dropped
	// Lines of text hold no NUL byte; octet-counted frames may.
	_, octet := cs.r.(*framer.OctetReader)
	text := !octet
	f.Resume(skipping)
	defer f.Close()
	if s.cfg.LineTimeout > 0 {
		first := s.cfg.LineTimeout
		if !cs.idleFrom.IsZero() {
			// A line carried over, waiting already. Not at once: the
			// framer must have read the carried bytes and be waiting
			// when the timer looks, or it waits a whole timeout more.
			first = max(first-time.Since(cs.idleFrom), min(first, 100*time.Millisecond))
		}
		cs.timer = startLineTimer(c, cs.idleSince(f), s.cfg.LineTimeout, first)
		defer cs.timer.stop()
	}
	var lim *rate.Limiter
	if s.cfg.ClientRate > 0 {
		// A burst of one batch at least, so that any batch can pass.
		lim = rate.NewLimiter(rate.Limit(s.cfg.ClientRate), max(int(s.cfg.ClientRate), fc.MaxBatchBytes()))
	}
	for {
		b, err := f.Next()
		if err != nil {
			switch {
			case errors.Is(err, framer.ErrSuspend):
				cs.waited = f.Waited()
				if !cs.idleFrom.IsZero() && !cs.heard.Load() {
					// The line carried over still waits (moved on
					// before this framer began to, maybe): since then.
					cs.waited = cs.idleFrom
				}
				cs.partial, cs.skipping = f.Carry()
			case errors.Is(err, framer.ErrStopped):
				// The shutdown deadline passed while the framer waited
				// for memory: count what is left unread.
				cs.countRest(f.Discarding() || cs.fragmentCounted, false)
			}
			return err
		}
		if text && bytes.IndexByte(b.Data, 0) >= 0 {
			if b = cs.dropBinary(b); b == nil {
				continue
			}
		}
		lines, size := b.Lines, len(b.Data) // b may be delivered as soon as it is queued
		if n, err := s.push(b, &cs.route); err != nil {
			s.dropShutdown.Add(uint64(n))
			s.ledger.DropRead(dispatch.DropShutdown, uint64(n))
			rest := cs.countRest(f.Discarding(), f.Partial() > 0)
			c.Log.Error("shutdown deadline passed: lines read but not queued were dropped", "lines", uint64(n)+rest)
			return err
		}
		cs.lines += uint64(lines)
		cs.bytes += uint64(size)
		if lim != nil {
			cs.pace(lim, size)
		}
	}
}

// dropBinary takes the lines that hold a NUL byte out of b, counting
// them as dropped (binary), and returns b with the rest, or nil (b
// released) when none is left. Lines of text hold no NUL byte: these
// are a binary protocol sent to a text port (Fluent Bit's msgpack
// format, GELF's NUL-delimited frames, a length-prefixed encoding, a
// TLS handshake), and passing them on would hand receivers garbage cut
// at whatever newline bytes the binary held.
func (cs *clientConn) dropBinary(b *framer.Batch) *framer.Batch {
	s := cs.s
	data, kept, dropped, bytesDropped := b.Data, 0, 0, 0
	for rest := data; len(rest) > 0; {
		end := bytes.IndexByte(rest, '\n') // a batch holds whole lines, each with its newline
		if end < 0 {
			end = len(rest) - 1
		}
		line := rest[:end+1]
		rest = rest[len(line):]
		if bytes.IndexByte(line, 0) >= 0 {
			dropped++
			bytesDropped += len(line)
			continue
		}
		kept += copy(data[kept:], line)
	}
	b.Data, b.Lines = data[:kept], b.Lines-dropped
	s.binary.Add(uint64(dropped))
	s.ledger.DropRead(dispatch.DropBinary, uint64(dropped))
	s.binWarn.Do(func() {
		cs.c.Log.Warn("binary lines dropped: they hold NUL bytes, which lines of text do not (is the client sending msgpack, GELF, a length-prefixed format or TLS to this plain port?)",
			"lines", dropped, "bytes", bytesDropped, "dropped_binary_so_far", s.binary.Load())
	})
	if b.Lines == 0 {
		b.Release()
		return nil
	}
	return b
}

// tlsRecordBytes is the most plaintext one TLS record holds.
const tlsRecordBytes = 16 << 10

// isTLS reports whether r reads a TLS client (tlsReader).
func isTLS(r io.Reader) bool {
	_, ok := r.(*tlsReader)
	return ok
}

// pace waits until lim allows n more bytes: meanwhile nothing is read, so
// the client waits in TCP. The wait holds no buffer, and ends early when
// the connection is cut off (drain timeout), handed off, or the shutdown
// deadline passes.
func (cs *clientConn) pace(lim *rate.Limiter, n int) {
	r := lim.ReserveN(time.Now(), n)
	if !r.OK() {
		return
	}
	for wait := r.Delay(); wait > 0 && !cs.c.Interrupted() && !cs.moving.Load(); wait -= paceStep {
		select {
		case <-cs.s.hard.Done():
			return
		case <-time.After(min(wait, paceStep)):
		}
	}
}

// paceStep is how often a paced client's wait looks whether it should end.
const paceStep = 50 * time.Millisecond

// clientConn is one client connection's state, for counting and logs.
type clientConn struct {
	s     *Server
	c     *listener.Conn
	r     io.Reader // what the framer reads: src, or an octet reader of it
	src   io.Reader // the connection's reader (clientReader)
	start time.Time
	timer *lineTimer
	warn  rate.Sometimes

	lines, bytes, oversize uint64
	fragmentCounted        bool // the framer dropped the partial line it held

	route    *route.Scratch              // routing by key's memory (made at the first batch routed)
	final    func(p []byte) (int, error) // an octet reader's final reads
	moving   atomic.Bool                 // HandOff is moving the connection to another process
	mu       sync.Mutex                  // guards h and ended
	h        *handOff                    // the HandOff waiting for this connection
	ended    bool                        // ServeConn returned
	partial  []byte                      // the line in progress when the reads were suspended
	skipping bool                        // inside a dropped line when the reads were suspended
	waited   time.Time                   // since when that line waited for the client; zero if it did not

	// idleFrom is when the line an adopted connection carried began to
	// wait for the client (in the server that handed it over); heard is
	// set once the client has sent a byte since.
	idleFrom time.Time
	heard    atomic.Bool
}

// idleSince is the line timer's clock: the framer's, or, while an adopted
// connection's client has sent nothing since, when the line it carried
// began to wait, so that hand-overs do not put off --line-timeout.
func (cs *clientConn) idleSince(f *framer.Framer) func() time.Time {
	if cs.idleFrom.IsZero() {
		return f.IdleSince
	}
	return func() time.Time {
		t := f.IdleSince()
		if t.IsZero() || cs.heard.Load() {
			return t
		}
		return cs.idleFrom
	}
}

// countCutRecord counts, as a fragment, the TLS record a client's stream
// ended inside (cut at the drain deadline, reset, closed short): its bytes
// were read, but cannot be decrypted, so what lines it held is unknown.
// One fragment per connection: none if the framer dropped the partial
// line it held, which the record went on with.
func (cs *clientConn) countCutRecord() {
	if cs.fragmentCounted || !cs.c.CutInRecord() {
		return
	}
	cs.countFragment()
	cs.c.Log.Warn("connection ended inside a TLS record, which cannot be decrypted; counted as a fragment dropped")
}

// countFragment counts the fragment a connection ended inside as dropped
// (incomplete), and as cut at the drain when the deadline cut it.
func (cs *clientConn) countFragment() {
	s := cs.s
	s.incomplete.Add(1)
	s.ledger.DropRead(dispatch.DropIncomplete, 1)
	cs.fragmentCounted = true
	if cs.c.Interrupted() {
		s.cutAtDrain.Add(1)
	}
}

// dropped counts a line the framer dropped.
func (cs *clientConn) dropped(d framer.Drop) {
	s, c := cs.s, cs.c
	switch d.Reason {
	case framer.ReasonOversize:
		s.oversize.Add(1)
		s.ledger.DropRead(dispatch.DropOversize, 1)
		cs.oversize++
		cs.warn.Do(func() {
			c.Log.Warn("line longer than --max-line-bytes dropped", "limit", s.cfg.Framer.MaxLineBytes,
				"dropped_on_conn", cs.oversize)
		})
	case framer.ReasonMemory:
		n := s.memory.Add(1)
		s.ledger.DropRead(dispatch.DropMemory, 1)
		s.memWarn.Do(func() {
			c.Log.Warn("client memory budget spent: a line in progress was dropped, as clients inside lines held the room it needed (see the README, Memory); raise --client-buffer-bytes (logged at most every 10 s)",
				"line_bytes_read", d.Bytes, "client_buffer_bytes", s.cfg.ClientMemory, "memory_drops_so_far", n)
		})
	case framer.ReasonIncomplete:
		cs.countFragment()
		c.Log.Warn("connection ended inside a line; the fragment was dropped", "fragment_bytes", d.Bytes)
	}
}

// countRest reads what the kernel still holds for the connection, without
// waiting and without keeping it, and counts its lines as dropped at
// shutdown. continued says the first bytes finish a line already counted;
// partial that they finish the line the framer held, not counted yet. It
// returns the lines counted as shutdown drops.
func (cs *clientConn) countRest(continued, partial bool) uint64 {
	s := cs.s
	s.scratch.Lock()
	defer s.scratch.Unlock()
	if s.scratch.buf == nil {
		s.scratch.buf = make([]byte, 256<<10)
	}
	if o, ok := cs.r.(*framer.OctetReader); ok {
		o.Final = cs.final // its lines, from what the kernel holds
	}
	var newlines, tail uint64
	for {
		n, err := readFinal(cs.c, cs.r, s.scratch.buf)
		data := s.scratch.buf[:n]
		if k := bytes.Count(data, []byte{'\n'}); k > 0 {
			newlines += uint64(k)
			tail = uint64(n - 1 - bytes.LastIndexByte(data, '\n'))
		} else {
			tail += uint64(n)
		}
		if err != nil || n == 0 {
			break
		}
	}
	lines := newlines
	switch {
	case continued && newlines > 0:
		lines-- // the end of a line counted when it was dropped
	case continued:
		tail = 0 // still inside that line
	case partial && newlines == 0:
		tail++ // the held fragment never ended
	}
	s.dropShutdown.Add(lines)
	s.ledger.DropRead(dispatch.DropShutdown, lines)
	if tail > 0 {
		s.cutAtDrain.Add(1)
		s.incomplete.Add(1)
		s.ledger.DropRead(dispatch.DropIncomplete, 1)
	}
	if lines > 0 || tail > 0 {
		cs.c.Log.Error("shutdown deadline passed: lines the client had sent were read and dropped",
			"lines", lines, "fragment", tail > 0)
		cs.c.ResetOnClose() // it was still sending: it learns at once that nothing more is read
	}
	return lines
}

func (cs *clientConn) logClose(err error) {
	s, c := cs.s, cs.c
	if h := connDuration(); h != nil {
		h.Record(context.Background(), time.Since(cs.start).Seconds(), metric.WithAttributes(s.attrs()...))
	}
	attrs := []any{"lines", cs.lines, "bytes", cs.bytes, "dropped_oversize", cs.oversize,
		"duration", time.Since(cs.start).Round(time.Millisecond)}
	switch {
	case cs.timer != nil && cs.timer.fired.Load():
		s.lineTimeouts.Add(1)
		c.Log.Warn("client held a partial line past --line-timeout without sending; closed",
			append(attrs, "line_timeout", s.cfg.LineTimeout.String())...)
	case errors.Is(err, io.EOF) && cs.lines == 0 && cs.oversize == 0:
		c.Log.Debug("client disconnected", attrs...) // a health check or port probe
	case errors.Is(err, io.EOF):
		c.Log.Info("client disconnected", attrs...)
	case errors.Is(err, listener.ErrDrained):
		// The client had not ended its stream: a reset tells it at once
		// that nothing more is read (after a FIN, a client whose window
		// was shut, held back by a full queue, can wait on its write
		// for minutes), and it reconnects. The kernel held nothing
		// more: the reset discards nothing that was read.
		c.ResetOnClose()
		c.Log.Warn("drain timeout: read what the client had sent, then closed with a reset", attrs...)
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.Log.Warn("drain timeout: stopped reading from client", attrs...)
	case errors.Is(err, syscall.ECONNRESET) && c.Interrupted():
		// Our kernel's reset, not the client's: the client sent on after
		// the drain deadline shut the socket. What the kernel held was
		// read.
		c.Log.Warn("drain timeout: read what the client had sent; it was still sending, and was reset", attrs...)
	case errors.Is(err, framer.ErrStopped), errors.Is(err, context.Canceled):
		c.Log.Warn("shutdown deadline passed: client closed", attrs...)
	case errors.Is(err, framer.ErrBadFrame):
		s.badFrames.Add(1)
		c.Log.Warn("bad octet-counted frame: the client was closed (nothing after it can be framed)", append(attrs, "err", err)...)
	default:
		c.Log.Info("client connection failed", append(attrs, "err", err)...)
	}
}

// lineTimer closes a connection whose client holds a partial line without
// sending for longer than the line timeout. One lazy timer per connection:
// it looks at the framer when it fires and re-arms for the time left. It
// fires first after first: d, or less for a line carried over from a
// hand-over that has waited already.
type lineTimer struct {
	t     *time.Timer
	fired atomic.Bool
	// mu orders stop with a callback under way: once stop returns, no
	// callback touches the connection's deadline (a connection handed
	// to another server keeps its tls.Conn, and the deadline with it).
	mu      sync.Mutex
	stopped bool
}

func startLineTimer(c *listener.Conn, idleSince func() time.Time, d, first time.Duration) *lineTimer {
	lt := &lineTimer{}
	lt.t = time.AfterFunc(first, func() {
		lt.mu.Lock()
		defer lt.mu.Unlock()
		if lt.stopped {
			return
		}
		wait := d
		if since := idleSince(); !since.IsZero() {
			idle := time.Since(since)
			if idle >= d {
				lt.fired.Store(true)
				_ = c.SetReadDeadline(time.Unix(1, 0))
				return
			}
			wait = d - idle
		}
		lt.t.Reset(wait)
	})
	return lt
}

func (lt *lineTimer) stop() {
	lt.mu.Lock()
	lt.stopped = true
	lt.mu.Unlock()
	lt.t.Stop()
}

// Summary is what a shutdown reports.
type Summary struct {
	Stats
	// Clean is true when shutdown dropped no line: every whole line read
	// was delivered, or stays in the spool for the next start. Fragments
	// cut at the drain deadline are counted (CutAtDrain) but are not
	// lines the client finished.
	Clean bool
}

// Handover stops accepting and returns the listening socket, open, for a
// replacement server to Start on (a reload that changes settings): clients
// waiting in its backlog are served by the replacement, never reset. Call
// Shutdown afterwards to drain this server. It returns nil when the socket
// cannot be handed over; Shutdown then closes it as usual.
//
// A UDP server stops reading at once; the datagrams the kernel holds are
// the replacement's.
func (s *Server) Handover() net.Listener {
	if s.udp != nil {
		return s.handOverDatagrams()
	}
	return s.ln.Handover()
}

// Stats are the server's counters.
type Stats struct {
	Listener          listener.Stats
	Queue             dispatch.Stats
	Pool              pool.Stats
	Ledger            dispatch.LedgerStats
	ClientMemory      framer.BudgetStats
	DroppedOversize   uint64
	DroppedIncomplete uint64
	DroppedMemory     uint64
	DroppedShutdown   uint64
	LineTimeouts      uint64
	// CutAtDrain counts fragments dropped because shutdown closed their
	// connections (part of DroppedIncomplete).
	CutAtDrain uint64
	// Datagrams counts the UDP datagrams read, DroppedBinary those dropped
	// for holding a NUL byte, and Overflows those the kernel dropped
	// before ndlb read them, the socket's buffer full (SO_RXQ_OVFL; not in
	// the ledger, which counts what was read).
	Datagrams, DroppedBinary, Overflows uint64
	// BadFrames counts clients closed for a bad octet-counted length
	// prefix.
	BadFrames uint64
	// Route is the routing by key's counters (zero without it).
	Route route.Stats
	// Spool is the spool's counters (zero without one); SpoolErrors
	// counts appends that failed (their lines went to the queue in
	// memory).
	Spool       spool.Stats
	SpoolErrors uint64
	SpoolOpen   bool // the spool is open (not waiting for the instance a reload replaces)
	// Unspooled counts the lines queued in memory, without the spool's
	// protection, while the spool was not open.
	Unspooled uint64
	// SpoolLastError is the last failed append's error.
	SpoolLastError string
	// SpoolFailing: an append failed (its lines went to memory) within
	// the last 10 s, or a client whose append failed still waits for
	// room in the queue in memory (SpoolHeldBack). Not only the last
	// append: on a disk nearly full, appends that fail and appends that
	// fit alternate; and the first part ends by itself when no append
	// comes to clear it.
	SpoolFailing bool
	// SpoolHeldBack counts the clients waiting for room in the queue in
	// memory because the spool refused their lines: clients the listener
	// holds back though it has a spool.
	SpoolHeldBack int64
}

// spoolFailingFor is how long Stats.SpoolFailing stays true after an
// append failed.
const spoolFailingFor = 10 * time.Second

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Ledger: s.ledger.Stats(), ClientMemory: s.budget.Stats(),
		Queue: s.q.Stats(), Pool: s.pool.Stats(),
		DroppedOversize: s.oversize.Load(), DroppedIncomplete: s.incomplete.Load(),
		DroppedMemory: s.memory.Load(), DroppedShutdown: s.dropShutdown.Load(),
		LineTimeouts: s.lineTimeouts.Load(), CutAtDrain: s.cutAtDrain.Load(), BadFrames: s.badFrames.Load(),
	}
	if s.ln != nil {
		st.Listener = s.ln.Stats()
	}
	if s.router != nil {
		st.Route = s.router.Stats()
	}
	st.SpoolErrors, st.Unspooled = s.spoolErrors.Load(), s.unspooled.Load()
	if sp := s.sp.Load(); sp != nil {
		st.Spool, st.SpoolOpen = sp.Stats(), true
		at := s.spoolFailedAt.Load()
		st.SpoolHeldBack = s.heldBack.Load()
		st.SpoolFailing = at != 0 && mono.Now()-at < s.failingFor.Load() || st.SpoolHeldBack > 0
		if e := s.spoolLastErr.Load(); e != nil {
			st.SpoolLastError = *e
		}
	}
	if d := s.udp; d != nil {
		d.countDrops()
		o := d.overflows.Load()
		st.Datagrams, st.DroppedBinary, st.Overflows = d.count.Load(), d.binary.Load(), o-min(o, d.dropsBefore)
	} else {
		st.DroppedBinary = s.binary.Load()
	}
	return st
}

// Targets returns each target's counters, in configuration order.
func (s *Server) Targets() []upstream.Stats { return s.set.Stats() }

// RouteStats returns the routing counters (zero without routing).
func (s *Server) RouteStats() route.Stats {
	if s.router == nil {
		return route.Stats{}
	}
	return s.router.Stats()
}

// Ledger is this server's own account of its lines.
func (s *Server) Ledger() *dispatch.Ledger { return s.ledger }

// Set is the server's target set, for the admin API and health checks.
func (s *Server) Set() *upstream.Set { return s.set }

// Retire marks a server that a reload replaced or removed while the
// process goes on (ctx is done when it stops). next, if not nil, returns
// the server that serves the listener now, or nil.
//
// When the shutdown's deadline passes with lines undelivered (every
// target down, say), they are not dropped: a server with an open spool
// leaves them in it, as before, for the replacement, which opens it next;
// otherwise, if next gives a server that frames and routes as this one
// did, they move to its queue (HandOver) and it delivers them, to the
// targets the config names now; if not (a removed listener, a change of
// framing or routing), this server goes on delivering them itself until
// the process stops, and then for DeliverTimeout at most, as every
// listener does. Call Retire before Shutdown.
func (s *Server) Retire(ctx context.Context, next func() *Server) {
	s.retired, s.next = ctx, next
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(s.cfg.DeliverTimeout, s.hardCancel) })
	context.AfterFunc(s.hard, func() { stop() }) // the server is not kept for the process's life
}

// successor is the server this retired one hands its queue to, or nil.
func (s *Server) successor() *Server {
	if s.retired == nil || s.retired.Err() != nil || s.next == nil {
		return nil
	}
	to := s.next()
	if to == nil || to == s || to.stopping.Load() || to.cfg.Name != s.cfg.Name || s.router != nil || to.router != nil ||
		to.cfg.Framing != s.cfg.Framing || to.cfg.TargetFraming != s.cfg.TargetFraming {
		return nil // stopping too, renamed (its ledger is another's), or it would frame or route them otherwise
	}
	return to
}

// expire is the shutdown's deadline: delivery ends (and what is left
// moves to the successor, if any), unless the server is retired, holds no
// open spool, has no successor and the process goes on.
func (s *Server) expire() {
	if to := s.successor(); to != nil {
		s.handTo.Store(to) // chosen once: Shutdown hands over to it
	} else if s.retired != nil && s.retired.Err() == nil {
		s.spoolMu.Lock()
		open := s.sp.Load() != nil
		if !open {
			s.noSpool = true // it will not open the spool now: the replacement waits for it
		}
		s.spoolMu.Unlock()
		if !open {
			s.log.Warn("replaced listener: deadline passed with lines undelivered; it goes on delivering them until the process stops",
				"queued_bytes", s.q.Stats().Bytes, "deliver_timeout", s.cfg.DeliverTimeout)
			return
		}
	}
	s.hardCancel()
}

// errNoSuccessor: the server has no successor to hand lines on to.
var errNoSuccessor = errors.New("ndjson: no replacement takes this listener's lines")

// handOn gives b to the successor expire chose, or, when that one began
// to stop since (reloads in quick succession), to the newest.
func (s *Server) handOn(b *framer.Batch) error {
	to := s.handTo.Load()
	if to == nil {
		return errNoSuccessor
	}
	for {
		err := to.takeBatch(s, b)
		if err == nil {
			return nil
		}
		next := s.successor()
		if next == nil || next == to {
			return err
		}
		to = next
		s.handTo.Store(next)
	}
}

// takeBatch queues b, which from, a server this one replaced, hands
// over: its lines are counted here as received from that server
// (inherited), and there as spooled (left for the next instance). On
// error (this server is stopping too) nothing is counted and from still
// owns b.
func (s *Server) takeBatch(from *Server, b *framer.Batch) error {
	n := uint64(b.Lines)
	if err := s.q.PushOwing(b); err != nil {
		return err
	}
	s.ledger.Replayed(n)
	s.ledger.Inherited(n)
	from.ledger.Spooled(n)
	return nil
}

// askToLeave asks the clients to leave as the drain starts
// (listener.AskToLeave), except those of a listener with a spool that a
// reload took out of service: they keep its spool's protection until its
// drain ends, and its replacement opens the spool only then.
func (s *Server) askToLeave() {
	if s.cfg.Spool != nil && s.retired != nil {
		return
	}
	s.ln.AskToLeave()
}

// Shutdown stops the server as the package doc describes, logs a summary
// line and returns it. It is safe to call more than once.
func (s *Server) Shutdown() Summary {
	s.stopping.Store(true)
	s.shutdown.Do(func() {
		// Until the drain ends, DrainTimeout+DeliverTimeout bounds it all
		// (a client's push may wait for room that only delivery frees);
		// after it, DeliverTimeout from then, as documented.
		giveUp := time.AfterFunc(s.cfg.DrainTimeout+s.cfg.DeliverTimeout, s.expire) // at most 2 years (Validate): no overflow
		s.log.Info("shutting down: no new connections; draining clients", "drain_timeout", s.cfg.DrainTimeout)
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
		if s.udp != nil {
			s.stopDatagrams()
		} else if s.askToLeave(); s.ln.Shutdown(ctx) != nil {
			s.log.Warn("drain timeout passed with clients still connected; their connections were closed")
		}
		cancel()
		if giveUp.Stop() {
			giveUp = time.AfterFunc(s.cfg.DeliverTimeout, s.expire)
		}
		defer giveUp.Stop()
		if s.fed != nil {
			s.spoolMu.Lock()
			s.noSpool = true // not opened by now: it will not be
			sp := s.sp.Load()
			s.spoolMu.Unlock()
			close(s.spoolStop)
			if sp != nil {
				// Every client is done: queue what the spool holds,
				// then close the queue's input.
				sp.EndInput()
				select {
				case <-s.fed:
				case <-s.hard.Done():
					sp.StopReading()
				}
			}
			<-s.fed
		}
		s.q.CloseInput()
		s.log.Info("delivering queued lines", "queued_bytes", s.q.Stats().Bytes, "deliver_timeout", s.cfg.DeliverTimeout)
		select {
		case <-s.poolDone:
		case <-s.hard.Done():
			<-s.poolDone
		}
		lostAtExit := false // spooled lines whose files are gone
		if sp := s.sp.Load(); sp != nil {
			// Undelivered lines stay in the spool for the next start;
			// those whose segment drop-oldest deleted, or whose file
			// is gone (Close forgets those), are lost.
			sp.StopReading()
			lostBefore := sp.Stats().LostLines
			// What the queue still holds is in the spool, but for the
			// lines read before it opened (a reload's replacement
			// waits for it): those are written to it now, so that the
			// next instance delivers them too.
			var held []framer.Batch // spooled ones: their reference and lines
			var lost, kept, deliveredPart uint64
			var keepErr error
			hold := func(b *framer.Batch) {
				if b.Spool.Set {
					held = append(held, framer.Batch{Spool: b.Spool, Lines: b.Lines})
					return
				}
				if _, err := sp.Keep(b.Data, b.Lines); err != nil {
					lost += uint64(b.Lines)
					keepErr = err
					return
				}
				kept += uint64(b.Lines)
			}
			s.q.Abandon(hold)
			if b := s.unqueued; b != nil { // the feeder stopped (s.fed) holding it
				hold(b)
				b.Release()
				s.unqueued = nil
			}
			if kept > 0 {
				s.log.Warn("lines read before the spool opened, undelivered, were written to it for the next instance", "lines", kept)
			}
			if keepErr != nil {
				s.log.Error("spool: lines read before it opened could not all be written to it (they are dropped below)", "err", keepErr)
			}
			leftInProcess.closing(s.cfg.Spool.Dir)
			if err := sp.Close(); err != nil {
				s.log.Error("spool: closing", "err", err)
			}
			lostAtExit = sp.Stats().LostLines > lostBefore
			for _, b := range held {
				if !sp.Has(spool.ID{Seg: b.Spool.Seg, Off: b.Spool.Off}) {
					lost += uint64(b.Lines)
					continue
				}
				// A target acknowledged the front of it: those lines
				// are delivered, though its record stays whole.
				deliveredPart += uint64(b.Spool.Lines - b.Lines)
			}
			if lost > 0 {
				s.dropShutdown.Add(lost)
				s.ledger.Dropped(dispatch.DropShutdown, lost)
				s.log.Error("shutdown deadline passed: undelivered lines no longer in the spool dropped", "lines", lost)
			}
			left := uint64(sp.Stats().Lines) - min(uint64(sp.Stats().Lines), deliveredPart)
			s.ledger.Spooled(left)
			leftInProcess.put(s.cfg.Spool.Dir, left)
			if st := sp.Stats(); st.Records > 0 {
				s.log.Warn("shutdown deadline passed: undelivered lines stay in the spool for the next start",
					"records", st.Records, "spool_bytes", st.Bytes)
			}
		} else {
			if s.handTo.Load() != nil {
				// A reload replaced this server and the process goes
				// on: its replacement delivers what is left.
				given, dropped := s.q.HandOver(s.handOn)
				s.dropShutdown.Add(dropped)
				if given > 0 {
					s.log.Warn("replaced listener: deadline passed with lines undelivered; they move to its replacement", "lines", given)
				}
				if dropped > 0 {
					s.log.Error("replaced listener: deadline passed; its replacement is stopping too: undelivered lines dropped", "lines", dropped)
				}
			}
			if n := s.q.Discard(); n > 0 {
				s.dropShutdown.Add(n)
				s.log.Error("shutdown deadline passed: undelivered lines dropped", "lines", n)
			}
		}
		s.hardCancel()
		for _, r := range s.metrics {
			_ = r.Unregister()
		}
		st := s.Stats()
		s.summary = Summary{Stats: st, Clean: st.DroppedShutdown == 0 && !lostAtExit}
		l := st.Ledger
		level := slog.LevelInfo
		if !s.summary.Clean {
			level = slog.LevelError
		}
		s.log.Log(context.Background(), level, "summary", "received", l.Received, "delivered", l.Delivered,
			"dropped", l.DroppedTotal(), "spooled", l.Spooled, "replayed", l.Replayed, "in_flight", l.InFlight, "ledger_closed", l.Closed(),
			"lines_in", st.Queue.LinesIn, "lines_out", st.Queue.LinesOut,
			"dropped_oversize", st.DroppedOversize, "dropped_incomplete", st.DroppedIncomplete,
			"dropped_memory", st.DroppedMemory, "dropped_shutdown", st.DroppedShutdown,
			"cut_at_drain", st.CutAtDrain, "line_timeouts", st.LineTimeouts,
			"client_memory_peak", st.ClientMemory.Peak, "client_memory_waits", st.ClientMemory.Waits,
			"retried_batches", st.Queue.RetriedBatches,
			"retried_lines", st.Queue.RetriedLines, "failovers", st.Pool.Failovers, "failbacks", st.Pool.Failbacks,
			"resets", st.Pool.Resets, "proxy_rejected", st.Listener.ProxyRejected, "proxy_untrusted", st.Listener.ProxyUntrusted,
			"source_limited", st.Listener.SourceConns+st.Listener.SourceRate, "sources_untracked", st.Listener.SourcesUntracked,
			"datagrams", st.Datagrams, "dropped_binary", st.DroppedBinary, "kernel_overflows", st.Overflows,
			"bad_frames", st.BadFrames, "unrouted", st.Route.Unrouted, "moved_down", st.Route.MovedDown,
			"moved_load", st.Route.MovedLoad, "spool_records", st.Spool.Records, "spool_bytes", st.Spool.Bytes,
			"spool_appends", st.Spool.Appends, "spool_handed_off", st.Spool.HandedOff, "spool_replayed", st.Spool.Replayed, "spool_fsyncs", st.Spool.Syncs,
			"spool_corrupt_tails", st.Spool.CorruptTails, "spool_corrupt_bytes", st.Spool.CorruptBytes, "spool_dropped_lines", st.Spool.DroppedLines,
			"spool_lost_lines", st.Spool.LostLines, "spool_errors", st.SpoolErrors, "spool_unspooled_lines", st.Unspooled)
	})
	return s.summary
}

func (s *Server) name() string {
	if s.cfg.Name == "" {
		return "default"
	}
	return s.cfg.Name
}

// attrs label the server's metrics.
func (s *Server) attrs() []attribute.KeyValue {
	return []attribute.KeyValue{upstream.AttrListener.String(s.name()), attribute.String("ndlb.mode", "ndjson")}
}

// registerAll runs each registration, logging (not failing on) errors.
func registerAll(log *slog.Logger, regs ...func() (metric.Registration, error)) []metric.Registration {
	var out []metric.Registration
	for _, reg := range regs {
		r, err := reg()
		if err != nil {
			log.Warn("metrics unavailable", "err", err)
			continue
		}
		out = append(out, r)
	}
	return out
}

// Drain is Shutdown for a supervisor: it reports whether every line read
// was delivered or dropped for a reason other than the shutdown deadline.
func (s *Server) Drain() (clean bool) { return s.Shutdown().Clean }
