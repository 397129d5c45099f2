package listener

import (
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/rawio"
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
// it: a duplicate of the listening socket, in the runtime's poller, that
// Serve waits on (a listener's own RawConn cannot wait for readiness).
func (l *Listener) rawAccepting() bool {
	if !l.cfg.RawAccept || !l.cfg.Inline || l.cfg.TLS != nil || l.cfg.AcceptProxy {
		return false
	}
	tl, ok := tcpListener(l.ln)
	if !ok {
		return false
	}
	_, dup, err := dupListener(tl)
	if err != nil {
		l.log.Warn("connections are accepted the usual way: the listening socket could not be duplicated for raw accepts", "err", err)
		return false
	}
	f := os.NewFile(uintptr(dup), "listener") // non-blocking, as the original: in the runtime's poller
	wrc, err := f.SyscallConn()
	if err != nil || f.SetDeadline(time.Time{}) != nil { // not in the poller: it could not wait
		f.Close()
		l.log.Warn("connections are accepted the usual way: the duplicate of the listening socket is not in the runtime's poller")
		return false
	}
	l.rawSetup(tl, dup)
	l.mu.Lock()
	l.rawWait, l.rawRC = f, wrc
	if !l.rawUntil.IsZero() { // Shutdown or Handover came first
		_ = f.SetDeadline(l.rawUntil)
	}
	l.mu.Unlock()
	return true
}

// dupListener returns tl's descriptor and a duplicate of it (close-on-exec,
// non-blocking as the original), which the caller owns.
func dupListener(tl *net.TCPListener) (orig, dup int, err error) {
	rc, err := tl.SyscallConn()
	if err != nil {
		return -1, -1, err
	}
	orig, dup = -1, -1
	if cerr := rc.Control(func(fd uintptr) {
		orig = int(fd)
		dup, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); cerr != nil || err != nil {
		return -1, -1, errors.Join(cerr, os.NewSyscallError("fcntl", err))
	}
	return orig, dup, nil
}

// rawSetup records what every raw socket accepted from tl (through its
// duplicate dup) shares: whether it inherits TCP_NODELAY, and its local
// address unless tl listens on a wildcard address.
func (l *Listener) rawSetup(tl *net.TCPListener, dup int) {
	// Sockets accepted from a listening socket with TCP_NODELAY have it
	// (Linux copies the listening socket, options included, to each
	// connection it completes): see Control. The first one accepted
	// confirms it.
	if v, err := unix.GetsockoptInt(dup, unix.IPPROTO_TCP, unix.TCP_NODELAY); err == nil && v != 0 {
		l.rawNoDelay.Store(noDelayCheck)
	}
	if a, ok := tl.Addr().(*net.TCPAddr); ok && !a.IP.IsUnspecified() {
		l.rawLocal = &net.TCPAddr{IP: a.IP, Port: a.Port, Zone: a.Zone} // shared by the connections
	}
}

// What raw sockets need for TCP_NODELAY (Listener.rawNoDelay).
const (
	noDelaySet       = iota // set it on each
	noDelayCheck            // the listening socket has it: see whether the first one inherited it
	noDelayInherited        // they inherit it
)

// rawDeadline sets the deadline of the raw accepts' wait, now or when it
// begins. Called with l.mu held.
func (l *Listener) rawDeadline(t time.Time) {
	l.rawUntil = t
	if l.rawWait != nil {
		_ = l.rawWait.SetDeadline(t)
	}
}

// closeRawWait closes the duplicate of the listening socket that raw
// accepts wait on (the socket itself stays open while l.ln is). Called
// with l.mu held.
func (l *Listener) closeRawWait() {
	if l.rawWait != nil {
		l.rawWait.Close()
		l.rawWait = nil
	}
}

// acceptRaw waits for a connection and accepts it with a non-blocking
// accept4, keeping the new socket out of the runtime's poller. Its system
// calls are raw: a thread that returns from a system call the scheduler
// was told of wakes the scheduler's monitor thread when it sleeps (the
// process was idle), and the monitor then polls every 20 µs for a while.
// When the handler, a RawWanter, does not want the socket, the
// connection is accepted the usual way.
func (l *Listener) acceptRaw() (net.Conn, error) {
	a := &l.rawAcc
	if a.try == nil { // once: the callback and its results live in l
		a.w, _ = l.h.(RawWanter)
		a.try = a.accept
	}
	a.nfd, a.err, a.ordinary = -1, nil, false
	err := l.rawRC.Read(a.try)
	nfd, aerr := a.nfd, a.err
	switch {
	case a.ordinary:
		return l.ln.Accept()
	case err != nil && l.rawClosed():
		return nil, net.ErrClosed
	case err != nil:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.ln.Addr(), Err: err}
	case aerr != nil:
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.ln.Addr(), Err: os.NewSyscallError("accept4", aerr)}
	}
	return l.rawFrom(nfd, &a.sa), nil
}

// rawFrom makes a raw connection of the socket nfd accepted from the
// peer sa. As Go does for the connections it accepts, the socket has no
// Nagle delay on small writes (inherited from a listening socket Control
// set up, or set here).
func (l *Listener) rawFrom(nfd int, sa *unix.RawSockaddrAny) *rawConn {
	switch l.rawNoDelay.Load() {
	case noDelayCheck:
		// Trusted once it is seen: an MPTCP listening socket (Go's
		// default) reports its own flag, which an older kernel may not
		// pass on to the plain TCP sockets it accepts.
		if v, err := unix.GetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err == nil && v != 0 {
			l.rawNoDelay.Store(noDelayInherited)
			break
		}
		l.rawNoDelay.Store(noDelaySet)
		fallthrough
	case noDelaySet:
		_ = rawio.SetsockoptInt(nfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	}
	r := &rawConn{fd: nfd, raddr: rawTCPAddr(sa), laddr: l.rawLocal}
	if l.rawLocal == nil { // listening on a wildcard address
		var lsa unix.RawSockaddrAny
		if err := rawio.Getsockname(nfd, &lsa); err == nil {
			r.laddr = rawTCPAddr(&lsa)
		} else {
			r.laddr = l.ln.Addr()
		}
	}
	return r
}

// rawAccept is the state of Serve's raw accepts, kept in the Listener so
// that an accept allocates nothing for its callback and results.
type rawAccept struct {
	w        RawWanter // the handler, if it says whether it wants sockets raw
	try      func(fd uintptr) bool
	nfd      int
	sa       unix.RawSockaddrAny
	err      error
	ordinary bool // the handler wants this one accepted the usual way
}

// accept is rawAccept's callback for RawConn.Read: it accepts one
// connection, or reports that the socket has none yet (false: wait).
func (a *rawAccept) accept(fd uintptr) bool {
	if a.w != nil && !a.w.WantsRaw() {
		a.ordinary = true
		return true
	}
	for {
		a.nfd, a.err = rawio.Accept4(int(fd), &a.sa)
		switch a.err {
		case unix.EINTR, unix.ECONNABORTED: // retried, as Go's Accept does
			continue
		case unix.EAGAIN: // wait
			return false
		}
		return true
	}
}

// rawClosed reports whether the duplicate raw accepts wait on was closed
// (RawConn.Read's error for a closed file is not os.ErrClosed).
func (l *Listener) rawClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rawWait == nil
}

// rawTCPAddr converts an accepted socket's peer or local address; an IPv6
// scope becomes its interface's name (or its index).
func rawTCPAddr(sa *unix.RawSockaddrAny) *net.TCPAddr {
	ap, scope, ok := rawio.SockaddrAddrPort(sa)
	if !ok {
		return &net.TCPAddr{}
	}
	a := net.TCPAddrFromAddrPort(ap)
	if scope != 0 {
		a.Zone = strconv.Itoa(int(scope))
		if ifi, err := net.InterfaceByIndex(int(scope)); err == nil {
			a.Zone = ifi.Name
		}
	}
	return a
}

// Control is a net.ListenConfig.Control for the listening sockets ndlb
// opens: on a TCP socket it sets TCP_NODELAY before the socket listens.
// Linux copies a listening socket's options to each socket it accepts, so
// raw accepts find it set and skip one system call per connection. A
// listening socket opened without it (inherited, or handed over by an
// older process) still has it set on each accepted socket. Errors are
// ignored: the option is then set per connection.
func Control(network, _ string, c syscall.RawConn) error {
	if strings.HasPrefix(network, "tcp") {
		_ = c.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1) })
	}
	return nil
}
