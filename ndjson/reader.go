package ndjson

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/internal/rawio"
	"github.com/ndlb/ndlb/listener"
)

// idleReader reads a plain TCP client so that the framer takes a buffer only
// once the socket has data (framer.BufferReader): an idle client then holds
// no read buffer. It costs no extra system call: like net.Conn.Read it tries
// to read, and on EAGAIN waits in the runtime's poller, but it hands the
// buffer back before waiting. Deadlines apply as on the connection.
type idleReader struct {
	*listener.Conn
	tcp     *net.TCPConn
	rc      syscall.RawConn
	pending []byte // read past a PROXY header; served first

	// State of the read in progress. readFn is r.read bound once, so that
	// a read allocates nothing.
	readFn  func(fd uintptr) bool
	get     func() []byte
	put     func()
	n       int
	readErr error
	noBuf   bool // get had no memory for the read

	final  bool         // the drain deadline passed: read what the kernel holds
	moving *atomic.Bool // set when the connection is being handed to another process
	heard  *atomic.Bool // set when a read brings the client's bytes (not pending ones)
	co     *coalescer   // lets a fast client's bytes gather between reads; nil: off
}

var _ framer.BufferReader = (*idleReader)(nil)

// clientReader returns the reader the framer should use for c; reads of
// readBytes, coalesced for fast clients over at most coalesce (see
// coalescer; 0: off).
func clientReader(c *listener.Conn, readBytes int, coalesce time.Duration) io.Reader {
	tc, pending, ok := c.Raw()
	if !ok {
		if c.CanTryRead() {
			return &tlsReader{c: c, pending: c.Pending()}
		}
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return io.MultiReader(bytes.NewReader(pending), tc)
	}
	r := &idleReader{Conn: c, tcp: tc, rc: rc, pending: pending, co: newCoalescer(rc, readBytes/2, coalesce)}
	r.readFn = r.read
	return r
}

// ReadBuffer implements framer.BufferReader.
func (r *idleReader) ReadBuffer(get func() []byte, put func()) (int, error) {
	if len(r.pending) > 0 {
		buf := get()
		if buf == nil {
			return 0, nil
		}
		return fromPending(&r.pending, buf), nil
	}
	if r.final {
		return r.finalRead(get, put)
	}
	r.get, r.put, r.n = get, put, 0
	err := r.rc.Read(r.readFn)
	n, rerr, noBuf := r.n, r.readErr, r.noBuf
	r.get, r.put, r.readErr, r.noBuf = nil, nil, nil, false
	if r.co != nil {
		if err == nil && rerr == nil && !noBuf && n > 0 {
			r.co.read(n)
			r.hear()
			return n, nil
		}
		if !noBuf {
			// Suspended, drained, ended or failed: the socket leaves
			// as it came, and no timer outlives the reads.
			r.co.stop()
		}
	}
	switch {
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded) && r.moving != nil && r.moving.Load() && !r.Interrupted():
		// HandOff stopped the reads: the framer keeps its partial line.
		return 0, framer.ErrSuspend
	case err != nil && errors.Is(err, os.ErrDeadlineExceeded) && r.Interrupted():
		// The drain deadline: what the kernel holds is still read.
		r.final = true
		return r.finalRead(get, put)
	case err != nil: // closed, or the read deadline passed
		return 0, err
	case noBuf:
		return 0, nil // the framer waits for memory, then reads again
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0 && r.Interrupted():
		// The listener shut the socket at the drain deadline: this end
		// of stream may be ours, not the client's.
		r.final = true
		return r.finalRead(get, put)
	case n == 0:
		return 0, io.EOF
	}
	r.hear()
	return n, nil
}

// hear notes that the client sent bytes (see clientConn.idleSince).
func (r *idleReader) hear() {
	if r.heard != nil {
		r.heard.Store(true)
	}
}

// read is called by the runtime when the socket may be readable; returning
// false waits for readability.
func (r *idleReader) read(fd uintptr) bool {
	for {
		buf := r.get()
		if buf == nil {
			r.noBuf = true
			return true
		}
		r.n, r.readErr = rawio.Read(fd, buf)
		switch {
		case errors.Is(r.readErr, syscall.EINTR):
			continue
		case errors.Is(r.readErr, syscall.EAGAIN):
			r.put()
			if r.co != nil {
				r.co.waiting()
			}
			return false // wait without holding a buffer
		}
		return true
	}
}

// tlsReader reads a TLS client so that the framer takes a buffer only once
// the client has sent something, as idleReader does for plain TCP: an idle
// TLS client then holds no read buffer, and so no share of
// --client-buffer-bytes (TLS itself keeps its record buffers). A read
// that finds nothing (listener.ErrWouldBlock) gives the buffer back and
// waits for the socket. Deadlines apply as on the connection; after the
// drain deadline the reads take what the kernel holds, as Read does.
//
// A reload's HandOff may move the connection, session and all, to the
// listener's replacement in this process: its reads then end with
// framer.ErrSuspend, as idleReader's do.
type tlsReader struct {
	c       *listener.Conn
	pending []byte       // plaintext the connection's previous listener read; served first
	moving  *atomic.Bool // set when HandOff is moving the connection
	heard   *atomic.Bool // set when a read brings the client's bytes (not pending ones)
}

var _ framer.BufferReader = (*tlsReader)(nil)

// hear notes that the client sent bytes (see clientConn.idleSince).
func (r *tlsReader) hear() {
	if r.heard != nil {
		r.heard.Store(true)
	}
}

// Read reads the connection as it is, waiting for the client.
func (r *tlsReader) Read(p []byte) (int, error) {
	if len(r.pending) > 0 {
		return fromPending(&r.pending, p), nil
	}
	return r.c.Read(p)
}

// ReadBuffer implements framer.BufferReader.
func (r *tlsReader) ReadBuffer(get func() []byte, put func()) (int, error) {
	for {
		buf := get()
		if buf == nil {
			return 0, nil // the framer waits for memory, then reads again
		}
		if len(r.pending) > 0 {
			return fromPending(&r.pending, buf), nil
		}
		n, err := r.c.TryRead(buf)
		if n > 0 {
			r.hear()
			return n, nil // an error with them comes again at the next read
		}
		if r.suspended(err) {
			put()
			return 0, framer.ErrSuspend
		}
		if !errors.Is(err, listener.ErrWouldBlock) {
			return n, err
		}
		put()
		if err := r.c.WaitRead(); err != nil && !r.c.Interrupted() {
			if r.suspended(err) {
				return 0, framer.ErrSuspend
			}
			return 0, err // closed, or the read deadline passed
		}
		// Readable, or the drain deadline: the next read takes what the
		// kernel holds.
	}
}

// suspended reports whether err is HandOff stopping the reads: TLS keeps
// a record that came in part, and the connection moves with it.
func (r *tlsReader) suspended(err error) bool {
	return err != nil && errors.Is(err, os.ErrDeadlineExceeded) && r.moving != nil && r.moving.Load() && !r.c.Interrupted()
}

// fromPending moves the start of *pending, bytes a reader holds that it
// read before (past a PROXY header, or the previous holder's), into p.
func fromPending(pending *[]byte, p []byte) int {
	n := copy(p, *pending)
	*pending = (*pending)[n:]
	return n
}

// finalRead reads what the kernel holds without waiting, after the drain
// deadline; listener.ErrDrained when nothing is left.
func (r *idleReader) finalRead(get func() []byte, put func()) (int, error) {
	buf := get()
	if buf == nil {
		return 0, nil
	}
	n, err := listener.FinalRead(r.rc, buf)
	if n == 0 {
		put()
	}
	return n, err
}

// readFinal reads what the kernel holds for c into p without waiting, for
// counting what is dropped: through the socket for plain TCP, through TLS
// (whose reads do the same once the listener interrupted c) otherwise.
func readFinal(c *listener.Conn, r any, p []byte) (int, error) {
	if o, ok := r.(*framer.OctetReader); ok {
		return o.Read(p) // its lines; its source's final reads are set (clientConn.final)
	}
	if ir, ok := r.(*idleReader); ok {
		if len(ir.pending) > 0 {
			return fromPending(&ir.pending, p), nil
		}
		return listener.FinalRead(ir.rc, p)
	}
	if tr, ok := r.(*tlsReader); ok && len(tr.pending) > 0 {
		return fromPending(&tr.pending, p), nil
	}
	if !c.Interrupted() {
		return 0, listener.ErrDrained // a TLS read could wait
	}
	return c.Read(p)
}
