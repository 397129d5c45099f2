package passthrough

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// errReadNext is splice's answer when the next bytes must be read, not
// spliced.
var errReadNext = errors.New("read next")

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
// has data again. Both streams live inside their session (one allocation
// for the session and its streams).
type stream struct {
	ss         *session
	fromClient bool    // the client's bytes (byClient), else the target's
	raw        rawPair // raw I/O state, when both sockets are plain TCP on Linux

	// Small-message copying (see copySmall); owned by the stream's
	// goroutine.
	bulk bool    // splice: the last burst filled a buffer
	buf  *[]byte // held only during a read and its write

	state     atomic.Int32
	parkReq   atomic.Bool // the sweeper asks the stream to park
	canSplice atomic.Bool // both sockets are plain TCP with raw access (session.cRaw, bRaw)
	armed     bool        // registered with the parker's epoll; owned by the stream's goroutine
}

// src is what the stream reads.
func (st *stream) src() net.Conn {
	if st.fromClient {
		return st.ss.client
	}
	return st.ss.backend
}

// dst is what the stream writes.
func (st *stream) dst() net.Conn {
	if st.fromClient {
		return st.ss.backend
	}
	return st.ss.client
}

// moved records n bytes written to dst.
func (st *stream) moved(n int) {
	if st.fromClient {
		st.ss.movedFromClient(n)
	} else {
		st.ss.movedFromTarget(n)
	}
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
	// Only the client's stream touches pending.
	if st.fromClient && len(st.ss.pending) > 0 {
		p := st.ss.pending
		st.ss.pending = nil
		n, err := st.dst().Write(p)
		st.moved(n)
		if err != nil {
			return writeError{err}, false
		}
	}
	if !st.canSplice.Load() {
		_, err = bufferCopy(st.dst(), st.src(), st.moved)
		return err, false
	}
	for {
		var parkNow bool
		if st.bulk {
			var handled bool
			handled, parkNow, err = st.splice()
			if err == errReadNext {
				st.bulk = false
				continue
			}
			if !handled { // the kernel cannot splice these sockets
				st.stopSplicing()
				_, err = bufferCopy(st.dst(), st.src(), st.moved)
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

// askPark asks a running spliced stream to park: a read deadline in the
// past cuts its wait short, and it parks instead of failing. The request
// and the deadline are set together under the parker's lock (parker.ask),
// and cleared together when the stream parks.
func (st *stream) askPark() {
	if !st.canSplice.Load() || st.state.Load() != running || st.parkReq.Load() {
		return
	}
	if p := st.ss.s.parker; p != nil {
		p.ask(st)
	}
}

// park hands the stream to the parker; false means it could not.
func (st *stream) park() bool {
	p := st.ss.s.parker
	if p == nil {
		return false
	}
	return p.park(st)
}

// stopSplicing makes the stream copy through a buffer from now on. A park
// request, which only spliced streams honour, is withdrawn with its
// deadline.
func (st *stream) stopSplicing() {
	if p := st.ss.s.parker; p != nil {
		p.withdraw(st)
		return
	}
	st.canSplice.Store(false)
}

// bufferCopy is io.Copy with a pooled buffer and a progress callback; a
// failed write is a writeError.
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
				return total, writeError{werr}
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
