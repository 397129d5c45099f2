package passthrough

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/upstream"
)

// Who ended a connection, as logged in closed_by.
const (
	byClient   = "client"   // the client ended its stream first
	byTarget   = "target"   // the target ended its stream first
	byIdle     = "idle"     // no traffic for IdleTimeout
	byShutdown = "shutdown" // the drain timeout passed
)

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

	client  net.Conn     // what to read and write on the client side
	cTCP    *net.TCPConn // the client's socket, when it is plain TCP
	bTCP    *net.TCPConn // the target's socket, when it is plain TCP
	pending []byte       // read past the client's PROXY header

	last                   atomic.Int64 // Unix nanoseconds of the last bytes moved
	fromClient, fromTarget atomic.Int64

	mu       sync.Mutex
	closedBy string          // guarded by mu
	err      error           // first real error; guarded by mu
	idle     clockwork.Timer // guarded by mu
}

func newSession(s *Server, c *listener.Conn, t *upstream.Target, backend net.Conn) *session {
	ss := &session{s: s, c: c, t: t, backend: backend, start: s.clock.Now(), client: c.Conn}
	if tcp, pending, ok := c.Raw(); ok {
		ss.client, ss.cTCP, ss.pending = tcp, tcp, pending
	}
	ss.bTCP, _ = backend.(*net.TCPConn)
	ss.last.Store(ss.start.UnixNano())
	return ss
}

// serve runs the session to its end, then releases the client connection
// with done.
func (ss *session) serve(done func()) {
	defer done()
	defer ss.s.untrack(ss)
	defer ss.t.ConnClosed()
	defer ss.backend.Close()
	ss.run()
	ss.judge()
	ss.logClose()
}

// run proxies both ways until both streams have ended, or one failed.
func (ss *session) run() {
	if d := ss.s.cfg.IdleTimeout; d > 0 {
		ss.mu.Lock()
		ss.idle = ss.s.clock.AfterFunc(d, ss.checkIdle)
		ss.mu.Unlock()
		defer func() {
			ss.mu.Lock()
			ss.idle.Stop()
			ss.mu.Unlock()
		}()
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go ss.copyFromTarget(&wg)
	ss.copyFromClient()
	wg.Wait()
}

// copyFromClient copies the client's bytes to the target.
func (ss *session) copyFromClient() {
	var err error
	if len(ss.pending) > 0 {
		var n int
		n, err = ss.backend.Write(ss.pending)
		ss.movedFromClient(n)
	}
	if err == nil {
		var n int64
		var spliced bool
		n, spliced, err = proxyCopy(&stream{src: ss.client, dst: ss.backend, srcTCP: ss.cTCP, dstTCP: ss.bTCP, moved: ss.movedFromClient})
		if spliced {
			ss.s.spliced.Add(uint64(n))
		}
	}
	ss.ended(byClient, err, ss.backend)
}

// copyFromTarget copies the target's bytes to the client.
func (ss *session) copyFromTarget(wg *sync.WaitGroup) {
	defer wg.Done()
	n, spliced, err := proxyCopy(&stream{src: ss.backend, dst: ss.client, srcTCP: ss.bTCP, dstTCP: ss.cTCP, moved: ss.movedFromTarget})
	if spliced {
		ss.s.spliced.Add(uint64(n))
	}
	ss.ended(byTarget, err, ss.client)
}

func (ss *session) movedFromClient(n int) {
	ss.fromClient.Add(int64(n))
	ss.s.fromClient.Add(uint64(n))
	ss.last.Store(ss.s.clock.Now().UnixNano())
}

func (ss *session) movedFromTarget(n int) {
	if ss.fromTarget.Add(int64(n)) == int64(n) && n > 0 {
		ss.s.attemptSucceeded(ss.t) // the first bytes: the target works
	}
	ss.s.fromTarget.Add(uint64(n))
	ss.last.Store(ss.s.clock.Now().UnixNano())
}

// ended records that side's stream ended with err. At EOF the other side
// is half-closed and its stream goes on; on an error both are closed.
func (ss *session) ended(side string, err error, peer net.Conn) {
	ss.mu.Lock()
	aborted := ss.closedBy == byIdle || ss.closedBy == byShutdown
	if ss.closedBy == "" {
		ss.closedBy = side
	}
	if err != nil && ss.err == nil && !aborted && !errors.Is(err, net.ErrClosed) {
		ss.err = err
	}
	ss.mu.Unlock()
	if err != nil {
		ss.close()
		return
	}
	closeWrite(peer)
}

// abort ends the session for reason, unless it already ended.
func (ss *session) abort(reason string) {
	ss.mu.Lock()
	if ss.closedBy == "" {
		ss.closedBy = reason
	}
	ss.mu.Unlock()
	ss.close()
}

func (ss *session) close() {
	ss.c.Close()
	ss.backend.Close()
}

// checkIdle runs when the idle timer fires: it closes the connection if
// nothing moved for IdleTimeout, or sets the timer for when that would be.
func (ss *session) checkIdle() {
	idle := ss.s.cfg.IdleTimeout
	quiet := ss.s.clock.Since(time.Unix(0, ss.last.Load()))
	if quiet < idle {
		ss.mu.Lock()
		ss.idle.Reset(idle - quiet)
		ss.mu.Unlock()
		return
	}
	ss.s.idleClosed.Add(1)
	ss.abort(byIdle)
}

// judge records the session's outcome for passive health, unless the
// target already proved itself by sending: a target that ended the
// connection first, having sent nothing, within ConnectTimeout of its
// start, failed (it accepts and resets, or crashed). Any other ending is a
// success.
func (ss *session) judge() {
	if ss.fromTarget.Load() > 0 {
		return
	}
	ss.mu.Lock()
	by, err := ss.closedBy, ss.err
	ss.mu.Unlock()
	if by == byTarget && ss.s.clock.Since(ss.start) < ss.s.cfg.ConnectTimeout {
		if err == nil {
			err = errClosedEarly
		}
		ss.s.earlyClosed.Add(1)
		ss.s.attemptFailed(ss.t, err)
		return
	}
	ss.s.attemptSucceeded(ss.t)
}

// logClose writes the connection's close line.
func (ss *session) logClose() {
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
