package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/segmentio/ksuid"
	"golang.org/x/time/rate"

	"github.com/ndlb/ndlb/internal/gopool"
	"github.com/ndlb/ndlb/internal/mono"
	"github.com/ndlb/ndlb/invalid"
)

// Defaults for Config.
const (
	// DefaultHandshakeTimeout bounds a client's TLS handshake.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultProxyHeaderTimeout bounds reading a PROXY protocol header.
	DefaultProxyHeaderTimeout = 5 * time.Second
)

// backlogGrace is how long Shutdown keeps accepting, so that connections the
// kernel completed before the shutdown (and whose clients may have sent all
// their data and gone) are served rather than reset with the listener.
const backlogGrace = 100 * time.Millisecond

// Conn is an accepted client connection, after its PROXY header and TLS
// handshake.
type Conn struct {
	net.Conn
	// ID names the connection in logs.
	ID ksuid.KSUID
	// Log carries the connection's id and client address.
	Log *slog.Logger
	// Client is the client's address: the source of the PROXY header when
	// the listener accepts one, else the peer's address.
	Client net.Addr
	// Local is the address the client connected to: the destination of
	// the PROXY header when there is one, else the local address.
	Local net.Addr

	detached    bool       // Detach was called
	source      netip.Addr // its entry in the per-source table, if any
	release     func()     // untracks and closes; set by the listener
	interrupted atomic.Bool
	released    atomic.Bool  // a detached connection's done was called
	tcp         *net.TCPConn // the socket, when it is TCP
	drain       *drainConn   // the layer under TLS, when there is one (TryRead)
	pending     []byte       // plaintext a TLS connection's last holder read (AdoptConn)

	leaveMu  sync.Mutex // orders Leave and Stay with interrupt and askToLeave
	left     bool       // Leave: moving to another server; not shut here
	keepOpen bool       // Leave(true): c itself moves; not closed here either
	asked    bool       // askToLeave came
}

// ResetOnClose makes the connection end with a reset rather than a FIN
// when it is closed (SO_LINGER 0). It is for a client still sending when
// ndlb stops reading it: after a FIN such a client, its window full, can
// wait on a write until the kernel forgets the closed connection (a
// minute or more); a reset tells it at once, and it reconnects.
func (c *Conn) ResetOnClose() {
	if c.tcp != nil {
		_ = c.tcp.SetLinger(0)
	}
}

// Detach lets ServeConn return while the connection stays open: the handler
// then serves it on goroutines of its own and calls done, once, when it has
// finished. The listener closes the connection in done, and until then
// counts it as active, cuts its reads off at the shutdown deadline and waits
// for it in Shutdown. It matters for memory: ServeConn's goroutine has grown
// its stack through the handshake and the dial, while fresh goroutines that
// only wait on a socket keep the smallest stack.
func (c *Conn) Detach() (done func()) {
	c.detached = true
	return c.releaseOnce
}

// releaseOnce is Detach's done: the first call releases c.
func (c *Conn) releaseOnce() {
	if c.released.CompareAndSwap(false, true) {
		c.release()
	}
}

// Unread puts b back in front of what the connection reads next (bytes a
// handler peeked at, such as a hash key, and forwards unchanged).
func (c *Conn) Unread(b []byte) {
	if len(b) == 0 {
		return
	}
	if p, ok := c.Conn.(*prefixConn); ok {
		p.pending = append(append([]byte(nil), b...), p.pending...)
		return
	}
	c.Conn = &prefixConn{Conn: c.Conn, pending: append([]byte(nil), b...)}
}

// Raw returns the plain TCP connection under c, and the bytes the listener
// read past the PROXY header, which come before anything read from tcp.
// It is for handlers that read the socket directly (zero-copy, or waiting
// for data without a buffer); call it before reading c, and after it read
// only tcp. ok is false when c is TLS or not TCP: read c itself.
func (c *Conn) Raw() (tcp *net.TCPConn, pending []byte, ok bool) {
	switch x := c.Conn.(type) {
	case *net.TCPConn:
		return x, nil, true
	case *prefixConn:
		if tc, ok := x.Conn.(*net.TCPConn); ok {
			pending, x.pending = x.pending, nil
			return tc, pending, true
		}
	}
	return nil, nil, false
}

// TakeFD hands over the socket of a connection accepted with
// Config.RawAccept: the caller owns it from then on (and closes it; the
// listener's close of the connection then does nothing). ok is false for
// other connections, and after Materialize.
func (c *Conn) TakeFD() (fd int, ok bool) {
	if r, isRaw := c.Conn.(*rawConn); isRaw {
		return r.take()
	}
	return -1, false
}

// Materialize makes a connection accepted with Config.RawAccept an
// ordinary one (c.Conn a *net.TCPConn) for a handler that reads and writes
// it; other connections are left as they are.
func (c *Conn) Materialize() error {
	r, isRaw := c.Conn.(*rawConn)
	if !isRaw {
		return nil
	}
	nc, err := r.materialize()
	if err != nil {
		return err
	}
	c.Conn = nc
	c.tcp, _ = nc.(*net.TCPConn)
	return nil
}

// RawWanter is a Handler that says, before each raw accept
// (Config.RawAccept), whether it would take the socket as it is; when it
// would not, the connection is accepted the usual way rather than made
// ordinary afterwards, which costs more.
type RawWanter interface {
	WantsRaw() bool
}

// Handler serves one connection. The listener closes the connection after
// ServeConn returns. When the listener's shutdown deadline passes, reads on
// the connection start failing (the read deadline is moved to the past, and
// Conn.Interrupted is true); ServeConn should then read what the kernel
// still holds (FinalRead; TLS connections do so in their own reads) and
// return.
type Handler interface {
	ServeConn(c *Conn)
}

// Config configures a Listener.
type Config struct {
	// TLS, if set, is the server config for a TLS handshake on each
	// connection.
	TLS *tls.Config
	// HandshakeTimeout bounds the TLS handshake; zero means the default.
	HandshakeTimeout time.Duration
	// Logger receives the listener's logs; nil means slog.Default().
	Logger *slog.Logger
	// AcceptProxy requires a PROXY protocol header (v1 or v2) at the start
	// of every connection, before any TLS handshake. A connection without
	// a valid header within ProxyHeaderTimeout is logged and closed.
	AcceptProxy bool
	// ProxyHeaderTimeout bounds reading the header; zero means the
	// default.
	ProxyHeaderTimeout time.Duration
	// ProxyFrom, if not empty, is the networks allowed to send PROXY
	// headers (the front balancers). With AcceptProxy, a connection from
	// any other address is closed before anything is read from it, logged
	// (at most once a minute) and counted: no one else can claim a client
	// address. Empty trusts every peer.
	ProxyFrom []netip.Prefix
	// MaxConnsPerSource bounds the connections one client address (the
	// PROXY header's, with AcceptProxy) holds at once; ConnRatePerSource
	// bounds the new connections it opens per second (a burst of as
	// many). A connection over either is closed after its PROXY header,
	// before its TLS handshake, logged (once a minute) and counted. Zero
	// means no limit. The addresses are kept in a table of at most
	// MaxSources.
	MaxConnsPerSource, ConnRatePerSource int
	// MaxConns bounds the connections served at once; zero means no
	// bound. At the bound the listener stops accepting, so that new
	// clients wait in the kernel's accept backlog rather than in memory.
	MaxConns int
	// Inline serves a connection on the goroutine that accepted it, when
	// there is no PROXY header to read or TLS handshake to run: for a
	// handler whose ServeConn never blocks (it hands the connection on and
	// returns), which saves a hand-off between goroutines per connection.
	Inline bool
	// RawAccept, with Inline (and no TLS or PROXY header), accepts
	// connections with raw, non-blocking accept4 calls and keeps their
	// sockets out of the runtime's poller (Linux): for a handler that
	// serves the socket itself. The listener waits for connections on a
	// duplicate of the listening socket in the runtime's poller. Its
	// handler calls Conn.TakeFD, or Conn.Materialize before it reads or
	// writes the connection. When the handler, a RawWanter, does not
	// want the socket, or the duplicate cannot be made, the listener
	// accepts in Accept as usual and the connection comes as a
	// *net.TCPConn. It saves the poller's registration and removal, the
	// runtime's records and, on a listener bound to one address,
	// getsockname for each connection; and since the scheduler is not
	// told of raw system calls, its monitor thread is not woken each
	// time the process wakes from idle (see acceptRaw). The socket keeps
	// the listening socket's options (TCP keepalive among them,
	// whatever the net.ListenConfig said) and gets TCP_NODELAY, as Go
	// sets it (from the listening socket, when Control set it there).
	RawAccept bool
}

// ErrConfig is wrapped by Config.Validate's errors.
var ErrConfig = errors.New("listener: invalid config")

// Validate reports the first value out of range as an *invalid.Error
// naming the field, wrapping ErrConfig. New does not call it: it takes a
// zero or negative timeout as the default.
func (c Config) Validate() error {
	bad := func(field, format string, a ...any) error { return invalid.Field(ErrConfig, field, format, a...) }
	switch {
	case c.HandshakeTimeout < 0:
		return bad("HandshakeTimeout", "TLS handshake timeout %s must not be negative (0: the default)", c.HandshakeTimeout)
	case c.ProxyHeaderTimeout < 0:
		return bad("ProxyHeaderTimeout", "PROXY header timeout %s must not be negative (0: the default)", c.ProxyHeaderTimeout)
	case c.MaxConns < 0:
		return bad("MaxConns", "connection limit %d must not be negative", c.MaxConns)
	case c.MaxConnsPerSource < 0:
		return bad("MaxConnsPerSource", "connection limit per client address %d must not be negative (0: none)", c.MaxConnsPerSource)
	case c.ConnRatePerSource < 0:
		return bad("ConnRatePerSource", "connection rate per client address %d must not be negative (0: none)", c.ConnRatePerSource)
	}
	return nil
}

// Stats are the listener's counters.
type Stats struct {
	Accepted        uint64 // connections accepted
	Active          int64  // connections open now
	HandshakeFailed uint64 // TLS handshakes that failed
	ProxyRejected   uint64 // connections closed for a missing or malformed PROXY header
	// ProxyUntrusted counts connections closed because their address is
	// not in ProxyFrom.
	ProxyUntrusted uint64
	// SourceConns and SourceRate count connections closed because their
	// client address was over MaxConnsPerSource or ConnRatePerSource;
	// SourcesUntracked those served unlimited because the table of
	// addresses was full.
	SourceConns, SourceRate, SourcesUntracked uint64
	LimitReached                              uint64 // times accepting paused at MaxConns
	Adopted                                   uint64 // connections taken over from an older process (Adopt)
}

// Listener accepts connections and hands them to a Handler.
type Listener struct {
	ln         net.Listener
	rawWait    *os.File        // a duplicate of the listening socket raw accepts wait on; guarded by mu
	rawRC      syscall.RawConn // rawWait's; owned by Serve
	rawUntil   time.Time       // the deadline for rawWait, set by Shutdown or Handover; guarded by mu
	rawLocal   *net.TCPAddr    // the local address of raw sockets, unless listening on a wildcard
	rawNoDelay atomic.Int32    // noDelaySet, noDelayCheck or noDelayInherited
	rawAcc     rawAccept       // owned by Serve
	loops      *loopAccept     // accepting in the handler's event loops (AcceptInLoops); nil when Serve accepts
	h          Handler
	cfg        Config
	log        *slog.Logger

	wg          sync.WaitGroup // one per connection
	prep        sync.WaitGroup // one per connection still in its PROXY header or handshake
	mu          sync.Mutex
	conns       map[*Conn]struct{}    // guarded by mu
	preparing   map[net.Conn]struct{} // in their PROXY header or TLS handshake; guarded by mu
	draining    bool                  // Shutdown has begun; guarded by mu
	interrupted bool                  // reads are being cut off; guarded by mu
	leaving     bool                  // AskToLeave was called; guarded by mu
	done        chan struct{}         // closed when Serve returns
	inUse       atomic.Int64          // places under MaxConns taken
	full        atomic.Bool           // accepting waits for a place under MaxConns (pause)
	slotFreed   chan struct{}         // signalled when a place is freed while full, for takeSlot
	workers     *gopool.Pool          // serve connections
	graceOver   chan struct{}         // closed when Shutdown stops accepting
	graceOnce   sync.Once
	handedOver  bool // Handover gave the socket away; guarded by mu
	limitLog    rate.Sometimes
	holdLog     rate.Sometimes // accept failures and holds (hold)
	heldUntil   atomic.Int64   // accepting is held until then (internal/mono; hold)
	holdDelay   atomic.Int64   // the last hold's length; 0 once accepts go on without failures
	lastShort   atomic.Int64   // when the last failure came (internal/mono)
	holds       atomic.Uint64  // failures that held accepting

	untrustedLog rate.Sometimes
	sources      *sources // nil without per-source limits
	sourceLog    rate.Sometimes
	// proxyLog and tlsLog let a failed PROXY header or TLS handshake be
	// logged at warn level once every 10 s at most (each kind on its
	// own), the rest at debug level: anyone who can connect could
	// otherwise fill the log.
	proxyLog, tlsLog rate.Sometimes

	accepted, hsFailed, proxyRejected, limited, adopted atomic.Uint64
	proxyUntrusted                                      atomic.Uint64
	sourceConns, sourceRate, sourcesUntracked           atomic.Uint64
	active                                              atomic.Int64
}

// New returns a Listener that will serve ln with h.
func New(ln net.Listener, h Handler, cfg Config) *Listener {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.ProxyHeaderTimeout <= 0 {
		cfg.ProxyHeaderTimeout = DefaultProxyHeaderTimeout
	}
	l := &Listener{
		ln: ln, h: h, cfg: cfg, log: cfg.Logger, conns: make(map[*Conn]struct{}),
		done: make(chan struct{}), graceOver: make(chan struct{}), workers: gopool.New(maxIdleWorkers),
		limitLog: rate.Sometimes{First: 1, Interval: time.Minute}, holdLog: rate.Sometimes{First: 3, Interval: 10 * time.Second}, untrustedLog: rate.Sometimes{First: 1, Interval: time.Minute},
		sources: newSources(cfg), sourceLog: rate.Sometimes{First: 1, Interval: time.Minute},
		proxyLog: rate.Sometimes{First: 1, Interval: rejectLogEvery}, tlsLog: rate.Sometimes{First: 1, Interval: rejectLogEvery},
	}
	if l.log == nil {
		l.log = slog.Default()
	}
	if cfg.MaxConns > 0 {
		l.slotFreed = make(chan struct{}, 1)
	}
	if cfg.AcceptProxy && len(cfg.ProxyFrom) == 0 {
		l.log.Warn("PROXY headers are accepted from any peer: anyone who can reach this port can claim any client address; list the front balancers with --accept-proxy-from")
	}
	return l
}

// trusted reports whether addr may send PROXY headers.
func (l *Listener) trusted(addr net.Addr) bool {
	if len(l.cfg.ProxyFrom) == 0 {
		return true
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range l.cfg.ProxyFrom {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Serve accepts connections until Shutdown or Handover stops it; then it
// returns nil. It returns net.ErrClosed when the listening socket was
// closed under it; other accept errors (out of file descriptors) hold
// accepting for a delay that doubles up to a second while they go on
// (hold), and are logged sparingly. When
// event loops accept (AcceptInLoops), Serve only waits for the end of
// accepting, then closes the socket; a Close of the listener under it
// does not stop the loops' accepts (they hold a duplicate).
func (l *Listener) Serve() error {
	defer close(l.done)
	if l.loops != nil {
		return l.serveLoops()
	}
	raw := l.rawAccepting()
	defer func() {
		l.mu.Lock()
		l.closeRawWait()
		l.mu.Unlock()
	}()
	for {
		if !l.waitHold() || !l.takeSlot() {
			l.closeSocket()
			return nil
		}
		c, err := l.accept(raw)
		if err != nil {
			l.freeSlot()
			if l.isDraining() {
				l.closeSocket()
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors or similar: wait and retry, as
			// net/http does, instead of spinning.
			l.hold(err)
			continue
		}
		l.acceptedOne()
		l.wg.Add(1)   // done in finish
		l.prep.Add(1) // done once the handler has it, or it failed
		if l.cfg.Inline && l.cfg.TLS == nil && !l.cfg.AcceptProxy {
			l.serveConn(c)
			continue
		}
		// Reused goroutines: a connection's handshake and the
		// handler's dial grow a stack, which costs more than a little
		// at thousands of new connections a second.
		l.workers.Go(func() { l.serveConn(c) })
	}
}

// acceptHold is the first hold of accepting after a failed accept (hold).
const acceptHold = 5 * time.Millisecond

// hold pauses accepting after err, a failed accept (out of file
// descriptors or memory), for a delay that doubles from acceptHold up to a
// second while failures go on (none for a second, and an accept, start
// it again), instead of spinning on a socket that stays readable.
// Failures within a hold under way (other loops that tried at its end)
// neither double it nor move it. It is logged a few times, then once
// every 10 s at most: each connection that ends frees a descriptor the
// next accept takes, and the next after it fails again.
func (l *Listener) hold(err error) {
	now := mono.Now()
	l.lastShort.Store(now)
	n := l.holds.Add(1)
	held := l.heldUntil.Load()
	if now < held {
		return
	}
	d := time.Duration(min(max(2*l.holdDelay.Load(), int64(acceptHold)), int64(time.Second)))
	if !l.heldUntil.CompareAndSwap(held, now+int64(d)) {
		return // another failure began the hold
	}
	l.holdDelay.Store(int64(d))
	l.holdLog.Do(func() { l.log.Warn("accept failed; retrying", "err", err, "delay", d, "failures_so_far", n) })
	if l.loops != nil {
		l.loops.holdLoops(l, d)
	}
}

// waitHold waits out a hold of accepting; false if Shutdown stopped
// accepting meanwhile.
func (l *Listener) waitHold() bool {
	left := time.Duration(l.heldUntil.Load() - mono.Now())
	if left <= 0 {
		return true
	}
	t := time.NewTimer(left)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-l.graceOver:
		return false
	}
}

// acceptedOne counts an accepted connection, and ends the doubling of
// holds once a second has passed without a failure.
func (l *Listener) acceptedOne() {
	l.accepted.Add(1)
	if l.holdDelay.Load() != 0 && mono.Now()-l.lastShort.Load() > int64(time.Second) {
		l.holdDelay.Store(0)
	}
}

// accept waits for the next connection and takes it, raw or from the
// listener's Accept.
func (l *Listener) accept(raw bool) (net.Conn, error) {
	if raw {
		return l.acceptRaw()
	}
	return l.ln.Accept()
}

// maxIdleWorkers bounds the goroutines kept waiting for connections.
const maxIdleWorkers = 32

// TrimWorkers lets the goroutines kept waiting for connections exit, so
// that the next garbage collection can free their stacks: for a handler
// whose connections all went quiet. New connections start goroutines
// again.
func (l *Listener) TrimWorkers() { l.workers.Trim(0) }

// takeSlot waits for room under MaxConns. It returns false when Shutdown
// has stopped accepting.
func (l *Listener) takeSlot() bool {
	for !l.trySlot() {
		if l.pause() {
			continue
		}
		select {
		case <-l.slotFreed:
		case <-l.graceOver:
			return false
		}
	}
	return true
}

// trySlot takes a place under MaxConns if one is free.
func (l *Listener) trySlot() bool {
	if l.cfg.MaxConns == 0 {
		return true
	}
	for {
		n := l.inUse.Load()
		if n >= int64(l.cfg.MaxConns) {
			return false
		}
		if l.inUse.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// pause records that accepting waits for a place under MaxConns (full):
// the accepting loops stop watching the listening socket, takeSlot waits,
// and the next freeSlot resumes them. It returns true, and resumes at
// once, when a place was freed before full was set, which freed nobody.
func (l *Listener) pause() (retry bool) {
	if !l.full.Swap(true) {
		l.limited.Add(1)
		l.limitLog.Do(func() {
			l.log.Warn("--max-conns reached; new clients wait in the accept backlog", "max_conns", l.cfg.MaxConns)
		})
	}
	// Either this sees a place freed before full was set, or the release
	// comes after and sees full.
	if l.inUse.Load() < int64(l.cfg.MaxConns) && l.full.CompareAndSwap(true, false) {
		l.resume()
		return true
	}
	return false
}

// freeSlot gives a place under MaxConns back, and resumes accepting if
// it was waiting for one.
func (l *Listener) freeSlot() {
	if l.cfg.MaxConns == 0 {
		return
	}
	l.inUse.Add(-1)
	if l.full.Load() && l.full.CompareAndSwap(true, false) {
		l.resume()
	}
}

// resume wakes what waits for a place under MaxConns.
func (l *Listener) resume() {
	select {
	case l.slotFreed <- struct{}{}:
	default:
	}
	if l.loops != nil {
		l.loops.wakeAll()
	}
}

// closeSocket closes the listening socket unless Handover gave it away.
func (l *Listener) closeSocket() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closeRawWait()
	if !l.handedOver {
		l.ln.Close()
	}
}

type deadliner interface{ SetDeadline(time.Time) error }

// TCPWrapper is a net.Listener that wraps a TCP listener and changes no
// more than what it shows (its Addr, say): the listener accepts from the
// socket under it directly (raw accepts, AcceptInLoops).
type TCPWrapper interface {
	net.Listener
	Unwrap() *net.TCPListener
}

// tcpListener is ln's TCP listener, if it is one or wraps one.
func tcpListener(ln net.Listener) (*net.TCPListener, bool) {
	switch x := ln.(type) {
	case *net.TCPListener:
		return x, true
	case TCPWrapper:
		return x.Unwrap(), true
	}
	return nil, false
}

// Handover stops accepting and returns the listening socket, still open,
// for a successor to serve (a reload that replaces this listener's
// settings): connections the kernel has queued wait in its backlog for the
// successor instead of being reset. It returns nil, and changes nothing,
// when the socket cannot stop an Accept without closing. Call Shutdown
// afterwards to drain the connections this listener serves. When event
// loops accepted (AcceptInLoops), the listener returned is a new one for
// the same socket, and the one this listener was given is closed.
func (l *Listener) Handover() net.Listener {
	if l.loops != nil {
		return l.handoverLoops()
	}
	dl, ok := l.ln.(deadliner)
	if !ok {
		return nil
	}
	l.mu.Lock()
	l.draining, l.handedOver = true, true
	l.rawDeadline(time.Unix(1, 0)) // wakes the raw accepts' wait
	l.mu.Unlock()
	_ = dl.SetDeadline(time.Unix(1, 0)) // wakes Accept
	l.stopAccepting()                   // wakes a wait at MaxConns
	<-l.done
	_ = dl.SetDeadline(time.Time{})
	return l.ln
}

func (l *Listener) isDraining() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.draining
}

// serveConn runs the PROXY header, the handshake and the handler for one
// connection, and finishes it unless the handler detached it.
func (l *Listener) serveConn(nc net.Conn) { l.serveConnWith(nc, l.h) }

// serveConnWith is serveConn with h for the handler (an accepting event
// loop's own).
func (l *Listener) serveConnWith(nc net.Conn, h Handler) {
	slow := l.cfg.AcceptProxy || l.cfg.TLS != nil
	if slow {
		l.startPrepare(nc)
	}
	c, ok := l.prepare(nc)
	if slow {
		l.mu.Lock()
		delete(l.preparing, nc)
		l.mu.Unlock()
	}
	if !ok {
		l.prep.Done()
		l.finish(nc)
		return
	}
	l.track(c)
	l.prep.Done()
	c.release = func() {
		l.untrack(c)
		l.sources.release(c.source)
		if c.hasLeft() { // moved to another listener, open
			l.freeSlot()
			l.wg.Done()
			return
		}
		l.finish(nc)
	}
	h.ServeConn(c)
	if !c.detached {
		c.release()
	}
}

// startPrepare records that nc is reading its PROXY header or TLS
// handshake, which may take their own timeouts: once Shutdown's deadline
// has passed, cutPrepare ends them, so that they do not hold it up.
func (l *Listener) startPrepare(nc net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.interrupted {
		cutPrepare(nc)
		return
	}
	if l.preparing == nil {
		l.preparing = map[net.Conn]struct{}{}
	}
	l.preparing[nc] = struct{}{}
}

// cutPrepare ends the header read or handshake under way on nc: its socket
// is shut down both ways, which a deadline the header read sets for itself
// cannot undo.
func cutPrepare(nc net.Conn) {
	_ = nc.SetDeadline(time.Unix(1, 0))
	if tc, ok := nc.(*net.TCPConn); ok {
		shutBoth(tc)
	}
}

// finish closes a connection and frees its place.
func (l *Listener) finish(nc net.Conn) {
	nc.Close()
	l.freeSlot()
	l.wg.Done()
}

// prepare reads the PROXY header and runs the TLS handshake. On failure it
// logs and returns false.
func (l *Listener) prepare(nc net.Conn) (*Conn, bool) {
	c := &Conn{Conn: nc, ID: ksuid.New(), Client: nc.RemoteAddr(), Local: nc.LocalAddr()}
	c.tcp, _ = nc.(*net.TCPConn)
	if l.cfg.AcceptProxy {
		if !l.trusted(nc.RemoteAddr()) {
			n := l.proxyUntrusted.Add(1)
			l.untrustedLog.Do(func() {
				l.log.Warn("connection refused: its address may not send PROXY headers (--accept-proxy-from)",
					"peer", nc.RemoteAddr().String(), "refused_so_far", n)
			})
			return nil, false
		}
		if err := l.readProxyHeader(c); err != nil {
			n := l.proxyRejected.Add(1)
			c.Log = connLogger(l.log, c, nc.RemoteAddr(), false)
			level := slog.LevelDebug // a front balancer's or a probe's plain TCP check
			if !errors.Is(err, errClosedEarly) {
				level = rejectLevel(&l.proxyLog)
			}
			c.Log.Log(context.Background(), level, "connection rejected: no valid PROXY protocol header",
				"err", err, "rejected_so_far", n)
			return nil, false
		}
		c.Log = connLogger(l.log, c, nc.RemoteAddr(), true)
	} else {
		c.Log = connLogger(l.log, c, nil, true)
	}
	if !l.admit(c) {
		return nil, false
	}
	if l.cfg.TLS != nil {
		// After any bytes read past the PROXY header; reads of what the
		// kernel holds at the drain deadline still decrypt.
		under := newDrainConn(c.Conn, c)
		tc := tls.Server(under, l.cfg.TLS)
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			n := l.hsFailed.Add(1)
			level := slog.LevelDebug // a port probe or health check
			if !errors.Is(err, io.EOF) {
				level = rejectLevel(&l.tlsLog)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("not finished within %s: %w", l.cfg.HandshakeTimeout, err)
			}
			c.Log.Log(context.Background(), level, "TLS handshake failed", "err", err, "failed_so_far", n)
			l.sources.release(c.source)
			return nil, false
		}
		c.Conn = tc
		if d, ok := under.(*drainConn); ok {
			c.drain = d
		}
	}
	return c, true
}

// rejectLogEvery is how often a rejected connection is logged at warn
// level at most (rejectLevel).
const rejectLogEvery = 10 * time.Second

// rejectLevel is the level of a rejected connection's log line: warn
// when every allows it (once every rejectLogEvery), debug in between.
func rejectLevel(every *rate.Sometimes) slog.Level {
	out := slog.LevelDebug
	every.Do(func() { out = slog.LevelWarn })
	return out
}

// admit applies the per-source limits to c's client address; a refused
// connection is counted and logged (once a minute).
func (l *Listener) admit(c *Conn) bool {
	key, refused, untracked := l.sources.admit(c.Client, time.Now())
	if untracked {
		l.sourcesUntracked.Add(1)
		l.sourceLog.Do(func() {
			c.Log.Warn("per-source limits: the table of client addresses is full of busy ones; new addresses are served unlimited",
				"max_sources", MaxSources, "untracked_so_far", l.sourcesUntracked.Load())
		})
	}
	switch refused {
	case "":
		c.source = key
		return true
	case overConns:
		l.sourceConns.Add(1)
	default:
		l.sourceRate.Add(1)
	}
	l.sourceLog.Do(func() {
		c.Log.Warn("connection refused: its client address is over its limit (--max-conns-per-source, --max-conn-rate-per-source)",
			"limit", refused, "refused_so_far", l.sourceConns.Load()+l.sourceRate.Load())
	})
	return false
}

// track registers c. A connection that arrives after reads were cut off is
// cut off too.
func (l *Listener) track(c *Conn) {
	l.mu.Lock()
	if l.interrupted {
		c.interrupt()
	}
	l.conns[c] = struct{}{}
	l.active.Add(1)
	leaving := l.leaving
	l.mu.Unlock()
	if leaving {
		c.askToLeave()
	}
}

// AskToLeave tells each client the listener serves, and each it serves
// from now on, that nothing more will come from this end and that it
// should go: its socket's write side is shut (a FIN; no TLS close_notify,
// see Conn.askToLeave). Reads go on. A shipper that watches its
// connection (syslog-ng, rsyslog) then closes it once what it wrote is
// on its way, and reconnects: to the listener's replacement, or another
// instance. The drain deadline then cuts nothing it had written, which
// the reset at the deadline would lose in the shipper's own socket.
// Shippers that do not watch go on sending, and are read until the
// deadline as before. It is for one-way streams (NDJSON mode), at the
// start of a drain; connections leaving for another listener (Leave)
// are left alone.
func (l *Listener) AskToLeave() {
	l.mu.Lock()
	l.leaving = true
	conns := make([]*Conn, 0, len(l.conns))
	for c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	for _, c := range conns {
		c.askToLeave()
	}
}

func (l *Listener) untrack(c *Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	l.active.Add(-1)
}

// Shutdown stops accepting and waits for every connection's handler to
// return. Clients may go on sending until they close their connections; when
// ctx is done first, reads on the remaining connections are made to fail so
// that their handlers finish. Shutdown then still waits for the handlers and
// returns ctx's error.
func (l *Listener) Shutdown(ctx context.Context) error {
	l.mu.Lock()
	l.draining = true
	handedOver := l.handedOver
	grace := time.Now().Add(backlogGrace)
	l.rawDeadline(grace)
	l.mu.Unlock()
	if !handedOver {
		// Accept what the kernel has already queued, then stop.
		if dl, ok := l.ln.(deadliner); l.loops == nil && (!ok || dl.SetDeadline(grace) != nil) {
			l.ln.Close()
		}
		stop := time.AfterFunc(backlogGrace, l.stopAccepting)
		defer stop.Stop()
	}
	<-l.done
	l.stopAccepting()
	finished := make(chan struct{})
	go func() { l.wg.Wait(); l.workers.Close(); close(finished) }()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	l.interrupted = true
	for c := range l.conns {
		c.interrupt()
	}
	for nc := range l.preparing {
		cutPrepare(nc)
	}
	l.mu.Unlock()
	<-finished
	return ctx.Err()
}

// stopAccepting ends accepting: at once after Handover, at the end of
// Shutdown's backlog grace otherwise.
func (l *Listener) stopAccepting() {
	l.graceOnce.Do(func() {
		close(l.graceOver)
		if l.loops != nil {
			l.loops.stop.Store(true)
			l.loops.wakeAll()
		}
	})
}

// Stats returns the listener's counters.
func (l *Listener) Stats() Stats {
	return Stats{
		Accepted: l.accepted.Load(), Active: l.active.Load(), HandshakeFailed: l.hsFailed.Load(),
		ProxyRejected: l.proxyRejected.Load(), ProxyUntrusted: l.proxyUntrusted.Load(),
		SourceConns: l.sourceConns.Load(), SourceRate: l.sourceRate.Load(), SourcesUntracked: l.sourcesUntracked.Load(), LimitReached: l.limited.Load(), Adopted: l.adopted.Load(),
	}
}

// WaitPrepared waits until every connection accepted so far has passed its
// PROXY header and TLS handshake (or failed them) and is tracked, or ctx is
// done. Call it after accepting stopped (Handover), to know every
// connection the handler will see.
func (l *Listener) WaitPrepared(ctx context.Context) error {
	done := make(chan struct{})
	go func() { l.prep.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Adopt serves nc, a client connection that another process accepted
// (the one this process upgraded from), as if this listener had accepted
// it: its PROXY header and TLS handshake are behind it, so id, client and
// local come with it, and pending are bytes read from it before, which the
// handler reads first. It counts as active and drains with the listener. It
// returns false, leaving nc to the caller, when the listener is shutting
// down. Adopted connections take a place under MaxConns when one is free
// and are served even when none is: their clients were served already.
func (l *Listener) Adopt(nc net.Conn, id ksuid.KSUID, client, local net.Addr, pending []byte) bool {
	c := &Conn{Conn: nc, ID: id, Client: client, Local: local}
	if len(pending) > 0 {
		c.Conn = &prefixConn{Conn: nc, pending: pending}
	}
	c.tcp, _ = nc.(*net.TCPConn)
	return l.adopt(c)
}

// AdoptConn serves old, a TLS connection that another listener of this
// process let go (Conn.Leave: a reload's replacement takes the clients of
// the listener it replaces), with its session: pending is plaintext read
// from it before, which the handler reads first (Conn.Pending). Otherwise
// as Adopt; old is not used after, whatever the answer.
func (l *Listener) AdoptConn(old *Conn, pending []byte) bool {
	c := &Conn{Conn: old.Conn, ID: old.ID, Client: old.Client, Local: old.Local, tcp: old.tcp, drain: old.drain, pending: pending}
	if c.drain != nil {
		c.drain.c = c // whose drain deadline its reads follow
	}
	if !l.adopt(c) {
		if c.drain != nil {
			c.drain.c = old
		}
		return false
	}
	return true
}

// adopt serves c as Adopt and AdoptConn describe.
func (l *Listener) adopt(c *Conn) bool {
	l.mu.Lock()
	if l.draining {
		l.mu.Unlock()
		return false
	}
	l.wg.Add(1) // done in release; under mu, so never after Shutdown's Wait began
	l.mu.Unlock()
	slot := l.trySlot()
	l.adopted.Add(1)
	_ = c.SetReadDeadline(time.Time{}) // the old holder's, to stop its reads, is past
	c.Log = connLogger(l.log, c, nil, true)
	l.workers.Go(func() {
		l.track(c)
		c.release = func() {
			l.untrack(c)
			if !c.hasLeft() {
				c.Conn.Close()
			}
			if slot {
				l.freeSlot()
			}
			l.wg.Done()
		}
		l.h.ServeConn(c)
		if !c.detached {
			c.release()
		}
	})
	return true
}
