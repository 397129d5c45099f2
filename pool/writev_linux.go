package pool

import (
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/rawio"
)

// rawWriter writes a plain TCP connection's batches with writev(2) made as
// a raw system call (rawio.Writev). The socket is non-blocking, so the call never waits
// (EAGAIN, and the runtime's poller waits instead); unlike net.Buffers'
// writev it does not tell the scheduler it entered a system call. A writev
// of tens of KiB to a loopback peer runs the receiver's TCP stack too and
// can last longer than the scheduler's monitor takes to hand the
// goroutine's processor to another thread, which then wakes for nothing:
// on a busy worker that churn cost more than the writes.
type rawWriter struct {
	rc   syscall.RawConn
	fn   func(fd uintptr) bool // write, bound once
	iov  []unix.Iovec
	bufs net.Buffers // what is left to write
	n    int64
	err  error
}

// maxIovecs is the most buffers one writev takes (IOV_MAX).
const maxIovecs = 1024

func newRawWriter(rc syscall.RawConn) *rawWriter {
	w := &rawWriter{rc: rc}
	w.fn = w.write
	return w
}

// writeBuffers writes all of *bufs, or fails; it returns the bytes
// written and leaves in *bufs what was not (as net.Buffers.WriteTo
// consumes its receiver).
func (w *rawWriter) writeBuffers(bufs *net.Buffers) (int64, error) {
	w.bufs, w.n, w.err = *bufs, 0, nil
	err := w.rc.Write(w.fn)
	*bufs, w.bufs = w.bufs, nil
	clear(w.iov[:cap(w.iov)]) // no batch kept alive by a stale iovec
	if err == nil {
		err = w.err
	}
	return w.n, err
}

// write is called by the runtime when the socket may be writable; it
// returns false to wait for writability.
func (w *rawWriter) write(fd uintptr) bool {
	for len(w.bufs) > 0 {
		w.iov = w.iov[:0]
		for _, b := range w.bufs {
			if len(w.iov) == maxIovecs {
				break
			}
			if len(b) > 0 {
				v := unix.Iovec{Base: &b[0]}
				v.SetLen(len(b))
				w.iov = append(w.iov, v)
			}
		}
		if len(w.iov) == 0 {
			w.bufs = nil
			break
		}
		n, err := rawio.Writev(fd, w.iov)
		switch err {
		case nil:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		default:
			w.err = os.NewSyscallError("writev", err)
			return true
		}
		if n == 0 { // cannot happen with a non-empty iovec; never spin on it
			w.err = io.ErrUnexpectedEOF
			return true
		}
		w.n += int64(n)
		w.consume(int64(n))
	}
	return true
}

// consume drops the first n bytes of w.bufs.
func (w *rawWriter) consume(n int64) {
	for len(w.bufs) > 0 {
		if l := int64(len(w.bufs[0])); n >= l {
			n -= l
			w.bufs = w.bufs[1:]
			continue
		}
		w.bufs[0] = w.bufs[0][n:]
		return
	}
}
