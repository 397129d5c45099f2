package listener

import (
	"errors"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// errRawConn is what a raw connection answers to reads and writes: its
// handler takes its socket (Conn.TakeFD) or makes it ordinary
// (Conn.Materialize) first.
var errRawConn = errors.New("listener: a raw connection is read through its socket (TakeFD) or after Materialize")

// rawConn is a socket accepted with Config.RawAccept: outside the
// runtime's poller, until its handler takes it or makes it ordinary.
type rawConn struct {
	laddr, raddr net.Addr

	mu   sync.Mutex
	fd   int      // -1 once taken or closed; guarded by mu
	real net.Conn // after Materialize; guarded by mu
}

func (r *rawConn) Read([]byte) (int, error)  { return 0, errRawConn }
func (r *rawConn) Write([]byte) (int, error) { return 0, errRawConn }
func (r *rawConn) LocalAddr() net.Addr       { return r.laddr }
func (r *rawConn) RemoteAddr() net.Addr      { return r.raddr }

// Close closes the socket, unless its handler took it.
func (r *rawConn) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.real != nil {
		return r.real.Close()
	}
	if r.fd < 0 {
		return nil
	}
	fd := r.fd
	r.fd = -1
	return unix.Close(fd)
}

// The deadlines apply once the connection is ordinary.
func (r *rawConn) SetDeadline(t time.Time) error     { return r.deadline(t, net.Conn.SetDeadline) }
func (r *rawConn) SetReadDeadline(t time.Time) error { return r.deadline(t, net.Conn.SetReadDeadline) }
func (r *rawConn) SetWriteDeadline(t time.Time) error {
	return r.deadline(t, net.Conn.SetWriteDeadline)
}

func (r *rawConn) deadline(t time.Time, set func(net.Conn, time.Time) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.real != nil {
		return set(r.real, t)
	}
	return nil
}

// take hands the socket over.
func (r *rawConn) take() (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fd < 0 || r.real != nil {
		return -1, false
	}
	fd := r.fd
	r.fd = -1
	return fd, true
}

// materialize puts the socket in the runtime's poller as a *net.TCPConn.
func (r *rawConn) materialize() (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.real != nil {
		return r.real, nil
	}
	if r.fd < 0 {
		return nil, net.ErrClosed
	}
	// net.FileConn turns TCP keepalive on; the socket keeps what it
	// inherited from the listening socket instead, as Accept would have
	// left it.
	keepAlive, kerr := unix.GetsockoptInt(r.fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
	f := os.NewFile(uintptr(r.fd), "tcp")
	nc, err := net.FileConn(f) // a duplicate of the descriptor
	f.Close()
	r.fd = -1
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok && kerr == nil && keepAlive == 0 {
		_ = tc.SetKeepAlive(false)
	}
	r.real = nc
	return nc, nil
}

// rawAccepting reports whether Serve accepts raw sockets, and prepares
// it.
func (l *Listener) rawAccepting() bool {
	if !l.cfg.RawAccept || !l.cfg.Inline || l.cfg.TLS != nil || l.cfg.AcceptProxy {
		return false
	}
	tl, ok := l.ln.(*net.TCPListener)
	if !ok {
		return false
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return false
	}
	l.rawLn = rc
	if a, ok := tl.Addr().(*net.TCPAddr); ok && !a.IP.IsUnspecified() {
		l.rawLocal = &net.TCPAddr{IP: a.IP, Port: a.Port, Zone: a.Zone} // shared by the connections
	}
	return true
}

// acceptRaw accepts a connection the kernel has queued, with a
// non-blocking accept4 on the listening socket, and keeps the new socket
// out of the runtime's poller. ok is false when none is queued, or on any
// error: Serve then waits in the listener's Accept, which reports errors
// (a listening socket's RawConn cannot wait for readiness, only Control).
func (l *Listener) acceptRaw() (net.Conn, bool) {
	if w, ok := l.h.(RawWanter); ok && !w.WantsRaw() {
		return nil, false
	}
	var nfd int
	var sa unix.Sockaddr
	var aerr error
	err := l.rawLn.Control(func(fd uintptr) {
		for {
			nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if aerr != unix.EINTR && aerr != unix.ECONNABORTED { // retried, as Go's Accept does
				return
			}
		}
	})
	if err != nil || aerr != nil {
		return nil, false
	}
	// As Go does for the connections it accepts: no Nagle delay on small
	// writes.
	_ = unix.SetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	r := &rawConn{fd: nfd, raddr: sockaddrTCP(sa), laddr: l.rawLocal}
	if l.rawLocal == nil { // listening on a wildcard address
		if lsa, err := unix.Getsockname(nfd); err == nil {
			r.laddr = sockaddrTCP(lsa)
		} else {
			r.laddr = l.ln.Addr()
		}
	}
	return r, true
}

// sockaddrTCP converts an accepted socket's address.
func sockaddrTCP(sa unix.Sockaddr) *net.TCPAddr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(append([]byte(nil), sa.Addr[:]...)), Port: sa.Port}
	case *unix.SockaddrInet6:
		a := &net.TCPAddr{IP: net.IP(append([]byte(nil), sa.Addr[:]...)), Port: sa.Port}
		if sa.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				a.Zone = ifi.Name
			} else {
				a.Zone = strconv.Itoa(int(sa.ZoneId))
			}
		}
		return a
	}
	return &net.TCPAddr{}
}
