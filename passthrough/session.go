package passthrough

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ndlb/ndlb/internal/mono"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/upstream"
)

// Who ended a connection, as logged in closed_by.
const (
	byClient   = "client"      // the client ended its stream first, or a write to it failed
	byTarget   = "target"      // the target ended its stream first, or a write to it failed
	byIdle     = "idle"        // no traffic for IdleTimeout
	byHalf     = "half-closed" // no traffic for HalfCloseTimeout after one side's FIN
	byShutdown = "shutdown"    // the drain timeout passed
	byError    = "error"       // ndlb could not serve it (out of epoll watches or memory)
)

// writeError is a failed write to a stream's destination: the connection
// ended by the destination's doing (it reset, or went away), not by the
// source's, whose stream it is.
type writeError struct{ error }

func (e writeError) Unwrap() error { return e.error }

// endedBy is who ended a connection whose stream from the client
// (fromClient) or from the target ended with err: the stream's source,
// or its destination when a write to it failed.
func endedBy(fromClient bool, err error) string {
	var we writeError
	if errors.As(err, &we) {
		fromClient = !fromClient
	}
	if fromClient {
		return byClient
	}
	return byTarget
}

// errClosedEarly is the failure of a target that closed a connection at
// once, sending nothing.
var errClosedEarly = errors.New("target closed the connection without sending anything")

// session is one proxied connection: a client and its target.
type session struct {
	s       *Server
	c       *listener.Conn
	t       *upstream.Target
	backend net.Conn
	start   time.Time
	done    func() // releases the client connection to the listener

	client net.Conn     // what to read and write on the client side
	cTCP   *net.TCPConn // the client's socket, when it is plain TCP
	bTCP   *net.TCPConn // the target's socket, when it is plain TCP
	// cRaw and bRaw are cTCP's and bTCP's raw sockets, for both streams,
	// when both are plain TCP on Linux.
	cRaw, bRaw syscall.RawConn
	pending    []byte       // bytes read past the PROXY header: the target gets them first
	up, down   stream       // client to target, target to client
	live       atomic.Int32 // streams not ended

	last                   atomic.Int64 // when the last bytes moved (internal/mono, on the server's clock)
	timedOut               atomic.Bool  // closed by IdleTimeout or HalfCloseTimeout (once: it stays tracked until it ends)
	half                   atomic.Bool  // one stream reached its end (FIN) and the other goes on
	fromClient, fromTarget atomic.Int64

	// lc is the connection when an event loop serves it (the streams
	// and backend are then unused).
	lc *lconn

	// cut is set when abort found bytes on their way: both sockets are
	// closed with a reset, and no stream half-closes the other side.
	cut atomic.Bool

	mu        sync.Mutex
	closedBy  string // guarded by mu
	err       error  // first real error; guarded by mu
	targetErr error  // the first failure of a read from or a write to the target, before any FIN of its; guarded by mu
	targetFIN bool   // the target's stream reached its end (EOF); guarded by mu
}

func newSession(s *Server, c *listener.Conn, t *upstream.Target, backend net.Conn) *session {
	ss := &session{s: s, c: c, t: t, backend: backend, start: s.clock.Now(), client: c.Conn}
	if tcp, p, ok := c.Raw(); ok {
		ss.client, ss.cTCP, ss.pending = tcp, tcp, p
	}
	ss.bTCP, _ = backend.(*net.TCPConn)
	ss.up.ss, ss.up.fromClient = ss, true
	ss.down.ss = ss
	if ss.cTCP != nil && ss.bTCP != nil && ss.rawConns() {
		ss.up.canSplice.Store(true)
		ss.down.canSplice.Store(true)
	}
	ss.last.Store(mono.Of(ss.start))
	return ss
}

// serve starts both streams. The session finishes when both have ended;
// then done releases the client connection.
func (ss *session) serve(done func()) {
	ss.done = done
	ss.live.Store(2)
	ss.s.streams.Go(ss.down.run)
	proxyCopy(&ss.up)
}

// finish runs when both streams have ended.
func (ss *session) finish() {
	ss.judge()
	ss.logClose()
	ss.s.recordDuration(ss.s.clock.Since(ss.start), ss.t)
	if ss.lc != nil {
		ss.lc.close()
	} else {
		ss.backend.Close()
	}
	ss.t.ConnClosed()
	ss.s.untrack(ss)
	ss.done()
}

func (ss *session) movedFromClient(n int) {
	ss.fromClient.Add(int64(n))
	ss.t.Delivered(0, n)
	ss.s.fromClient.Add(uint64(n))
	ss.last.Store(mono.Of(ss.s.clock.Now()))
}

func (ss *session) movedFromTarget(n int) {
	if ss.fromTarget.Add(int64(n)) == int64(n) && n > 0 {
		ss.s.attemptSucceeded(ss.t) // the first bytes: the target works
	}
	ss.s.fromTarget.Add(uint64(n))
	ss.t.Received(n)
	ss.last.Store(mono.Of(ss.s.clock.Now()))
}

// ended records that st ended with err. At EOF the other side is
// half-closed and its stream goes on; on an error both are shut down. The
// last stream to end finishes the session.
func (ss *session) ended(st *stream, err error) {
	if err == nil && !st.fromClient && ss.live.Load() == 2 && ss.bTCP != nil && wasReset(ss.bTCP) {
		// EOF after a reset whose error the client's stream took in a
		// write: the target reset, it did not close. (Asked only while
		// the client's stream is on, so no FIN of ours went to the
		// target: after both FINs the socket's state is CLOSE too.)
		err = errTargetReset
	}
	aborted := ss.recordEnd(st.fromClient, err)
	last := ss.live.Add(-1) == 0
	switch {
	case ss.cut.Load():
		// Cut with bytes on their way: no FIN; the last stream's
		// finish closes both sockets with a reset.
	case err != nil && !aborted && !errors.Is(err, net.ErrClosed):
		// One side failed (reset, timeout): the other must not read
		// what it got so far followed by a clean end of stream.
		ss.reset()
	case err != nil:
		ss.shutdown()
	case !last:
		closeWrite(st.dst())
	}
	// The last stream's end needs no half-close: finish closes both
	// sockets, which sends the FIN.
	if last {
		ss.finish()
	}
}

// recordEnd records, for the log and the verdict, that the stream from
// the client (fromClient) or from the target ended with err, and reports
// whether the session was aborted (idle, shutdown) before.
func (ss *session) recordEnd(fromClient bool, err error) (aborted bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	aborted = ss.closedBy == byIdle || ss.closedBy == byHalf || ss.closedBy == byShutdown
	by := endedBy(fromClient, err)
	if ss.closedBy == "" {
		ss.closedBy = by
	}
	if aborted || errors.Is(err, net.ErrClosed) {
		return aborted
	}
	if err == nil && !ss.half.Load() {
		// The first FIN: HalfCloseTimeout counts from here.
		ss.last.Store(mono.Of(ss.s.clock.Now()))
		ss.half.Store(true)
	}
	if err != nil && ss.err == nil {
		ss.err = err
	}
	switch {
	case by != byTarget:
	case err == nil:
		ss.targetFIN = true
	case ss.targetErr == nil && !ss.targetFIN:
		// After its FIN, a failed write to the target is the reset
		// its kernel answers to bytes that came after it closed: a
		// silent close still.
		ss.targetErr = err
	}
	return aborted
}

// targetClosed records that the target's FIN came (its stream will end
// at EOF), before a read of it.
func (ss *session) targetClosed() {
	ss.mu.Lock()
	if ss.targetErr == nil {
		ss.targetFIN = true
	}
	ss.mu.Unlock()
}

// abort ends the session for reason, unless it already ended. A cut that
// catches bytes on their way (unread in a socket, or written and not yet
// taken by a peer) ends both sockets with a reset, so that neither peer
// takes what it got for the whole stream; a quiet connection ends with
// FINs. It reports whether it cut with a reset.
func (ss *session) abort(reason string) (cut bool) {
	ss.mu.Lock()
	if ss.closedBy == "" {
		ss.closedBy = reason
	}
	ss.mu.Unlock()
	if ss.lc != nil {
		cut = ss.lc.cutIfInFlight()
	} else {
		cut = ss.cutIfInFlight()
	}
	if !cut {
		ss.shutdown()
	}
	return cut
}

// shutdown ends both streams: plain sockets are shut down both ways (which
// wakes a parked stream, where closing would not), others are closed.
func (ss *session) shutdown() {
	if ss.lc != nil {
		ss.lc.shutdownSockets()
		return
	}
	for _, c := range []net.Conn{ss.client, ss.backend} {
		if tc, ok := c.(*net.TCPConn); ok {
			shutdownBoth(tc)
		} else {
			c.Close()
		}
	}
}

// reset ends both streams so that the final close sends RST, not FIN: plain
// sockets get SO_LINGER 0 and are shut down for reading only (which wakes a
// parked stream and sends nothing); others are closed. Both sockets linger
// before either read ends: the end of a read may end the session, and
// close the other socket.
func (ss *session) reset() {
	conns := []net.Conn{ss.client, ss.backend}
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	}
	for _, c := range conns {
		tc, ok := c.(*net.TCPConn)
		if !ok {
			c.Close()
			continue
		}
		if rc, err := tc.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { _ = syscall.Shutdown(int(fd), syscall.SHUT_RD) })
		}
	}
}

// shutdownBoth shuts tc down both ways without closing it.
func shutdownBoth(tc *net.TCPConn) {
	if rc, err := tc.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
	}
}

// judge records the session's outcome for passive health, unless the
// target already proved itself by sending. A target that sent nothing
// and, within ConnectTimeout of the start, reset the connection (a read
// from it or a write to it failed before any FIN of its, whoever ended
// their stream first: it crashed, or nothing serves behind its port), or
// ended the connection first by closing it before the client sent
// anything, failed.
// A silent close (FIN) after the client sent bytes may be the target
// refusing what the client sent (junk, the wrong protocol): no verdict,
// so that clients cannot push targets out of rotation. Any other ending
// is a success.
func (ss *session) judge() {
	if ss.fromTarget.Load() > 0 {
		return
	}
	ss.mu.Lock()
	by, err := ss.closedBy, ss.targetErr
	ss.mu.Unlock()
	early := ss.s.clock.Since(ss.start) < ss.s.cfg.ConnectTimeout
	switch {
	case !early:
	case err == nil && by == byTarget && ss.fromClient.Load() > 0:
		ss.s.clientProvoked.Add(1)
		return
	case err == nil && by == byTarget:
		err = errClosedEarly
		fallthrough
	case err != nil:
		ss.s.earlyClosed.Add(1)
		ss.s.attemptFailed(ss.t, err)
		return
	}
	ss.s.attemptSucceeded(ss.t)
}

// logClose writes the connection's close line.
func (ss *session) logClose() {
	if !ss.c.Log.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	ss.mu.Lock()
	by, err := ss.closedBy, ss.err
	ss.mu.Unlock()
	args := []any{"target", ss.t.Addr, "bytes_from_client", ss.fromClient.Load(), "bytes_from_target", ss.fromTarget.Load(),
		"duration", ss.s.clock.Since(ss.start).Round(time.Microsecond), "closed_by", by}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && by == byShutdown {
			err = nil
		}
	}
	if err != nil {
		args = append(args, "err", err.Error())
	}
	ss.c.Log.Info("connection closed", args...)
}
