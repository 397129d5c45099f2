package ndjson

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/listener"
)

// idleReader reads a plain TCP client so that the framer takes a buffer only
// once the socket has data (framer.BufferReader): an idle client then holds
// no read buffer. It costs no extra system call: like net.Conn.Read it tries
// to read, and on EAGAIN waits in the runtime's poller, but it hands the
// buffer back before waiting. Deadlines apply as on the connection.
type idleReader struct {
	*listener.Conn
	rc syscall.RawConn
}

var _ framer.BufferReader = (*idleReader)(nil)

// clientReader returns the reader the framer should use for c.
func clientReader(c *listener.Conn) io.Reader {
	tc, ok := c.Conn.(*net.TCPConn)
	if !ok {
		return c // TLS keeps its own buffers; nothing to gain
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &idleReader{Conn: c, rc: rc}
}

// ReadBuffer implements framer.BufferReader.
func (r *idleReader) ReadBuffer(get func() []byte, put func()) (int, error) {
	var n int
	var rerr error
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Read(int(fd), get())
			switch {
			case errors.Is(rerr, syscall.EINTR):
				continue
			case errors.Is(rerr, syscall.EAGAIN):
				put()
				return false // wait for readability without a buffer
			}
			return true
		}
	})
	switch {
	case err != nil: // closed, or the read deadline passed
		return 0, err
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
