package passthrough

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

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

// splicer moves bytes from one socket to another through a pipe. It takes
// a pipe when the source has data and gives it back when the source is
// drained, so that an idle stream holds none.
type splicer struct {
	src, dst syscall.RawConn
	p        *pipe
	inPipe   int   // bytes in the pipe
	n        int   // bytes the last fill moved; 0 at EOF
	err      error // error of the last splice call
	started  bool  // a splice has worked on these sockets
	moved    func(int)
	spliced  *atomic.Uint64
	// fillFn and drainFn are fill and drain bound once, so that the
	// RawConn calls allocate nothing.
	fillFn, drainFn func(fd uintptr) bool
}

// newSplicer returns a splicer from src to dst, or nil if their raw
// sockets are not available.
func newSplicer(src, dst *net.TCPConn, moved func(int), spliced *atomic.Uint64) *splicer {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return nil
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return nil
	}
	sp := &splicer{src: srcRC, dst: dstRC, moved: moved, spliced: spliced}
	sp.fillFn, sp.drainFn = sp.fill, sp.drain
	return sp
}

// copy splices until the source ends (err nil) or fails. handled is false
// when the kernel cannot splice these sockets (nothing was moved: copy
// otherwise). It returns parkNow when a read deadline cut a wait short
// while parkReq was set: the caller parks the stream.
func (sp *splicer) copy(parkReq *atomic.Bool) (handled, parkNow bool, err error) {
	defer sp.release()
	for {
		sp.n, sp.err = 0, nil
		if err := sp.src.Read(sp.fillFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && parkReq.Swap(false) {
				return true, true, nil
			}
			return true, false, err // closed, or a deadline
		}
		if !sp.started && errors.Is(sp.err, unix.EINVAL) {
			return false, false, nil
		}
		sp.started = true
		if sp.err != nil {
			return true, false, os.NewSyscallError("splice", sp.err)
		}
		if sp.n == 0 {
			return true, false, nil
		}
		sp.inPipe = sp.n
		if err := sp.dst.Write(sp.drainFn); err != nil {
			return true, false, err
		}
		if sp.err != nil {
			return true, false, os.NewSyscallError("splice", sp.err)
		}
	}
}

// fill moves what the source socket has into the pipe. The runtime calls it
// when the socket may be readable; returning false waits for readability.
func (sp *splicer) fill(fd uintptr) bool {
	if sp.p == nil {
		if sp.p, sp.err = getPipe(); sp.err != nil {
			return true
		}
	}
	for {
		n, err := unix.Splice(int(fd), nil, sp.p.w, nil, maxSplice, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			// Nothing to read (the pipe is empty between fills):
			// wait without holding it.
			putPipe(sp.p)
			sp.p = nil
			return false
		}
		sp.n, sp.err = int(n), err
		return true
	}
}

// drain moves the pipe's bytes to the destination socket; returning false
// waits for writability.
func (sp *splicer) drain(fd uintptr) bool {
	for sp.inPipe > 0 {
		n, err := unix.Splice(sp.p.r, nil, int(fd), nil, sp.inPipe, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false
		case err != nil:
			sp.err = err
			return true
		case n == 0:
			sp.err = unix.EIO // cannot happen with a non-empty pipe
			return true
		}
		sp.inPipe -= int(n)
		sp.spliced.Add(uint64(n))
		sp.moved(int(n))
	}
	return true
}

// release gives the pipe back, or closes it if bytes are stranded in it.
func (sp *splicer) release() {
	switch {
	case sp.p == nil:
	case sp.inPipe > 0:
		sp.p.close()
	default:
		putPipe(sp.p)
	}
	sp.p = nil
}
