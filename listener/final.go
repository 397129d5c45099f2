package listener

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
)

// ErrDrained is returned by reads of a connection whose drain deadline
// passed once everything the kernel held for it has been read. It wraps
// os.ErrDeadlineExceeded.
var ErrDrained = fmt.Errorf("drain deadline passed; what the kernel held was read: %w", os.ErrDeadlineExceeded)

// Interrupted reports whether the listener's shutdown deadline passed for
// c: reads then fail with a deadline error, and a handler should read what
// the kernel still holds with FinalRead rather than lose it.
func (c *Conn) Interrupted() bool { return c.interrupted.Load() }

// FinalRead reads what the kernel already holds for the socket rc without
// waiting and whatever its deadline: (n, nil) with data, (0, io.EOF) once
// the peer has closed, (0, ErrDrained) when nothing is left.
func FinalRead(rc syscall.RawConn, p []byte) (int, error) {
	var n int
	var rerr error
	err := rc.Control(func(fd uintptr) {
		for {
			n, rerr = syscall.Read(int(fd), p)
			if !errors.Is(rerr, syscall.EINTR) {
				return
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errors.Is(rerr, syscall.EAGAIN):
		return 0, ErrDrained
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n <= 0:
		return 0, io.EOF
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
		if n > 0 || err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || !d.c.Interrupted() {
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
