package passthrough

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Pipes carry spliced bytes from one socket to another.
const (
	// maxSplice is the most one splice(2) call moves, and the size asked
	// of each pipe (the default maximum, /proc/sys/fs/pipe-max-size).
	maxSplice = 1 << 20
	// maxFreePipes bounds the pipes kept for reuse.
	maxFreePipes = 64
)

type pipe struct{ r, w int }

var pipes struct {
	mu   sync.Mutex
	free []*pipe // guarded by mu
}

func getPipe() (*pipe, error) {
	pipes.mu.Lock()
	if n := len(pipes.free); n > 0 {
		p := pipes.free[n-1]
		pipes.free = pipes.free[:n-1]
		pipes.mu.Unlock()
		return p, nil
	}
	pipes.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// A smaller pipe (for a user over its pipe quota) still works, with
	// more system calls.
	_, _ = unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, maxSplice)
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe keeps an empty pipe for reuse.
func putPipe(p *pipe) {
	pipes.mu.Lock()
	if len(pipes.free) < maxFreePipes {
		pipes.free = append(pipes.free, p)
		p = nil
	}
	pipes.mu.Unlock()
	if p != nil {
		p.close()
	}
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}

// rawPair is a stream's raw I/O state on Linux, where both its sockets
// are plain TCP (session.cRaw and bRaw). Small messages are copied with
// read and write through a buffer held only for the read (see copySmall);
// bulk data is spliced through a pipe, taken when the source has data and
// given back when it is drained, so that an idle stream holds neither.
type rawPair struct {
	p       *pipe
	inPipe  int   // bytes in the pipe
	n       int   // bytes the last read or fill moved; 0 at EOF
	err     error // error of the last read or splice call
	started bool  // a splice has worked on these sockets
	op      rawOp // what ioFn does
	// ioFn is the stream's io method bound once, so that the RawConn
	// calls allocate nothing.
	ioFn func(fd uintptr) bool
}

// rawOp is what a stream's io method does when the runtime calls it.
type rawOp uint8

const (
	opRead  rawOp = iota // read into the small buffer
	opFill               // splice the source into the pipe
	opDrain              // splice the pipe into the destination
)

// rawConns takes the raw sockets of ss's plain TCP client and target, for
// both streams; false if they are not available.
func (ss *session) rawConns() bool {
	c, err := ss.cTCP.SyscallConn()
	if err != nil {
		return false
	}
	b, err := ss.bTCP.SyscallConn()
	if err != nil {
		return false
	}
	ss.cRaw, ss.bRaw = c, b
	ss.up.raw.ioFn, ss.down.raw.ioFn = ss.up.io, ss.down.io
	return true
}

// rawSrc is the raw socket the stream reads.
func (st *stream) rawSrc() syscall.RawConn {
	if st.fromClient {
		return st.ss.cRaw
	}
	return st.ss.bRaw
}

// rawDst is the raw socket the stream writes.
func (st *stream) rawDst() syscall.RawConn {
	if st.fromClient {
		return st.ss.bRaw
	}
	return st.ss.cRaw
}

// io is called by the runtime when the source may be readable (opRead,
// opFill) or the destination writable (opDrain); returning false waits.
func (st *stream) io(fd uintptr) bool {
	switch st.raw.op {
	case opFill:
		return st.fill(fd)
	case opDrain:
		return st.drain(fd)
	}
	return st.read(fd)
}

// copySmall copies through a buffer, which is cheaper than splicing for
// small messages, until a read fills the buffer: then the stream is bulk
// and splices. It returns parkNow when a read deadline cut a wait short
// while the sweeper asked the stream to park.
func (st *stream) copySmall() (parkNow bool, err error) {
	r := &st.raw
	for {
		r.n, r.err, r.op = 0, nil, opRead
		if err := st.rawSrc().Read(r.ioFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && st.parkReq.Load() {
				return true, nil
			}
			return false, err
		}
		if r.err != nil {
			return false, os.NewSyscallError("read", r.err)
		}
		if r.n == 0 {
			return false, nil
		}
		full := r.n == len(*st.buf)
		m, werr := st.dst().Write((*st.buf)[:r.n])
		putSmall(st.buf)
		st.buf = nil
		st.moved(m)
		if werr != nil {
			return false, writeError{werr}
		}
		if full {
			st.bulk = true
			return false, nil
		}
	}
}

// read takes a buffer only for the read, so that a waiting stream holds
// none.
func (st *stream) read(fd uintptr) bool {
	if st.buf == nil {
		st.buf = getSmall()
	}
	for {
		n, err := syscall.Read(int(fd), *st.buf)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			putSmall(st.buf)
			st.buf = nil
			return false
		}
		st.raw.n, st.raw.err = n, err
		return true
	}
}

// splice moves bytes until the source ends (err nil) or fails. handled is
// false when the kernel cannot splice these sockets (nothing was moved:
// copy otherwise). It returns parkNow as copySmall does.
func (st *stream) splice() (handled, parkNow bool, err error) {
	r := &st.raw
	defer r.release()
	for {
		r.n, r.err, r.op = 0, nil, opFill
		if err := st.rawSrc().Read(r.ioFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && st.parkReq.Load() {
				return true, true, nil
			}
			return true, false, err // closed, or a deadline
		}
		if !r.started && errors.Is(r.err, unix.EINVAL) {
			return false, false, nil
		}
		r.started = true
		if r.err != nil {
			return true, false, os.NewSyscallError("splice", r.err)
		}
		if r.n == 0 {
			// The end, or urgent (out-of-band) data: a splice stops at
			// it and, once the FIN is in, answers 0 with bytes still
			// queued behind it. A read says which (it skips the urgent
			// byte).
			return true, false, errReadNext
		}
		r.inPipe, r.op = r.n, opDrain
		if err := st.rawDst().Write(r.ioFn); err != nil {
			return true, false, writeError{err}
		}
		if r.err != nil {
			return true, false, writeError{os.NewSyscallError("splice", r.err)}
		}
	}
}

// fill moves what the source socket has into the pipe.
func (st *stream) fill(fd uintptr) bool {
	r := &st.raw
	if r.p == nil {
		if r.p, r.err = getPipe(); r.err != nil {
			return true
		}
	}
	for {
		n, err := unix.Splice(int(fd), nil, r.p.w, nil, maxSplice, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			// Nothing to read (the pipe is empty between fills):
			// wait without holding it.
			putPipe(r.p)
			r.p = nil
			return false
		}
		r.n, r.err = int(n), err
		return true
	}
}

// drain moves the pipe's bytes to the destination socket.
func (st *stream) drain(fd uintptr) bool {
	r := &st.raw
	for r.inPipe > 0 {
		n, err := unix.Splice(r.p.r, nil, int(fd), nil, r.inPipe, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			r.err = err
			return true
		case n == 0:
			r.err = unix.EIO // cannot happen with a non-empty pipe
			return true
		}
		r.inPipe -= int(n)
		st.ss.s.spliced.Add(uint64(n))
		st.moved(int(n))
	}
	return true
}

// release gives the pipe back, or closes it if bytes are stranded in it.
func (r *rawPair) release() {
	switch {
	case r.p == nil:
	case r.inPipe > 0:
		r.p.close()
	default:
		putPipe(r.p)
	}
	r.p = nil
}

// inFlight reports whether the socket fd holds bytes on their way:
// unread (SIOCINQ), or written and not yet acknowledged by its peer
// (SIOCOUTQ).
func inFlight(fd uintptr) bool {
	for _, req := range []uint{unix.SIOCINQ, unix.SIOCOUTQ} {
		if n, err := unix.IoctlGetInt(int(fd), req); err == nil && n > 0 {
			return true
		}
	}
	return false
}

// cutIfInFlight cuts the session's plain TCP sockets when either holds
// bytes on their way (see session.abort): writes fail (a past deadline),
// and reset makes them close with a reset and ends their reads. It reports whether it
// cut them; it leaves TLS connections alone.
func (ss *session) cutIfInFlight() bool {
	conns := []*net.TCPConn{ss.cTCP, ss.bTCP}
	if ss.client != net.Conn(ss.cTCP) || ss.backend != net.Conn(ss.bTCP) {
		return false // TLS on a side: closed as it is
	}
	found := false
	for _, c := range conns {
		if rc, err := c.SyscallConn(); err == nil {
			_ = rc.Control(func(fd uintptr) { found = found || inFlight(fd) })
		}
	}
	if !found {
		return false
	}
	ss.cut.Store(true)
	for _, c := range conns {
		_ = c.SetWriteDeadline(time.Unix(1, 0))
	}
	ss.reset()
	return true
}

// errTargetReset is the end of a target's stream that read as EOF though
// the target had reset the connection: the other stream's write took the
// reset's error first (see session.ended).
var errTargetReset = os.NewSyscallError("read", syscall.ECONNRESET)

// wasReset reports whether tc's connection was reset by its peer, as far
// as its state tells: CLOSE, where the peer's FIN alone leaves CLOSE_WAIT
// (but FINs both ways end in CLOSE as well).
func wasReset(tc *net.TCPConn) bool {
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	reset := false
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			reset = info.State == unix.BPF_TCP_CLOSE
		}
	})
	return reset
}
