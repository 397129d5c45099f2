package linetest

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/time/rate"
)

// Sink is an NDJSON target on loopback. It records whole lines in its Ledger
// (when it has one) and counts them. Its faults are real socket operations.
type Sink struct {
	addr   string
	ledger *Ledger     // nil: count only
	tls    *tls.Config // nil: plain TCP

	lines, bytes, partials, tornEOF, outOfOrder, resets atomic.Uint64

	mu     sync.Mutex
	ln     net.Listener           // guarded by mu
	conns  map[*sinkConn]struct{} // guarded by mu
	paused bool                   // guarded by mu
	slow   *rate.Limiter          // Throttle's; guarded by mu
	kill   killMode               // guarded by mu
	wake   *sync.Cond             // on mu: pause and kill changes
	wg     sync.WaitGroup         // connection handlers and the accept loop
}

type killMode int

const (
	alive   killMode = iota
	drain            // read what the kernel holds, then reset
	discard          // reset with the unread data (it is lost)
)

type sinkConn struct {
	c        *net.TCPConn // the socket, for faults
	r        net.Conn     // what is read: c, or TLS over it
	unread   int          // discard: bytes unread at the reset
	unreadLn []byte       // discard: the unread data, after carried
	carried  []byte       // discard: the start of a line read but not recorded
}

// NewSink listens on addr ("127.0.0.1:0" for any port) and serves.
func NewSink(addr string, l *Ledger) (*Sink, error) { return NewTLSSink(addr, l, nil) }

// StartSink is NewSink on a free loopback port, closed when the test ends.
func StartSink(t testing.TB, l *Ledger) *Sink {
	t.Helper()
	s, err := NewSink("127.0.0.1:0", l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// NewTLSSink is NewSink with TLS on every connection when cfg is not nil.
func NewTLSSink(addr string, l *Ledger, cfg *tls.Config) (*Sink, error) {
	s := &Sink{ledger: l, tls: cfg, conns: make(map[*sinkConn]struct{})}
	s.wake = sync.NewCond(&s.mu)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	return s, nil
}

// Addr is the sink's host:port; it stays the same across Kill and Restart.
func (s *Sink) Addr() string { return s.addr }

// Lines is the number of whole lines received.
func (s *Sink) Lines() uint64 { return s.lines.Load() }

// Bytes is the number of bytes of whole lines received.
func (s *Sink) Bytes() uint64 { return s.bytes.Load() }

// Partials counts connections that ended inside a line: the torn end of a
// write cut by a failure, which a target must not take for a line.
func (s *Sink) Partials() uint64 { return s.partials.Load() }

// TornEOF counts connections whose sender ended them cleanly (FIN) inside a
// line: a fragment presented as the end of the stream, which a receiver
// that terminates tails at EOF would store as a torn line. A sender that
// gives up mid-line must reset instead.
func (s *Sink) TornEOF() uint64 { return s.tornEOF.Load() }

func (s *Sink) serve(ln net.Listener) {
	s.mu.Lock()
	s.ln, s.kill = ln, alive
	s.mu.Unlock()
	s.wg.Go(func() { s.acceptLoop(ln) })
}

func (s *Sink) acceptLoop(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			// A kill's drain window ended (or the listener closed):
			// close at once, so the kernel completes no connection, and
			// acknowledges no data, that nobody would read.
			ln.Close()
			return
		}
		sc := &sinkConn{c: c.(*net.TCPConn), r: c}
		if s.tls != nil {
			sc.r = tls.Server(c, s.tls)
		}
		s.mu.Lock()
		switch s.kill {
		case discard:
			s.mu.Unlock()
			resetClose(sc.c)
			continue
		case drain:
			// Completed in the kernel before the kill, and maybe holding
			// acknowledged data: read it like the others.
			shutdown(sc.c)
		}
		s.conns[sc] = struct{}{}
		s.mu.Unlock()
		s.wg.Go(func() { s.handle(sc) })
	}
}

// handle reads one connection until it ends or the sink is killed.
func (s *Sink) handle(sc *sinkConn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, sc)
		s.mu.Unlock()
	}()
	buf := make([]byte, 256<<10)
	n := 0
	last := map[uint32]uint32{} // per client, the last sequence number on this connection
	for {
		s.mu.Lock()
		for s.paused && s.kill == alive {
			s.wake.Wait()
		}
		kill, slow := s.kill, s.slow
		s.mu.Unlock()
		if kill == discard {
			// What the sink had read of an unfinished line is lost
			// with the unread rest: keep it in front of the peek.
			sc.carried = append([]byte(nil), buf[:n]...)
			s.discard(sc)
			return
		}
		if n == len(buf) { // a line longer than the buffer: not ours
			n = 0
		}
		end := len(buf)
		if slow != nil {
			end = min(end, n+throttleChunk)
		}
		m, err := sc.r.Read(buf[n:end])
		n += m
		if slow != nil && m > 0 {
			_ = slow.WaitN(context.Background(), m)
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			s.checkOrder(buf[:i+1], last)
			s.record(buf[:i+1])
			n = copy(buf, buf[i+1:n])
		}
		if err != nil {
			if kill == alive && errors.Is(err, syscall.ECONNRESET) {
				s.resets.Add(1)
			}
			if n > 0 {
				s.partials.Add(1)
				if kill == alive && errors.Is(err, io.EOF) {
					s.tornEOF.Add(1)
				}
			}
			if kill != alive {
				resetClose(sc.c)
			} else {
				sc.c.Close()
			}
			return
		}
	}
}

// Resets counts connections the sender ended with a reset rather than a
// clean end of stream (while the sink was alive).
func (s *Sink) Resets() uint64 { return s.resets.Load() }

// checkOrder counts lines that arrive on a connection after a later line of
// the same client: a worker writes a client's batches in queue order, so on
// one connection that happens only after a failure sent a batch again.
func (s *Sink) checkOrder(lines []byte, last map[uint32]uint32) {
	for len(lines) > 0 {
		i := bytes.IndexByte(lines, '\n')
		if c, seq, ok := ParseLine(lines[:i]); ok {
			if prev, seen := last[c]; seen && seq <= prev {
				s.outOfOrder.Add(1)
			}
			last[c] = seq
		}
		lines = lines[i+1:]
	}
}

// OutOfOrder counts lines that arrived on a connection after a later line
// of the same client.
func (s *Sink) OutOfOrder() uint64 { return s.outOfOrder.Load() }

// StopAccepting closes the sink's listener (new connections are refused)
// and leaves the connections it has alone: a target whose health checks
// fail while its data connections still work.
func (s *Sink) StopAccepting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ln.Close()
}

func (s *Sink) record(lines []byte) {
	s.lines.Add(uint64(bytes.Count(lines, []byte{'\n'})))
	s.bytes.Add(uint64(len(lines)))
	if s.ledger != nil {
		s.ledger.Add(lines)
	}
}

// discard measures what is unread in the kernel (SIOCINQ), keeps a peeked
// copy of it for the test, and resets the connection.
func (s *Sink) discard(sc *sinkConn) {
	sc.unreadLn = sc.carried
	rc, err := sc.c.SyscallConn()
	if err == nil {
		_ = rc.Control(func(fd uintptr) {
			n, err := unreadBytes(int(fd))
			if err != nil || n == 0 {
				return
			}
			p := make([]byte, n)
			m, _, err := unix.Recvfrom(int(fd), p, unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if err == nil {
				sc.unread, sc.unreadLn = m, append(sc.carried, p[:m]...)
			}
		})
	}
	resetClose(sc.c)
}

// ResetUnread resets c as a crashing target would, and returns the data its
// kernel had acknowledged and the process never read: exactly what the
// sender loses. Nothing can slip in between the measurement and the reset
// (see shutdown).
func ResetUnread(c *net.TCPConn) []byte {
	shutdown(c)
	sc := &sinkConn{c: c}
	(&Sink{}).discard(sc)
	return sc.unreadLn
}

// shutdown stops the connection both ways. From here on any data that
// arrives is answered with a reset instead of being acknowledged (RFC 1122,
// FIN-WAIT with the read side shut), so what the kernel holds is all that
// was acknowledged and nothing more can slip in before the reset.
func shutdown(c *net.TCPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RDWR) })
}

// resetClose closes c with a reset (SO_LINGER 0) rather than a FIN.
func resetClose(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// throttleChunk is the most a throttled sink reads at once.
const throttleChunk = 4 << 10

// Throttle makes the sink read no more than bytesPerSecond over all its
// connections, as a slow receiver does; 0 lifts it.
func (s *Sink) Throttle(bytesPerSecond int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slow = nil
	if bytesPerSecond > 0 {
		s.slow = rate.NewLimiter(rate.Limit(bytesPerSecond), max(bytesPerSecond, throttleChunk))
	}
}

// Pause stops reading: the sink's receive queue fills, then the sender's.
func (s *Sink) Pause() { s.setPaused(true) }

// Resume reads again after Pause.
func (s *Sink) Resume() { s.setPaused(false) }

func (s *Sink) setPaused(p bool) {
	s.mu.Lock()
	s.paused = p
	s.wake.Broadcast()
	s.mu.Unlock()
}

// KillResult says what a Kill left unread.
type KillResult struct {
	UnreadBytes int    // bytes acknowledged by the sink's kernel and never read
	Unread      []byte // those bytes, as peeked before the reset
	// UnreadConns is the same per connection, each preceded by the start
	// of a line the sink had read but not recorded (so each begins at a
	// line's start).
	UnreadConns [][]byte
}

// Kill closes the listener and resets every connection, as a crashing target
// would. With drainFirst it first reads what its kernel has already
// acknowledged, so nothing is lost; without, that data is lost and returned.
// Kill returns when every connection is closed.
func (s *Sink) Kill(drainFirst bool) KillResult {
	s.mu.Lock()
	// The listener closes first, so no connection completes after the
	// kill. One the kernel completed just before, still in the accept
	// backlog, is reset with whatever data it had acknowledged: that is
	// the loss a crashing target causes, which no sender can avoid, so a
	// test that kills a target must not be racing a fresh connection to it.
	ln := s.ln
	ln.Close()
	s.kill = discard
	if drainFirst {
		s.kill = drain
	}
	conns := make([]*sinkConn, 0, len(s.conns))
	for sc := range s.conns {
		conns = append(conns, sc)
		shutdown(sc.c)
	}
	s.wake.Broadcast()
	s.mu.Unlock()
	s.wg.Wait()
	ln.Close()
	var r KillResult
	for _, sc := range conns {
		r.UnreadBytes += sc.unread
		r.Unread = append(r.Unread, sc.unreadLn[len(sc.carried):]...)
		r.UnreadConns = append(r.UnreadConns, sc.unreadLn)
	}
	return r
}

// WaitDrained waits until every connection the sink accepted has ended, so
// that everything its kernel acknowledged has been read and recorded. It
// returns false if that takes longer than timeout.
func (s *Sink) WaitDrained(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// Restart listens again on the same address after Kill.
func (s *Sink) Restart() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	s.serve(ln)
	return nil
}

// Close stops the sink for good, closing connections normally.
func (s *Sink) Close() {
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	for sc := range s.conns {
		sc.c.Close()
	}
	s.paused = false
	s.wake.Broadcast()
	s.mu.Unlock()
	s.wg.Wait()
}

// IsReset tells the errors a client sees when its peer resets.
func IsReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF)
}
