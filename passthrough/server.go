package passthrough

import (
	"context"
	"net"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/ndlb/ndlb/internal/gopool"
	"github.com/ndlb/ndlb/internal/mono"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/upstream"
)

// Server is passthrough mode: a listener whose connections are proxied.
type Server struct {
	core
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	ln     *listener.Listener
	parker *parker   // nil: streams keep their goroutines
	loops  []*evloop // nil: connections are served by goroutines
	inline bool      // ServeConn runs on the accepting goroutine (loops)
	// nextLoop picks the loop of the next connection, round-robin.
	nextLoop atomic.Uint32
	streams  *gopool.Pool // runs streams on reused goroutines
	sweep    sync.WaitGroup
	// The parker's count of parks at the sweeper's last tick and at the
	// last returnMemory; owned by the sweeper.
	parksAtTick, parksAtFree uint64
	trimmed                  bool // idle goroutines were let go at the last tick; owned by the sweeper

	// stop is cancelled when the drain timeout passes: dials give up and
	// open sessions are closed.
	stop       context.Context
	stopCancel context.CancelFunc
	serveErr   chan error
	shutdown   sync.Once
	summary    Summary

	mu       sync.Mutex
	sessions map[*session]struct{} // guarded by mu
	expired  bool                  // the drain timeout passed; guarded by mu
	ending   *sync.Cond            // on mu: broadcast by untrack while expire waits for cut sessions (non-nil)

	proxied, failed, dialFailed, earlyClosed, idleClosed, halfClosed, shutClosed atomic.Uint64
	clientProvoked, looped                                                       atomic.Uint64
	metrics                                                                      []metric.Registration
	fromClient, fromTarget, spliced                                              atomic.Uint64
}

// New returns a server for a valid cfg.
func New(cfg Config) (*Server, error) {
	s := &Server{
		dial: cfg.Dial, sessions: make(map[*session]struct{}), serveErr: make(chan error, 1),
	}
	if err := s.init(cfg); err != nil {
		return nil, err
	}
	s.streams = gopool.New(64)
	if s.dial == nil {
		d := &net.Dialer{KeepAlive: -1}
		if cfg.KeepAlive > 0 {
			d.KeepAlive = cfg.KeepAlive
		}
		s.dial = d.DialContext
	}
	s.stop, s.stopCancel = context.WithCancel(context.Background())
	return s, nil
}

// Start serves ln in the background. Call Shutdown to stop.
func (s *Server) Start(ln net.Listener) {
	lc := s.cfg.Listener
	lc.Logger = s.log
	s.startLoops()
	// Handing a connection to a loop never blocks, unless the hash waits
	// for the client's first bytes.
	s.inline = s.loops != nil && s.cfg.HashFirst.Length == 0
	// Such connections' sockets also stay out of the runtime's poller:
	// the loops take them as they are.
	lc.Inline, lc.RawAccept = s.inline, s.inline
	s.ln = listener.New(ln, s, lc)
	// The parker is set before the first connection can read it.
	if s.cfg.ParkAfter > 0 {
		p, err := newParker()
		if err != nil {
			s.log.Warn("idle connections keep their goroutines", "err", err)
		} else {
			s.parker = p
		}
	}
	// Loops that accept serve at once: the parker is set by now.
	inLoops := s.inline && s.acceptInLoops()
	go func() { s.serveErr <- s.ln.Serve() }()
	if s.parker != nil || s.cfg.IdleTimeout > 0 || s.cfg.HalfCloseTimeout > 0 {
		s.sweep.Go(s.sweeper)
	}
	s.metrics = s.observe()
	args := []any{"addr", ln.Addr().String(), "mode", "passthrough", "targets", s.cfg.Targets,
		"balance", s.cfg.Balance, "tls", lc.TLS != nil, "tls_target", s.cfg.TLS != nil,
		"accept_proxy", lc.AcceptProxy, "send_proxy", s.cfg.SendProxy, "max_conns", lc.MaxConns,
		"event_loops", len(s.loops), "accept_in_loops", inLoops}
	if s.cfg.Balance == "hash" {
		args = append(args, "hash_key", string(s.cfg.HashKey))
	}
	s.log.Info("listening", args...)
}

// Handover stops accepting and returns the listening socket, open, for a
// replacement server to Start on (a reload that changes settings): clients
// waiting in its backlog are served by the replacement, never reset. Call
// Shutdown afterwards to drain this server's connections. It returns nil
// when the socket cannot be handed over.
func (s *Server) Handover() net.Listener { return s.ln.Handover() }

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Err is signalled if the listener fails on its own (not by Shutdown).
func (s *Server) Err() <-chan error { return s.serveErr }

// ServeConn proxies one client connection. It implements listener.Handler.
func (s *Server) ServeConn(c *listener.Conn) { s.serveConnOn(c, nil) }

// serveConnOn is ServeConn for a connection that the event loop on
// accepted (nil: the listener's goroutine), which serves it if it can.
func (s *Server) serveConnOn(c *listener.Conn, on *evloop) {
	if s.loops != nil {
		if s.serveInLoop(c, on) {
			return
		}
		// A socket accepted raw goes into the runtime's poller for the
		// goroutines.
		if err := c.Materialize(); err != nil {
			s.failed.Add(1)
			c.Log.Warn("closing the client: its socket could not be served", "err", err)
			return
		}
		if s.inline {
			// On the accepting goroutine: the dial must not block it.
			done := c.Detach()
			s.streams.Go(func() { s.serveStreams(c, done) })
			return
		}
	}
	s.serveStreams(c, c.Detach())
}

// serveStreams proxies c with a goroutine per direction (see ServeConn).
// done is c's, from Detach; it is called when no target accepts c, or
// when the session ends.
func (s *Server) serveStreams(c *listener.Conn, done func()) {
	ctx, span := startSpan(s.stop, "ndlb.passthrough.connect", trace.SpanKindServer, func() []attribute.KeyValue {
		return connAttrs(s, c)
	})
	backend, t, attempts, err := s.connect(ctx, c)
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("ndlb.attempts", attempts))
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.End()
		s.failed.Add(1)
		c.Log.WarnContext(ctx, "closing the client: no target accepted its connection", "attempts", attempts, "err", err)
		done()
		return
	}
	if span.IsRecording() {
		span.SetAttributes(upstream.AttrServer.String(t.Addr))
	}
	span.End()
	t.ConnOpened()
	s.proxied.Add(1)
	ss := newSession(s, c, t, backend)
	if !s.track(ss) {
		ss.abort(byShutdown)
	}
	c.Log.InfoContext(ctx, "proxying", "target", t.Addr, "attempts", attempts)
	// The client's stream runs on this worker goroutine until it ends or
	// parks; the session may go on after ServeConn returns.
	ss.serve(done)
}

// startLoops starts one event loop per processor when Config.EventLoop
// asks for them and the connections can use them: plain TCP on both sides
// (no TLS), dialled by ndlb itself (no Config.Dial), on Linux.
func (s *Server) startLoops() {
	if !s.cfg.EventLoop {
		return
	}
	why := ""
	switch {
	case s.cfg.Listener.TLS != nil:
		why = "TLS termination"
	case s.cfg.TLS != nil:
		why = "TLS to the targets"
	case s.cfg.Dial != nil:
		why = "a custom dialer"
	}
	if why == "" {
		n := s.cfg.EventLoops
		if n == 0 {
			n = cores()
		}
		loops, kernel, err := newLoops(s, n, s.cfg.EventLoopThreads)
		if err == nil {
			s.loops = loops
			if s.cfg.EventLoopThreads && kernel < n {
				s.log.Info("event loops wait in the runtime's poller: the process's loops that wait in the kernel already hold twice as many processors as it has cores (these move there as others stop), or GODEBUG has asyncpreemptoff=1",
					"loops", n, "in_the_kernel", kernel)
			}
			return
		}
		why = err.Error()
	}
	s.log.Info("event loops are off: connections are served by goroutines", "reason", why)
}

// sweeper, until the server stops, closes the connections idle for
// IdleTimeout, and the half-closed ones idle for HalfCloseTimeout, and
// asks the streams of those idle for ParkAfter to park. One pass over the
// sessions serves all three, so that a connection needs no timer of its
// own.
func (s *Server) sweeper() {
	tick := time.NewTicker(s.sweepEvery())
	defer tick.Stop()
	var idle, half []*session
	for {
		select {
		case <-s.stop.Done():
			return
		case <-tick.C:
		}
		now := s.clock.Now()
		park := s.parker != nil
		at := mono.Of(now)
		quiet := at - int64(s.cfg.ParkAfter)
		idleOn := s.cfg.IdleTimeout > 0
		expired := at - int64(s.cfg.IdleTimeout)
		halfOn := s.cfg.HalfCloseTimeout > 0
		halfExpired := at - int64(s.cfg.HalfCloseTimeout)
		s.mu.Lock()
		for ss := range s.sessions {
			switch last := ss.last.Load(); {
			case idleOn && last <= expired:
				if ss.timedOut.CompareAndSwap(false, true) {
					idle = append(idle, ss)
				}
			case halfOn && ss.half.Load() && ss.last.Load() <= halfExpired:
				// (half first: its store follows last's, so last is
				// then the FIN's time or later)
				if ss.timedOut.CompareAndSwap(false, true) {
					half = append(half, ss)
				}
			case park && last <= quiet:
				ss.up.askPark()
				ss.down.askPark()
			}
		}
		s.mu.Unlock()
		// Closed outside the lock: a session that ends untracks itself.
		for i, ss := range idle {
			s.idleClosed.Add(1)
			ss.abort(byIdle)
			idle[i] = nil
		}
		idle = idle[:0]
		for i, ss := range half {
			s.halfClosed.Add(1)
			ss.abort(byHalf)
			half[i] = nil
		}
		half = half[:0]
		if park {
			s.returnMemory()
		}
		s.pruneAttrs()
	}
}

// sweepEvery is the sweeper's period: half of ParkAfter, so that a stream
// parks between ParkAfter and 1.5 × ParkAfter after it went quiet, and at
// most a sixteenth of IdleTimeout and of HalfCloseTimeout (10 ms at least)
// and a second.
func (s *Server) sweepEvery() time.Duration {
	every := time.Second
	if s.parker != nil {
		every = min(every, s.cfg.ParkAfter/2)
	}
	for _, d := range []time.Duration{s.cfg.IdleTimeout, s.cfg.HalfCloseTimeout} {
		if d > 0 {
			every = min(every, max(d/16, 10*time.Millisecond))
		}
	}
	return max(every, time.Millisecond)
}

// freeAfterParks is how many streams must have parked since the last
// returnMemory for it to run again.
const freeAfterParks = 1024

// returnMemory gives the memory of goroutines let go by parking back to the
// operating system once a wave of parking ends (no stream parked since the
// last tick) that let at least freeAfterParks go: thousands of connections
// going quiet together. Otherwise the runtime keeps that memory for reuse,
// and a process that once had 10 000 busy connections keeps their stacks
// while they idle. The goroutines kept for new connections and streams are
// let go first, and the memory is returned at the next tick, once they
// have exited. The cost, a garbage collection and new goroutines for the
// next connections, is small beside the wave.
func (s *Server) returnMemory() {
	if s.trimmed {
		s.trimmed = false
		debug.FreeOSMemory()
	}
	parks := s.parker.Parks()
	wave := parks != s.parksAtTick
	s.parksAtTick = parks
	if wave || parks-s.parksAtFree < freeAfterParks {
		return
	}
	s.parksAtFree = parks
	s.streams.Trim(0)
	s.ln.TrimWorkers()
	s.trimmed = true
}

// track registers ss; it returns false when the drain timeout has passed.
func (s *Server) track(ss *session) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions[ss] = struct{}{}
	return !s.expired
}

func (s *Server) untrack(ss *session) {
	s.mu.Lock()
	delete(s.sessions, ss)
	if s.ending != nil {
		s.ending.Broadcast()
	}
	s.mu.Unlock()
}

// cutGrace bounds how long expire waits for the connections it cut with a
// reset to end.
const cutGrace = time.Second

// awaitCut waits until the cut sessions have ended, or cutGrace passed:
// the listener's shutdown, which comes next, would otherwise half-close
// their clients' sockets (a FIN before the reset).
func (s *Server) awaitCut(cut []*session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ending = sync.NewCond(&s.mu)
	over := false
	t := time.AfterFunc(cutGrace, func() {
		s.mu.Lock()
		over = true
		s.ending.Broadcast()
		s.mu.Unlock()
	})
	defer t.Stop()
	for !over && slices.ContainsFunc(cut, func(ss *session) bool { _, open := s.sessions[ss]; return open }) {
		s.ending.Wait()
	}
	s.ending = nil
}

// expire closes every open connection: the drain timeout has passed.
func (s *Server) expire() {
	s.stopCancel()
	for _, l := range s.loops {
		l.wake() // connections still connecting give up
	}
	s.mu.Lock()
	s.expired = true
	open := make([]*session, 0, len(s.sessions))
	for ss := range s.sessions {
		open = append(open, ss)
	}
	s.mu.Unlock()
	if len(open) > 0 {
		s.log.Warn("drain timeout passed; closing open connections", "connections", len(open))
	}
	s.shutClosed.Add(uint64(len(open)))
	var cut []*session
	for _, ss := range open {
		if ss.abort(byShutdown) {
			cut = append(cut, ss)
		}
	}
	if len(cut) > 0 {
		s.awaitCut(cut)
	}
}

// Stats are the server's counters.
type Stats struct {
	Listener     listener.Stats
	Proxied      uint64 // connections that reached a target
	Failed       uint64 // connections closed because no target accepted them
	DialFailures uint64 // failed attempts (some then served by another target)
	EarlyClosed  uint64 // connections a target closed at once, sending nothing, before the client sent (failures)
	// ClientProvoked counts connections a target closed at once after the
	// client had sent bytes: not held against the target.
	ClientProvoked  uint64
	IdleClosed      uint64 // connections closed by IdleTimeout
	HalfClosed      uint64 // half-closed connections closed by HalfCloseTimeout
	ShutdownClosed  uint64 // connections closed when the drain timeout passed
	BytesFromClient uint64
	BytesFromTarget uint64
	BytesSpliced    uint64 // bytes moved by splice(2), never copied through ndlb's memory
	// Parks counts idle streams that gave up their goroutine to wait in
	// the parker's epoll set.
	Parks uint64
	// EventLoop counts the connections served by the event loops
	// (Config.EventLoop), the others by goroutines.
	EventLoop uint64
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Proxied: s.proxied.Load(), Failed: s.failed.Load(), DialFailures: s.dialFailed.Load(), EarlyClosed: s.earlyClosed.Load(),
		IdleClosed: s.idleClosed.Load(), HalfClosed: s.halfClosed.Load(), ShutdownClosed: s.shutClosed.Load(), ClientProvoked: s.clientProvoked.Load(),
		BytesFromClient: s.fromClient.Load(), BytesFromTarget: s.fromTarget.Load(), BytesSpliced: s.spliced.Load(),
		EventLoop: s.looped.Load(),
	}
	if s.ln != nil {
		st.Listener = s.ln.Stats()
	}
	if s.parker != nil {
		st.Parks = s.parker.Parks()
	}
	return st
}

// Summary is what Shutdown reports.
type Summary struct {
	Stats
}

// Shutdown stops accepting, lets open connections run until they end or
// the drain timeout passes (then closes them), logs a summary line and
// returns it. It is safe to call more than once.
func (s *Server) Shutdown() Summary {
	s.shutdown.Do(func() {
		s.log.Info("shutting down: no new connections; open connections may finish", "drain_timeout", s.cfg.DrainTimeout)
		// The listener's context is cancelled only after the sessions are
		// closed, so that its cut-off reads are never taken for a
		// client's error.
		ctx, cancel := context.WithCancel(context.Background())
		expired := make(chan struct{})
		timer := time.AfterFunc(s.cfg.DrainTimeout, func() { defer close(expired); s.expire(); cancel() })
		_ = s.ln.Shutdown(ctx)
		if !timer.Stop() {
			<-expired // it wakes the loops, which stop below
		}
		cancel()
		s.stopCancel()
		s.sweep.Wait()
		s.streams.Close()
		stopLoops(s.loops)
		if s.parker != nil {
			s.parker.Stop()
		}
		for _, r := range s.metrics {
			_ = r.Unregister()
		}
		st := s.Stats()
		s.summary = Summary{Stats: st}
		s.log.Info("summary", "connections", st.Listener.Accepted, "proxied", st.Proxied, "failed", st.Failed,
			"dial_failures", st.DialFailures, "early_closed", st.EarlyClosed, "client_provoked", st.ClientProvoked, "idle_closed", st.IdleClosed, "half_closed", st.HalfClosed, "shutdown_closed", st.ShutdownClosed,
			"proxy_rejected", st.Listener.ProxyRejected, "proxy_untrusted", st.Listener.ProxyUntrusted,
			"source_limited", st.Listener.SourceConns+st.Listener.SourceRate, "sources_untracked", st.Listener.SourcesUntracked,
			"bytes_from_client", st.BytesFromClient,
			"bytes_from_target", st.BytesFromTarget, "bytes_spliced", st.BytesSpliced, "parks", st.Parks, "event_loop", st.EventLoop)
	})
	return s.summary
}

// Drain is Shutdown for a supervisor. Passthrough holds no data of its own,
// so a drain is always clean: connections cut at the deadline are counted
// in the summary (shutdown_closed).
func (s *Server) Drain() (clean bool) {
	s.Shutdown()
	return true
}
