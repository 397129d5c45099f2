package listener

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// ErrDrained is returned by reads of a connection whose drain deadline
// passed once everything the kernel held for it has been read. It wraps
// os.ErrDeadlineExceeded.
var ErrDrained = fmt.Errorf("drain deadline passed; what the kernel held was read: %w", os.ErrDeadlineExceeded)

// Interrupted reports whether the listener's shutdown deadline passed for
// c: reads then fail with a deadline error, and a handler should read what
// the kernel still holds with FinalRead rather than lose it.
func (c *Conn) Interrupted() bool { return c.interrupted.Load() }

// interrupt marks c interrupted, shuts its socket down both ways and moves
// its read deadline to the past. After the shutdown the kernel acknowledges
// nothing more from the client (data that still arrives is answered with a
// reset, RFC 1122's FIN-WAIT with the read side shut), so what it holds is
// exactly what the client handed over, and FinalRead can read all of it.
func (c *Conn) interrupt() {
	c.leaveMu.Lock()
	defer c.leaveMu.Unlock()
	c.interrupted.Store(true)
	if c.left {
		return // moving to another listener: Stay applies it if the move fails
	}
	c.cut()
}

func (c *Conn) cut() {
	_ = c.SetReadDeadline(time.Unix(1, 0)) // first: a woken reader sees the deadline
	if c.tcp != nil {
		shutBoth(c.tcp)
	}
}

// Leave marks c as moving to another server: from now on this
// listener's drain deadline and AskToLeave leave it alone. keepOpen says
// that c itself moves (a TLS connection, with its session: AdoptConn), so
// that when its handler returns the listener frees its place without
// closing it; otherwise a duplicate of its socket moves, and this one is
// closed as usual. It reports false, and marks nothing, when the drain
// deadline has come already (the socket is shut: it stays). Stay undoes
// it when the move failed. Only the goroutine that reads c may call it.
func (c *Conn) Leave(keepOpen bool) bool {
	c.leaveMu.Lock()
	defer c.leaveMu.Unlock()
	if c.interrupted.Load() {
		return false
	}
	c.left, c.keepOpen = true, keepOpen
	return true
}

// Stay undoes Leave, for a move that failed: c is this listener's again,
// and a drain deadline or an AskToLeave that came meanwhile takes effect
// now.
func (c *Conn) Stay() {
	c.leaveMu.Lock()
	defer c.leaveMu.Unlock()
	c.left, c.keepOpen = false, false
	if c.interrupted.Load() {
		c.cut()
	}
	if c.asked {
		c.closeWrite()
	}
}

// askToLeave shuts c's socket's write side, a FIN that tells its client
// nothing more will come (AskToLeave), unless c is leaving for another
// server (Stay does it then, if the move fails). A TLS client gets no
// close_notify: a shipper that peeks at its socket for the end of stream
// (rsyslog) would find the alert, not the end, and one that closed with
// the alert unread would reset its connection, losing what it had not
// sent yet.
func (c *Conn) askToLeave() {
	c.leaveMu.Lock()
	defer c.leaveMu.Unlock()
	c.asked = true
	if !c.left {
		c.closeWrite()
	}
}

func (c *Conn) closeWrite() {
	if c.tcp != nil {
		_ = c.tcp.CloseWrite()
	}
}

// hasLeft reports whether c itself moved to another listener (Leave
// with keepOpen): its listener must not close it.
func (c *Conn) hasLeft() bool {
	c.leaveMu.Lock()
	defer c.leaveMu.Unlock()
	return c.left && c.keepOpen
}

// Pending returns, once, the plaintext a TLS connection's previous
// listener read from it and did not frame (AdoptConn): its reader reads
// it first.
func (c *Conn) Pending() []byte {
	p := c.pending
	c.pending = nil
	return p
}

// shutBoth shuts tc's socket down both ways, without closing it: a read
// under way ends, whatever deadline it set itself.
func shutBoth(tc *net.TCPConn) {
	if rc, err := tc.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
	}
}

// FinalRead reads what the kernel already holds for the socket rc without
// waiting and whatever its deadline: (n, nil) with data, (0, io.EOF) once
// the peer has closed its side, (0, ErrDrained) when nothing is left of a
// stream the peer had not ended (the read side was shut at the deadline).
func FinalRead(rc syscall.RawConn, p []byte) (int, error) {
	var n int
	var rerr error
	peerDone := false
	err := rc.Control(func(fd uintptr) {
		read := func() {
			for {
				n, rerr = syscall.Read(int(fd), p)
				if !errors.Is(rerr, syscall.EINTR) {
					break
				}
			}
		}
		read()
		if errors.Is(rerr, syscall.EAGAIN) {
			// Nothing now, but the client may still be sending: shut
			// the socket down (as interrupt does, if it has not yet: a
			// reader can wake between its deadline and its shutdown),
			// after which the kernel takes nothing more, and look once
			// more at what it took.
			_ = syscall.Shutdown(int(fd), syscall.SHUT_RDWR)
			read()
		}
		if n == 0 && rerr == nil {
			peerDone = peerClosed(fd)
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errors.Is(rerr, syscall.EAGAIN):
		return 0, ErrDrained
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n <= 0 && peerDone:
		return 0, io.EOF
	case n <= 0:
		return 0, ErrDrained
	}
	return n, nil
}

// drainConn is the layer under a TLS server connection: once the shutdown
// deadline has passed, its reads take what the kernel holds without
// waiting (FinalRead), so TLS records already received are decrypted and
// delivered instead of lost.
type drainConn struct {
	net.Conn
	c     *Conn
	rc    syscall.RawConn
	final bool

	// try makes a read take only what the kernel holds, failing with
	// ErrWouldBlock rather than waiting (Conn.TryRead). Set and read by
	// the one goroutine that reads the connection.
	try   bool
	n     int
	rerr  error
	tryFn func(fd uintptr) bool // d.tryRead, bound once
	buf   []byte                // of the read in progress

	// Where the bytes read so far stand in the TLS record framing: hdrN
	// bytes of a record header, or left bytes of a record's body.
	hdr  [5]byte
	hdrN int
	left int
}

// track follows the TLS record framing over b, bytes read from the client.
func (d *drainConn) track(b []byte) {
	for len(b) > 0 {
		if d.left > 0 {
			k := min(d.left, len(b))
			d.left -= k
			b = b[k:]
			continue
		}
		k := copy(d.hdr[d.hdrN:], b)
		d.hdrN += k
		b = b[k:]
		if d.hdrN == len(d.hdr) {
			d.left, d.hdrN = int(d.hdr[3])<<8|int(d.hdr[4]), 0
		}
	}
}

// inRecord reports whether the bytes read so far end inside a record.
func (d *drainConn) inRecord() bool { return d.hdrN > 0 || d.left > 0 }

// newDrainConn wraps nc (TCP, or a prefixConn over TCP) when its socket can
// be reached; otherwise it returns nc.
func newDrainConn(nc net.Conn, c *Conn) net.Conn {
	tcp := nc
	if p, ok := nc.(*prefixConn); ok {
		tcp = p.Conn
	}
	sc, ok := tcp.(syscall.Conn)
	if !ok {
		return nc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nc
	}
	d := &drainConn{Conn: nc, c: c, rc: rc}
	d.tryFn = d.tryRead
	return d
}

// Read reads as the connection does until the drain deadline, then what
// the kernel holds.
func (d *drainConn) Read(p []byte) (int, error) {
	n, err := d.read(p)
	if n > 0 {
		d.track(p[:n])
	}
	return n, err
}

// read is Read without the tracking.
func (d *drainConn) read(p []byte) (int, error) {
	if !d.final {
		var n int
		var err error
		if d.try {
			n, err = d.readNow(p)
		} else {
			n, err = d.Conn.Read(p)
		}
		cut := errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF) // EOF: our own shutdown, maybe
		if n > 0 || err == nil || !cut || !d.c.Interrupted() {
			return n, err
		}
		d.final = true
	}
	return FinalRead(d.rc, p)
}

// readNow reads what the kernel holds for d into p, without waiting:
// ErrWouldBlock when it holds nothing.
func (d *drainConn) readNow(p []byte) (int, error) {
	if pc, ok := d.Conn.(*prefixConn); ok && len(pc.pending) > 0 {
		return pc.Read(p)
	}
	d.buf = p
	err := d.rc.Read(d.tryFn)
	n, rerr := d.n, d.rerr
	d.buf, d.n, d.rerr = nil, 0, nil
	switch {
	case err != nil: // closed, or the read deadline passed
		return 0, err
	case errors.Is(rerr, syscall.EAGAIN):
		return 0, ErrWouldBlock
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// tryRead reads once, whatever the socket holds.
func (d *drainConn) tryRead(fd uintptr) bool {
	for {
		d.n, d.rerr = syscall.Read(int(fd), d.buf)
		if !errors.Is(d.rerr, syscall.EINTR) {
			return true
		}
	}
}

// Unwrap returns the connection under d.
func (d *drainConn) Unwrap() net.Conn { return d.Conn }

// CloseWrite half-closes the connection under d, if it can be.
func (d *drainConn) CloseWrite() error {
	if cw, ok := d.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ErrWouldBlock is returned by TryRead when the client has sent nothing
// that can be read now. It is a temporary net.Error, which TLS passes on
// without failing the connection.
var ErrWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "no data from the client yet" }
func (wouldBlock) Timeout() bool   { return false }
func (wouldBlock) Temporary() bool { return true }

// CanTryRead reports whether TryRead and WaitRead work for c: a TLS
// connection over TCP on Linux. A reader of such a connection can wait for
// the client without holding a buffer: TryRead until ErrWouldBlock, give
// the buffer back, WaitRead, and again.
func (c *Conn) CanTryRead() bool { return c.drain != nil && canPeek }

// CutInRecord reports whether the bytes c's client sent under TLS end
// inside a TLS record: its stream was cut (the drain deadline, a reset, a
// close without the record's end) with part of a record read and never
// decrypted. What that record held is unknown; a handler counts it as a
// fragment. False for a connection without TLS.
func (c *Conn) CutInRecord() bool { return c.drain != nil && c.drain.inRecord() }

// TryRead reads c (TLS, CanTryRead) into p without waiting for the
// client: what TLS already decrypted, or the records the kernel holds
// (TLS keeps a record that came in part, and goes on with it at the next
// read). It fails with ErrWouldBlock when that is nothing. After the
// drain deadline it reads as Read does. Only the goroutine that reads c
// may call it.
func (c *Conn) TryRead(p []byte) (int, error) {
	d := c.drain
	d.try = true
	n, err := c.Conn.Read(p)
	d.try = false
	if n > 0 && errors.Is(err, ErrWouldBlock) {
		err = nil // the bytes came, then a look for a close alert found nothing
	}
	return n, err
}

// WaitRead waits until c's socket has something to read (data, the
// client's end of stream, an error), or its read deadline passes. Only the
// goroutine that reads c may call it. (readable asks inside the
// RawConn.Read that waits, so that data that came since the last read
// cannot be missed.)
func (c *Conn) WaitRead() error { return c.drain.rc.Read(readable) }
