package passthrough

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// copyBufferBytes is the buffer of a copy that cannot splice (TLS on one
// side): one TLS record's worth.
const copyBufferBytes = 16 << 10

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferBytes); return &b }}

// smallBufferBytes is the buffer of a plain stream's small-message reads; a
// read that fills it makes the stream bulk (splice).
const smallBufferBytes = 4 << 10

// smallBuffers is a free list of small-message buffers. Unlike a sync.Pool
// it survives garbage collections, so that new connections do not allocate
// and clear a buffer each.
var smallBuffers = make(chan *[]byte, 256)

func getSmall() *[]byte {
	select {
	case b := <-smallBuffers:
		return b
	default:
		b := make([]byte, smallBufferBytes)
		return &b
	}
}

func putSmall(b *[]byte) {
	select {
	case smallBuffers <- b:
	default: // enough kept
	}
}

// Stream states.
const (
	running int32 = iota // a goroutine copies (or waits in the runtime's poller)
	parked               // no goroutine: the parker resumes it when src has data
	ended
)

// stream is one direction of a proxied connection. A goroutine runs it
// until its source ends; a spliced stream idle for Config.ParkAfter gives
// up its goroutine instead, and the parker starts a new one when the source
// has data again.
type stream struct {
	ss       *session
	side     string // byClient for the client's bytes, byTarget for the target's
	src, dst net.Conn
	srcRaw   syscall.RawConn // the source socket, when it is spliced
	sp       *splicer        // nil unless both sockets are plain TCP on Linux
	pending  []byte          // bytes to write before copying
	moved    func(n int)

	// Small-message copying (see copySmall); owned by the stream's
	// goroutine.
	bulk   bool    // splice: the last burst filled a buffer
	buf    *[]byte // held only during a read and its write
	n      int
	rerr   error
	readFn func(fd uintptr) bool

	state     atomic.Int32
	parkReq   atomic.Bool // the sweeper asks the stream to park
	canSplice atomic.Bool // sp works on these sockets
	id        uint64      // the stream's key in the parker
	armed     bool        // registered with the parker's epoll; owned by the stream's goroutine
}

// newStream returns a stream from src to dst. srcTCP and dstTCP are the
// plain TCP sockets, when they are.
func newStream(ss *session, side string, src, dst net.Conn, srcTCP, dstTCP *net.TCPConn, moved func(int)) *stream {
	st := &stream{ss: ss, side: side, src: src, dst: dst, moved: moved}
	if srcTCP != nil && dstTCP != nil {
		st.sp = newSplicer(srcTCP, dstTCP, moved, &ss.s.spliced)
		if st.sp != nil {
			st.srcRaw = st.sp.src
			st.readFn = st.read
			st.canSplice.Store(true)
		}
	}
	return st
}

// run is proxyCopy(st), as a method value for the goroutine pool.
func (st *stream) run() { proxyCopy(st) }

// proxyCopy runs st until its source ends, then reports how it ended to
// the session. It is a named function so that it shows in stack dumps.
func proxyCopy(st *stream) {
	st.state.Store(running)
	err, parked := st.copy()
	if parked {
		return
	}
	st.state.Store(ended)
	st.ss.ended(st, err)
}

// copy moves bytes until the source ends (err nil), fails, or the stream
// parks.
func (st *stream) copy() (err error, parked bool) {
	if len(st.pending) > 0 {
		n, err := st.dst.Write(st.pending)
		st.moved(n)
		st.pending = nil
		if err != nil {
			return err, false
		}
	}
	if !st.canSplice.Load() {
		_, err = bufferCopy(st.dst, st.src, st.moved)
		return err, false
	}
	for {
		var parkNow bool
		if st.bulk {
			var handled bool
			handled, parkNow, err = st.sp.copy(&st.parkReq)
			if !handled { // the kernel cannot splice these sockets
				st.canSplice.Store(false)
				_, err = bufferCopy(st.dst, st.src, st.moved)
				return err, false
			}
		} else {
			parkNow, err = st.copySmall()
			if st.bulk && !parkNow && err == nil {
				continue // bulk now: splice
			}
		}
		if !parkNow {
			return err, false
		}
		st.bulk = false // a burst after a pause starts small again
		if st.park() {
			return nil, true
		}
	}
}

// copySmall copies through a buffer, which is cheaper than splicing for
// small messages, until a read fills the buffer: then the stream is bulk
// and splices. It returns parkNow as splicer.copy does.
func (st *stream) copySmall() (parkNow bool, err error) {
	for {
		st.n, st.rerr = 0, nil
		if err := st.srcRaw.Read(st.readFn); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && st.parkReq.Swap(false) {
				return true, nil
			}
			return false, err
		}
		if st.rerr != nil {
			return false, os.NewSyscallError("read", st.rerr)
		}
		if st.n == 0 {
			return false, nil
		}
		full := st.n == len(*st.buf)
		m, werr := st.dst.Write((*st.buf)[:st.n])
		putSmall(st.buf)
		st.buf = nil
		st.moved(m)
		if werr != nil {
			return false, werr
		}
		if full {
			st.bulk = true
			return false, nil
		}
	}
}

// read is called by the runtime when the source may be readable. It takes
// a buffer only for the read, so that a waiting stream holds none.
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
		st.n, st.rerr = n, err
		return true
	}
}

// askPark asks a running spliced stream to park: a read deadline in the
// past cuts its wait short, and it parks instead of failing.
func (st *stream) askPark() {
	if !st.canSplice.Load() || st.state.Load() != running || st.parkReq.Swap(true) {
		return
	}
	_ = st.src.SetReadDeadline(time.Unix(1, 0))
}

// park hands the stream to the parker; false means it could not.
func (st *stream) park() bool {
	p := st.ss.s.parker
	if p == nil {
		return false
	}
	// The sweeper's deadline has done its work; a resumed stream waits
	// without one.
	_ = st.src.SetReadDeadline(time.Time{})
	return p.park(st)
}

// bufferCopy is io.Copy with a pooled buffer and a progress callback.
func bufferCopy(dst io.Writer, src io.Reader, moved func(int)) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	var total int64
	for {
		n, rerr := src.Read(*bp)
		if n > 0 {
			m, werr := dst.Write((*bp)[:n])
			total += int64(m)
			moved(m)
			if werr != nil {
				return total, werr
			}
		}
		switch {
		case rerr == io.EOF:
			return total, nil
		case rerr != nil:
			return total, rerr
		}
	}
}

// closeWrite half-closes c: after what was written, the peer reads EOF. A
// TLS connection sends close_notify, then shuts its socket's write side.
func closeWrite(c net.Conn) {
	switch x := c.(type) {
	case *tls.Conn:
		_ = x.CloseWrite()
		closeWrite(x.NetConn())
	case interface{ Unwrap() net.Conn }: // bytes put back in front (listener.Conn.Unread)
		closeWrite(x.Unwrap())
	case interface{ CloseWrite() error }:
		_ = x.CloseWrite()
	}
}
