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
	c.interrupted.Store(true)
	_ = c.SetReadDeadline(time.Unix(1, 0)) // first: a woken reader sees the deadline
	if c.tcp != nil {
		shutBoth(c.tcp)
	}
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
		for {
			n, rerr = syscall.Read(int(fd), p)
			if !errors.Is(rerr, syscall.EINTR) {
				break
			}
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
}

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
	return &drainConn{Conn: nc, c: c, rc: rc}
}

// Read reads as the connection does until the drain deadline, then what
// the kernel holds.
func (d *drainConn) Read(p []byte) (int, error) {
	if !d.final {
		n, err := d.Conn.Read(p)
		cut := errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF) // EOF: our own shutdown, maybe
		if n > 0 || err == nil || !cut || !d.c.Interrupted() {
			return n, err
		}
		d.final = true
	}
	return FinalRead(d.rc, p)
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
