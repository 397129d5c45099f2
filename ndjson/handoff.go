package ndjson

import (
	"bytes"
	"cmp"
	"context"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/segmentio/ksuid"
	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/listener"
)

// Transfer is a client connection on its way to another ndlb process (an
// upgrade) or to the listener's replacement (a reload): the socket, who
// the client is, and where the stream stands.
type Transfer struct {
	Conn *net.TCPConn
	// TLS, instead of Conn, is a TLS connection with its session, on its
	// way to the listener's replacement in this process (HandOffWithTLS;
	// a session cannot move to another process).
	TLS           *listener.Conn
	ID            ksuid.KSUID // the connection's id in logs, kept across processes
	Client, Local net.Addr    // as the listener saw them (after a PROXY header)
	// Partial is the start of the line in progress, read by the old
	// process and not yet framed: the new one reads it first.
	Partial []byte
	// Skipping says the stream is inside a line already dropped (and
	// counted) as too long: the new process skips to its newline.
	Skipping bool
	// Framing is how the client frames its stream ("" is newline). An
	// octet-counted stream's Partial starts at the length prefix of the
	// frame in progress (framer.OctetReader.Rewind); SkipBytes, instead,
	// are the rest of a message already dropped (and counted), which the
	// new reader skips. A listener framing otherwise refuses it.
	Framing   framer.Framing
	SkipBytes int
	// IdleFor is how long the line in progress (or the dropped one being
	// skipped) had waited for the client's next bytes: the new reader
	// goes on timing that wait for --line-timeout. Zero: it was not
	// waiting.
	IdleFor time.Duration
}

// resumeAt is where an adopted connection's stream starts: inside a line
// or an octet-counted message that was being dropped.
type resumeAt struct {
	skipping  bool      // inside a dropped line: skip to its newline
	skipBytes int       // inside a dropped octet-counted message: skip its rest
	idleFrom  time.Time // since when the line in progress waits for the client (Transfer.IdleFor)
}

// handOff is one HandOff in progress.
type handOff struct {
	give    func(Transfer) error
	tls     bool           // TLS connections move too (HandOffWithTLS)
	wg      sync.WaitGroup // one per connection asked to move
	asked   atomic.Int64   // connections asked to move
	settled atomic.Int64   // of them, those that moved or stay
	moved   atomic.Int64
}

// HandOff moves the server's plain TCP client connections to another
// process. Each connection's reads are suspended, and give receives it
// with the line it was in the middle of; the batches of whole lines
// already read stay in this server's queue, which it delivers. A
// connection that give refuses, and every TLS connection (its session
// cannot leave the process; see HandOffWithTLS), stays and is served on.
// HandOff returns the number moved once every connection was moved or
// kept, or when ctx is done, with the number of connections that had not
// settled by then: their readers were waiting for room in the queue or
// the spool (every target down), and they stay with this server. Stop
// accepting first (Handover); call Shutdown after, to deliver and drain.
func (s *Server) HandOff(ctx context.Context, give func(Transfer) error) (moved, busy int) {
	return s.handOff(ctx, &handOff{give: give})
}

// HandOffWithTLS is HandOff to another server of this process (a
// reload's replacement of the listener): TLS connections move too, each
// with its session (Transfer.TLS).
func (s *Server) HandOffWithTLS(ctx context.Context, give func(Transfer) error) (moved, busy int) {
	return s.handOff(ctx, &handOff{give: give, tls: true})
}

func (s *Server) handOff(ctx context.Context, h *handOff) (moved, busy int) {
	s.giving.Store(h)
	defer s.giving.Store(nil)
	if s.ln != nil {
		_ = s.ln.WaitPrepared(ctx) // connections still in a handshake are served here
	}
	s.clients.Range(func(k, _ any) bool {
		cs := k.(*clientConn)
		if isTLS(cs.src) && !h.tls {
			return true // its session cannot leave the process: it stays
		}
		cs.mu.Lock()
		if cs.ended {
			cs.mu.Unlock()
			return true
		}
		cs.h = h
		h.wg.Add(1)
		h.asked.Add(1)
		cs.mu.Unlock()
		cs.moving.Store(true)
		_ = cs.c.SetReadDeadline(time.Unix(1, 0)) // wakes the read; the reader suspends
		return true
	})
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return int(h.moved.Load()), int(h.asked.Load() - h.settled.Load())
}

// settled tells the HandOff that asked cs to move that it has moved or
// stays.
func (cs *clientConn) settled(end bool) {
	cs.mu.Lock()
	h := cs.h
	cs.h = nil
	if end {
		cs.ended = true
	}
	cs.mu.Unlock()
	if h != nil {
		h.settled.Add(1)
		h.wg.Done()
	}
}

// handOff gives the suspended connection to the HandOff in progress. It
// reports whether this server goes on serving it (give refused it, or the
// HandOff is over), and then whether its stream starts inside a dropped
// line.
func (cs *clientConn) handOff() (resume, skipping bool) {
	s, c := cs.s, cs.c
	t := Transfer{ID: c.ID, Client: c.Client, Local: c.Local, Skipping: cs.skipping,
		Framing: cmp.Or(s.cfg.Framing, framer.Newline)}
	var pending *[]byte         // the reader's: what it read and did not serve
	switch r := cs.src.(type) { // only such connections are asked to move
	case *idleReader:
		t.Conn, pending = r.tcp, &r.pending
	case *tlsReader:
		t.TLS, pending = c, &r.pending
	}
	start := cs.partial
	o, octet := cs.r.(*framer.OctetReader)
	if octet {
		// From the frame in progress's length prefix, or the rest of a
		// message being dropped: the framer's partial line is escaped.
		start, t.SkipBytes = o.Rewind(cs.partial, cs.skipping)
		t.Skipping = false
	}
	partial := append(start, *pending...)
	cs.partial, *pending = nil, nil
	t.Partial = partial
	if !cs.waited.IsZero() {
		t.IdleFor = max(time.Since(cs.waited), time.Nanosecond)
	}
	h := s.giving.Load()
	if h != nil && ((t.TLS != nil && !h.tls) || !c.Leave(t.TLS != nil)) {
		// A session does not leave the process, and nothing moves once
		// the drain deadline came (the socket is shut): it stays.
		h = nil
	}
	if h != nil {
		err := h.give(t)
		if err == nil {
			h.moved.Add(1)
			c.Log.Info("client connection handed over (to the new process, or the listener's replacement)", "lines", cs.lines, "bytes", cs.bytes,
				"partial_bytes", len(partial), "duration", time.Since(cs.start).Round(time.Millisecond))
			cs.settled(true)
			return false, false
		}
		c.Stay()
		c.Log.Warn("client connection not handed over; this listener serves it on", "err", err)
	}
	*pending = partial
	if octet {
		o.Skip(t.SkipBytes)
	}
	// The line goes on waiting: the next framer's wait is timed from then.
	cs.idleFrom = cs.waited
	cs.heard.Store(false)
	cs.moving.Store(false)
	_ = c.SetReadDeadline(time.Time{})
	if c.Interrupted() { // the drain deadline came meanwhile: keep it
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
	cs.settled(false)
	return true, t.Skipping
}

// Adopt serves t, a connection that another process (or the listener
// this one replaces) handed over with HandOff. It returns false when the
// server is shutting down, or requires TLS (the connection was made
// without: TLS was turned on since), and counts nothing then: a caller
// that closes t.Conn counts the line it carried with DropCarried; one
// that gives it back to its old server (a reload) does not.
func (s *Server) Adopt(t Transfer) bool {
	switch {
	case t.TLS == nil && s.cfg.Listener.TLS != nil:
		s.log.Warn("a plain client connection handed over was refused: this listener requires TLS now",
			"conn", t.ID.String(), "client", t.Client.String())
		return false
	case t.TLS != nil && s.cfg.Listener.TLS == nil:
		s.log.Warn("a TLS client connection handed over was refused: this listener is plain now",
			"conn", t.ID.String(), "client", t.Client.String())
		return false
	case cmp.Or(t.Framing, framer.Newline) != cmp.Or(s.cfg.Framing, framer.Newline):
		s.log.Warn("a client connection handed over was refused: this listener frames messages otherwise now",
			"conn", t.ID.String(), "client", t.Client, "framing", cmp.Or(s.cfg.Framing, framer.Newline), "client_framing", t.Framing)
		return false
	}
	if t.Skipping || t.SkipBytes > 0 || t.IdleFor > 0 {
		r := resumeAt{skipping: t.Skipping, skipBytes: t.SkipBytes}
		if t.IdleFor > 0 {
			r.idleFrom = time.Now().Add(-t.IdleFor)
		}
		s.resuming.Store(t.ID, r)
	}
	if s.ln != nil && t.TLS != nil && s.ln.AdoptConn(t.TLS, t.Partial) {
		return true
	}
	if s.ln != nil && t.TLS == nil && s.ln.Adopt(t.Conn, t.ID, t.Client, t.Local, t.Partial) {
		return true
	}
	s.resuming.Delete(t.ID)
	return false
}

// DropCarried is for a transfer refused by Adopt, about to be closed: it
// reads what the kernel holds for t.Conn (closed unread, it would be
// lost uncounted), and counts the lines there and in t.Partial as
// dropped (shutdown), and an unfinished one as incomplete. It returns
// the lines counted.
func (s *Server) DropCarried(t Transfer) (lines uint64) {
	lines, fragment := CountHeld(t)
	s.dropShutdown.Add(lines)
	s.ledger.DropRead(dispatch.DropShutdown, lines)
	if fragment {
		s.incomplete.Add(1)
		s.ledger.DropRead(dispatch.DropIncomplete, 1)
	}
	return lines
}

// maxHeld bounds what CountHeld reads: more than a socket's receive
// buffer holds (6 MiB at most by Linux's default tcp_rmem), so that a
// client that goes on sending cannot keep it reading.
const maxHeld = 8 << 20

// CountHeld reads what the kernel holds for t.Conn, without waiting, and
// returns the whole lines (or octet-counted messages) there and in
// t.Partial, and whether an unfinished one follows them.
func CountHeld(t Transfer) (lines uint64, fragment bool) {
	src := &heldReader{partial: t.Partial, conn: t.Conn}
	var newlines uint64
	var total int
	var last byte
	count := func(b []byte) {
		if len(b) > 0 {
			newlines += uint64(bytes.Count(b, []byte{'\n'}))
			total, last = total+len(b), b[len(b)-1]
		}
	}
	var r io.Reader = src
	if t.Framing == framer.OctetCounted {
		o := framer.NewOctetReader(src, 64<<10, framer.MaxMaxLineBytes, false)
		o.Skip(t.SkipBytes)
		r = o // its messages, as lines; a '#' for one cut short
	}
	buf := make([]byte, 256<<10)
	for {
		n, err := r.Read(buf)
		count(buf[:n])
		if err != nil {
			break
		}
	}
	if t.Skipping { // inside a line dropped (and counted) before the move
		if newlines == 0 {
			return 0, false
		}
		newlines--
	}
	return newlines, total > 0 && last != '\n'
}

// heldReader reads a transfer's partial line, then what the kernel holds
// for its socket, without waiting: io.EOF when nothing is left, or
// maxHeld was read from the socket.
type heldReader struct {
	partial []byte
	conn    *net.TCPConn
	rc      syscall.RawConn
	read    int
}

func (h *heldReader) Read(p []byte) (int, error) {
	if len(h.partial) > 0 {
		return fromPending(&h.partial, p), nil
	}
	if h.conn == nil || h.read >= maxHeld || len(p) == 0 {
		return 0, io.EOF
	}
	if h.rc == nil {
		rc, err := h.conn.SyscallConn()
		if err != nil {
			return 0, io.EOF
		}
		h.rc = rc
	}
	n := 0
	_ = h.rc.Read(func(fd uintptr) bool {
		n, _ = unix.Read(int(fd), p[:min(len(p), maxHeld-h.read)])
		return true // never wait
	})
	if n <= 0 {
		return 0, io.EOF
	}
	h.read += n
	return n, nil
}
