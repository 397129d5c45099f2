package ndjson

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/internal/certtest"
	"github.com/ndlb/ndlb/internal/linetest"
)

// startPeer starts another server with srv's config on a listener of its
// own, as a reload's replacement of srv would be, and shuts it down at the
// end of the test.
func startPeer(t *testing.T, srv *Server) *Server {
	t.Helper()
	next, err := New(srv.cfg)
	if err != nil {
		t.Fatal(err)
	}
	next.Start(newLocalListener(t))
	t.Cleanup(func() { next.Shutdown() })
	return next
}

// moveTo gives each transfer to srv as another process would get it: a
// duplicate of the socket (SCM_RIGHTS makes one), the old one closed.
func moveTo(t *testing.T, srv *Server) func(Transfer) error {
	return func(tr Transfer) error {
		f, err := tr.Conn.File()
		if err != nil {
			return err
		}
		nc, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return err
		}
		tr.Conn = nc.(*net.TCPConn)
		if !srv.Adopt(tr) {
			t.Error("the new server refused a connection")
		}
		return nil
	}
}

// HandOff moves plain connections with the line each was in the middle of,
// and the line they were skipping; the new server completes the first and
// skips the rest of the second without counting it again. Whole lines read
// before the move are delivered by the old server.
func TestHandOffCarriesPartialAndSkippedLines(t *testing.T) {
	old, sink := startServer(t, func(c *Config) { c.Framer.MaxLineBytes = 512 })
	next := startPeer(t, old)

	partial, err := net.Dial("tcp", old.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer partial.Close()
	skipping, err := net.Dial("tcp", old.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer skipping.Close()
	line1 := linetest.AppendLine(nil, 1, 1)
	partial.Write(append(linetest.AppendLine(nil, 1, 0), line1[:10]...))
	skipping.Write([]byte(strings.Repeat("x", 600))) // over the limit: dropped, skipped
	waitUntil(t, "first line delivered", func() bool { return sink.Lines() == 1 })
	waitUntil(t, "oversize line counted", func() bool { return old.Stats().DroppedOversize == 1 })

	if ln := old.Handover(); ln != nil {
		ln.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if moved, busy := old.HandOff(ctx, moveTo(t, next)); moved != 2 || busy != 0 {
		t.Fatalf("moved %d connections, want 2", moved)
	}
	partial.Write(line1[10:])
	skipping.Write(append([]byte(strings.Repeat("y", 100)+"\n"), linetest.AppendLine(nil, 2, 0)...))
	partial.Close()
	skipping.Close()
	waitUntil(t, "three lines delivered", func() bool { return sink.Lines() == 3 })
	a, b := old.Shutdown(), next.Shutdown()
	if a.Ledger.Received != 2 || a.Ledger.Delivered != 1 || a.DroppedOversize != 1 || !a.Clean {
		t.Errorf("old server: %+v", a.Ledger)
	}
	if b.Ledger.Received != 2 || b.Ledger.Delivered != 2 || b.DroppedOversize != 0 || b.DroppedIncomplete != 0 {
		t.Errorf("new server: %+v, oversize %d", b.Ledger, b.DroppedOversize)
	}
	if b.Listener.Adopted != 2 {
		t.Errorf("adopted %d", b.Listener.Adopted)
	}
}

// A connection the new process refuses stays: the old server reads on,
// and the line it was in the middle of arrives whole.
func TestHandOffRefusedConnectionIsServedOn(t *testing.T) {
	srv, sink := startServer(t, nil)
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	line := linetest.AppendLine(nil, 1, 0)
	c.Write(line[:7])
	waitUntil(t, "partial line held", func() bool { return srv.Stats().ClientMemory.Used > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if moved, busy := srv.HandOff(ctx, func(Transfer) error { return errors.New("no room") }); moved != 0 || busy != 0 {
		t.Fatalf("moved %d", moved)
	}
	c.Write(line[7:])
	c.Write(linetest.AppendLine(nil, 1, 1))
	waitUntil(t, "both lines delivered", func() bool { return sink.Lines() == 2 })
	c.Close()
	if sum := srv.Shutdown(); sum.Ledger.Received != 2 || sum.Ledger.Delivered != 2 || sum.DroppedIncomplete != 0 {
		t.Fatalf("ledger %+v", sum.Ledger)
	}
	// A server that is shutting down adopts nothing; the fragment it was
	// given counts as incomplete once the caller, closing it, says so.
	tr := Transfer{Partial: []byte("half")}
	if srv.Adopt(tr) {
		t.Fatal("a stopped server adopted a connection")
	}
	srv.DropCarried(tr)
	if st := srv.Stats(); st.DroppedIncomplete != 1 || !st.Ledger.Closed() {
		t.Fatalf("after a refused adoption: incomplete %d, ledger %+v", st.DroppedIncomplete, st.Ledger)
	}
}

// A listener that requires TLS (turned on since the connection was made)
// refuses a plain connection handed over. DropCarried then reads what the
// kernel holds for it, and counts its lines (the one the transfer
// carried the start of included) as dropped and the unfinished one as
// incomplete: closed unread, they would be lost uncounted.
func TestTLSListenerRefusesPlainHandOff(t *testing.T) {
	serverTLS, _, err := certtest.Configs("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := startServer(t, func(c *Config) { c.Listener.TLS = serverTLS })
	defer srv.Shutdown()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	held := append(append([]byte("ne\n"), linetest.AppendLine(linetest.AppendLine(nil, 1, 1), 1, 2)...), "frag"...)
	if _, err := c.Write(held); err != nil {
		t.Fatal(err)
	}
	unread := func() int {
		var n int
		rc, _ := sc.(*net.TCPConn).SyscallConn()
		rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		return n
	}
	waitUntil(t, "the bytes in the kernel", func() bool { return unread() == len(held) })
	tr := Transfer{Conn: sc.(*net.TCPConn), Client: c.LocalAddr(), Local: c.RemoteAddr(), Partial: []byte("half a li")}
	if srv.Adopt(tr) {
		t.Fatal("a TLS listener adopted a plain connection")
	}
	// Refusing counts nothing (a reload gives the connection back to its
	// old server); the caller that closes it counts what it held.
	if st := srv.Stats(); st.DroppedIncomplete != 0 || st.Ledger.Received != 0 {
		t.Fatalf("a refusal counted: %+v", st)
	}
	if n := srv.DropCarried(tr); n != 3 {
		t.Fatalf("%d lines counted, want 3", n)
	}
	st := srv.Stats()
	if st.DroppedIncomplete != 1 || st.Ledger.Dropped[dispatch.DropShutdown] != 3 || st.Ledger.Received != 4 || !st.Ledger.Closed() {
		t.Fatalf("what the connection held was not counted: %+v", st)
	}
}

// A retired server whose listener's newest server is stopping too (a
// later reload removed it) does not hand its lines to it, where they
// would be dropped: it keeps them and goes on delivering until the
// process stops (review of the queue hand-over).
func TestRetiredDoesNotHandOverToAStoppingServer(t *testing.T) {
	dead := newLocalListener(t)
	addr := dead.Addr().String()
	dead.Close()
	edit := func(c *Config) {
		c.Targets = []string{addr}
		c.DrainTimeout, c.DeliverTimeout = 50*time.Millisecond, 50*time.Millisecond
	}
	a, _ := startServer(t, edit)
	b, _ := startServer(t, edit)
	proc, stop := context.WithCancel(context.Background())
	defer stop()
	sendAndClose(t, a.Addr().String(), 10)
	waitUntil(t, "A read the lines", func() bool { return a.Stats().Ledger.Received == 10 })
	b.Retire(proc, func() *Server { return nil }) // removed by a later reload
	bDone := make(chan Summary, 1)
	go func() { bDone <- b.Shutdown() }()
	waitUntil(t, "B stopping", b.stopping.Load)
	a.Retire(proc, func() *Server { return b })
	aDone := make(chan Summary, 1)
	go func() { aDone <- a.Shutdown() }()
	waitUntil(t, "A past its deadline, holding its lines", func() bool {
		a.spoolMu.Lock()
		defer a.spoolMu.Unlock()
		return a.noSpool && a.hard.Err() == nil
	})
	if lb, la := b.Ledger().Stats(), a.Ledger().Stats(); lb.Received != 0 || la.DroppedTotal() != 0 || la.InFlight != 10 {
		t.Fatalf("A %+v, B %+v: want A holding its 10 lines", la, lb)
	}
	stop() // the process stops: A has --deliver-timeout more, then counts them
	if sa := <-aDone; sa.Clean || sa.Ledger.Dropped[dispatch.DropShutdown] != 10 {
		t.Fatalf("A at the stop: %+v", sa)
	}
	<-bDone
}

// holdConn sends what TLS writes once hold is off; while it is on, it
// keeps the records, for the test to send in parts.
type holdConn struct {
	net.Conn
	hold bool
	kept []byte
}

func (c *holdConn) Write(p []byte) (int, error) {
	if c.hold {
		c.kept = append(c.kept, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// HandOffWithTLS moves a TLS connection, session and all, to another
// server of this process: with the line it was in the middle of, and with
// a record that had come in part, whose rest the new server reads and
// decrypts. The old server delivers the whole lines it read, and lets the
// connection go without closing it.
func TestHandOffWithTLSMovesTheSession(t *testing.T) {
	old, sink, dial := startTLSServer(t, func(*Config) {})
	next := startPeer(t, old)
	var hc *holdConn
	c := dial(func(nc net.Conn) net.Conn { hc = &holdConn{Conn: nc}; return hc })
	line1 := linetest.AppendLine(nil, 1, 1)
	c.Write(append(linetest.AppendLine(nil, 1, 0), line1[:10]...)) // a whole line, and part of the next
	waitUntil(t, "first line delivered", func() bool { return sink.Lines() == 1 })
	hc.hold = true
	c.Write(append(line1[10:], linetest.AppendLine(nil, 1, 2)...)) // one record, kept
	record := hc.kept
	hc.hold = false
	if _, err := hc.Conn.Write(record[:len(record)/2]); err != nil { // the record's first half
		t.Fatal(err)
	}
	// The old server reads the half at once (TLS keeps it, waiting for
	// the rest), or it is still in the kernel when the move begins:
	// either way it moves with the connection.

	if ln := old.Handover(); ln != nil {
		ln.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if moved, busy := old.HandOffWithTLS(ctx, func(tr Transfer) error {
		if tr.TLS == nil || tr.Conn != nil {
			t.Errorf("a TLS connection's transfer: %+v", tr)
		}
		if !next.Adopt(tr) {
			t.Error("the new server refused a TLS connection")
		}
		return nil
	}); moved != 1 || busy != 0 {
		t.Fatalf("moved %d, busy %d", moved, busy)
	}
	if _, err := hc.Conn.Write(record[len(record)/2:]); err != nil { // the rest, after the move
		t.Fatal(err)
	}
	c.Write(linetest.AppendLine(nil, 1, 3))
	waitUntil(t, "four lines delivered", func() bool { return sink.Lines() == 4 })
	c.Close()
	a, b := old.Shutdown(), next.Shutdown()
	if a.Ledger.Received != 1 || a.Ledger.Delivered != 1 || !a.Clean {
		t.Errorf("old server: %+v", a.Ledger)
	}
	if b.Ledger.Received != 3 || b.Ledger.Delivered != 3 || b.DroppedIncomplete != 0 || b.Listener.Adopted != 1 {
		t.Errorf("new server: %+v, incomplete %d, adopted %d", b.Ledger, b.DroppedIncomplete, b.Listener.Adopted)
	}
}

// An upgrade's HandOff (to another process) leaves TLS connections where
// they are: it does not even suspend their reads.
func TestHandOffLeavesTLSConnections(t *testing.T) {
	srv, sink, dial := startTLSServer(t, func(*Config) {})
	c := dial(nil)
	c.Write(linetest.AppendLine(nil, 1, 0))
	waitUntil(t, "a line delivered", func() bool { return sink.Lines() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if moved, busy := srv.HandOff(ctx, func(tr Transfer) error {
		t.Errorf("asked to move a TLS connection: %+v", tr)
		return errors.New("no")
	}); moved != 0 || busy != 0 {
		t.Fatalf("moved %d, busy %d", moved, busy)
	}
	c.Write(linetest.AppendLine(nil, 1, 1))
	waitUntil(t, "both lines delivered", func() bool { return sink.Lines() == 2 })
	c.Close()
	if sum := srv.Shutdown(); sum.Ledger.Received != 2 || sum.Ledger.Delivered != 2 {
		t.Fatalf("ledger %+v", sum.Ledger)
	}
}

// Octet-counted clients move too, from wherever they are in a frame: in a
// message the old server had passed on in part (newlines in it, escaped
// for newline targets), inside an oversize message it was skipping, inside
// a length prefix. The new server reads each on from the start of its
// frame (or skips the rest of the dropped message, without counting it
// again); every message arrives whole, once. A hand-over refused later
// leaves the client with the server that reads on, mid-frame too.
func TestHandOffMovesOctetClientsMidFrame(t *testing.T) {
	for _, target := range []framer.Framing{framer.OctetCounted, framer.Newline} {
		t.Run(string(target), func(t *testing.T) {
			sink := newRawSink(t)
			cfg := DefaultConfig()
			cfg.Targets, cfg.Framing, cfg.TargetFraming = []string{sink.ln.Addr().String()}, framer.OctetCounted, target
			cfg.Framer.MaxLineBytes = 512
			cfg.Logger = slog.New(slog.DiscardHandler)
			old, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			old.Start(newLocalListener(t))
			next, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			next.Start(newLocalListener(t))
			// Before the sink's cleanup, which waits for their connections.
			t.Cleanup(func() { old.Shutdown(); next.Shutdown() })
			dial := func() net.Conn {
				c, err := net.Dial("tcp", old.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				return c
			}
			inMsg, skipping, inPrefix := dial(), dial(), dial()
			stack := "stack:\n  at a()\n  at b()\\n"
			second := "second\nmessage"
			msgs := []string{"first", stack, "after the skipped one", "hello world!", second}
			inMsg.Write(append(octetFrames(msgs[0]), octetFrames(stack)[:12]...))
			skipping.Write([]byte("600 " + strings.Repeat("x", 100)))
			inPrefix.Write([]byte("1"))
			waitUntil(t, "the first message delivered", func() bool { return old.Stats().Ledger.Delivered == 1 })
			waitUntil(t, "the oversize message counted", func() bool { return old.Stats().DroppedOversize == 1 })
			waitUntil(t, "a message held in part", func() bool { return old.Stats().ClientMemory.Used > 0 })

			if ln := old.Handover(); ln != nil {
				ln.Close()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if moved, busy := old.HandOff(ctx, moveTo(t, next)); moved != 3 || busy != 0 {
				t.Fatalf("moved %d connections, %d busy; want 3", moved, busy)
			}
			inMsg.Write(octetFrames(stack)[12:])
			skipping.Write(append([]byte(strings.Repeat("y", 500)), octetFrames(msgs[2])...))
			inPrefix.Write([]byte("2 " + msgs[3]))
			frame := octetFrames(second)
			inMsg.Write(frame[:10])
			waitUntil(t, "three messages delivered by the new server", func() bool { return next.Stats().Ledger.Delivered == 3 })
			waitUntil(t, "a message held in part", func() bool { return next.Stats().ClientMemory.Used > 0 })
			if moved, busy := next.HandOff(ctx, func(Transfer) error { return errors.New("no room") }); moved != 0 || busy != 0 {
				t.Fatalf("a refused hand-over moved %d, %d busy", moved, busy)
			}
			inMsg.Write(frame[10:])
			for _, c := range []net.Conn{inMsg, skipping, inPrefix} {
				c.Close()
			}
			waitUntil(t, "four messages delivered by the new server", func() bool { return next.Stats().Ledger.Delivered == 4 })
			a, b := old.Shutdown(), next.Shutdown()
			if a.Ledger.Received != 2 || a.Ledger.Delivered != 1 || a.DroppedOversize != 1 || !a.Clean {
				t.Errorf("old server: %+v", a.Ledger)
			}
			if b.Ledger.Received != 4 || b.Ledger.Delivered != 4 || b.DroppedOversize != 0 || b.DroppedIncomplete != 0 || b.BadFrames != 0 {
				t.Errorf("new server: %+v, oversize %d, incomplete %d, bad frames %d", b.Ledger, b.DroppedOversize, b.DroppedIncomplete, b.BadFrames)
			}
			want := slices.Clone(msgs)
			if target == framer.Newline {
				for i, m := range want {
					want[i] = strings.ReplaceAll(m, "\n", "#012")
				}
			}
			slices.Sort(want)
			var got []string
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if got = splitMessages(t, sink.bytes(), target); slices.Equal(got, want) {
					break
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("the target got\n%q\nwant\n%q", got, want)
			}
		})
	}
}

// A listener that frames messages otherwise (the framing changed between
// an upgrade's processes) refuses a connection handed over; what it
// carried is counted by its own framing: an octet-counted transfer's
// messages, not its newlines, the rest of a dropped message skipped.
func TestAdoptRefusesAnotherFraming(t *testing.T) {
	srv, _ := startServer(t, nil)
	tr := Transfer{Framing: framer.OctetCounted, Partial: []byte("a\nb5 he\nlo3 ab"), SkipBytes: 3}
	if srv.Adopt(tr) {
		t.Fatal("a newline listener adopted an octet-counted connection")
	}
	if lines, fragment := CountHeld(tr); lines != 1 || !fragment {
		t.Fatalf("CountHeld: %d messages, fragment %v; want 1 and a fragment", lines, fragment)
	}
	srv.DropCarried(tr)
	st := srv.Shutdown()
	if st.Ledger.Dropped[dispatch.DropShutdown] != 1 || st.DroppedIncomplete != 1 || !st.Ledger.Closed() {
		t.Fatalf("after a refused adoption: %+v, incomplete %d", st.Ledger, st.DroppedIncomplete)
	}
	if lines, fragment := CountHeld(Transfer{Partial: []byte("a\nb\nc")}); lines != 2 || !fragment {
		t.Fatalf("CountHeld of lines: %d, fragment %v", lines, fragment)
	}
}

// A client that stopped inside a line is closed at --line-timeout counted
// from when it stopped, whatever hand-overs came since: one refused (the
// same server reads on) and one that moved it. Before, each restarted the
// clock, so reloads more frequent than the timeout kept such a client open
// for good.
func TestHandOffKeepsTheLineTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	old, _ := startServer(t, func(c *Config) { c.LineTimeout = timeout })
	next := startPeer(t, old)
	c, err := net.Dial("tcp", old.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stopped := time.Now()
	c.Write([]byte(`{"half":`))
	waitUntil(t, "the partial line held", func() bool { return old.Stats().ClientMemory.Used > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	time.Sleep(timeout*3/5 - time.Since(stopped))
	if moved, busy := old.HandOff(ctx, func(Transfer) error { return errors.New("no room") }); moved != 0 || busy != 0 {
		t.Fatalf("a refused hand-over moved %d, %d busy", moved, busy)
	}
	time.Sleep(timeout*4/5 - time.Since(stopped))
	if ln := old.Handover(); ln != nil {
		ln.Close()
	}
	if moved, busy := old.HandOff(ctx, moveTo(t, next)); moved != 1 || busy != 0 {
		t.Fatalf("moved %d, %d busy; want 1", moved, busy)
	}
	// Not from the last hand-over (3.6 s), nor from the refused one (3.2 s).
	closedAtLineTimeout(t, c, stopped, timeout)
	old.Shutdown()
	if sum := next.Shutdown(); sum.LineTimeouts != 1 || sum.DroppedIncomplete != 1 {
		t.Fatalf("the new server: line timeouts %d, incomplete %d", sum.LineTimeouts, sum.DroppedIncomplete)
	}
}

// A client stopped inside a line moves A -> B while B is itself handing
// over: B suspends the adopted connection before its framer first waits,
// and passes it on to C, which still times the line from when the client
// stopped (a review found C timing it from scratch: closed at 3.2 s).
func TestChainedHandOffKeepsTheLineTimeout(t *testing.T) {
	const timeout = 2 * time.Second
	a, _ := startServer(t, func(c *Config) { c.LineTimeout = timeout })
	b, cSrv := startPeer(t, a), startPeer(t, a)

	// An idle client of B keeps B's HandOff open (its give blocks).
	dummy, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dummy.Close()
	dummy.Write([]byte("{\"d\":1}\n")) // read: its connection is served, and tracked for a hand-off
	waitUntil(t, "dummy served", func() bool { return b.Stats().Ledger.Received == 1 })
	entered, release := make(chan struct{}), make(chan struct{})
	toC := moveTo(t, cSrv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go b.HandOff(ctx, func(tr Transfer) error {
		if len(tr.Partial) == 0 {
			close(entered)
			<-release
			return errors.New("stay")
		}
		return toC(tr)
	})
	defer close(release)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the dummy was not asked to move")
	}

	c, err := net.Dial("tcp", a.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stopped := time.Now()
	c.Write([]byte(`{"half":`))
	waitUntil(t, "the partial line held", func() bool { return a.Stats().ClientMemory.Used > 0 })
	time.Sleep(timeout*3/5 - time.Since(stopped))
	if ln := a.Handover(); ln != nil {
		ln.Close()
	}
	if moved, busy := a.HandOff(ctx, moveTo(t, b)); moved != 1 || busy != 0 {
		t.Fatalf("moved %d, %d busy; want 1", moved, busy)
	}
	waitUntil(t, "moved on to C", func() bool { return cSrv.Stats().Listener.Adopted == 1 })
	closedAtLineTimeout(t, c, stopped, timeout)
	a.Shutdown()
}

// closedAtLineTimeout waits for ndlb to close c, a client that stopped
// inside a line at stopped, and fails unless that came at the line timeout
// from then (with room for a busy machine).
func closedAtLineTimeout(t *testing.T, c net.Conn, stopped time.Time, timeout time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the client was not closed: %v", err)
	}
	if took := time.Since(stopped); took > timeout*13/10 {
		t.Fatalf("closed %s after the client stopped; the line timeout is %s", took.Round(time.Millisecond), timeout)
	}
}
