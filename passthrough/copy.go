package passthrough

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
)

// copyBufferBytes is the buffer of a copy that cannot splice (TLS on one
// side): one TLS record's worth.
const copyBufferBytes = 16 << 10

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, copyBufferBytes); return &b }}

// stream is one direction of a proxied connection.
type stream struct {
	src, dst net.Conn
	// srcTCP and dstTCP are the plain TCP sockets, when both are plain
	// TCP, for splicing.
	srcTCP, dstTCP *net.TCPConn
	// moved is called with every count of bytes written to dst.
	moved func(n int)
}

// proxyCopy copies s.src to s.dst until src ends, and returns the bytes
// written, whether they were spliced, and the error that ended the copy
// (nil at EOF). It is a named function so that it shows in stack dumps.
func proxyCopy(s *stream) (n int64, spliced bool, err error) {
	if s.srcTCP != nil && s.dstTCP != nil {
		if n, handled, err := spliceCopy(s.dstTCP, s.srcTCP, s.moved); handled {
			return n, true, err
		}
	}
	n, err = bufferCopy(s.dst, s.src, s.moved)
	return n, false, err
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
	case interface{ CloseWrite() error }:
		_ = x.CloseWrite()
	}
}
