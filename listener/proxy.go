package listener

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/pires/go-proxyproto"
)

// ErrNoProxyHeader is wrapped by the error for a connection that does not
// start with a PROXY protocol header in time.
var ErrNoProxyHeader = errors.New("no PROXY protocol header")

// errClosedEarly wraps ErrNoProxyHeader for a client that closed before
// sending a byte: a plain TCP health check, logged at debug level.
var errClosedEarly = fmt.Errorf("%w", ErrNoProxyHeader)

// proxyBufferBytes is the read buffer for the header. A v2 header with TLVs
// may be longer; bufio then reads the rest through.
const proxyBufferBytes = 256

// readProxyHeader reads the PROXY header at the start of c and sets
// c.Client and c.Local from it. Bytes read past the header are kept for the
// handler in a prefixConn.
func (l *Listener) readProxyHeader(c *Conn) error {
	br := bufio.NewReaderSize(c.Conn, proxyBufferBytes)
	start := time.Now()
	if err := bufferV1Line(c.Conn, br, start.Add(l.cfg.ProxyHeaderTimeout)); err != nil {
		if b, _ := br.Peek(br.Buffered()); len(b) > 0 {
			return fmt.Errorf("%w within %s: only %q came", ErrNoProxyHeader, l.cfg.ProxyHeaderTimeout, b)
		}
		return fmt.Errorf("%w within %s", ErrNoProxyHeader, l.cfg.ProxyHeaderTimeout)
	}
	rest := max(l.cfg.ProxyHeaderTimeout-time.Since(start), time.Millisecond) // 0 would be none
	h, err := proxyproto.ReadHeaderTimeout(c.Conn, br, rest)
	switch {
	// go-proxyproto says ErrNoProxyProtocol for a timeout, an early close
	// and other bytes alike; the log says which it was.
	case errors.Is(err, proxyproto.ErrNoProxyProtocol) && br.Buffered() > 0:
		return fmt.Errorf("%w: the connection starts with other bytes (does the front balancer send PROXY headers?)", ErrNoProxyHeader)
	case errors.Is(err, proxyproto.ErrNoProxyProtocol) && time.Since(start) < l.cfg.ProxyHeaderTimeout:
		return fmt.Errorf("%w: the client closed the connection before sending one", errClosedEarly)
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		return fmt.Errorf("%w within %s", ErrNoProxyHeader, l.cfg.ProxyHeaderTimeout)
	case errors.Is(err, os.ErrDeadlineExceeded):
		// A version 2 header's fixed part or addresses, cut short.
		return fmt.Errorf("%w within %s: a header began and did not end", ErrNoProxyHeader, l.cfg.ProxyHeaderTimeout)
	case err != nil:
		return err
	}
	// LOCAL (a front balancer's own health check) and UNSPEC keep the
	// connection's addresses, as the protocol says.
	if h.Command.IsProxy() && (h.TransportProtocol.IsIPv4() || h.TransportProtocol.IsIPv6()) {
		c.Client, c.Local = h.SourceAddr, h.DestinationAddr
	}
	if n := br.Buffered(); n > 0 {
		pending, _ := br.Peek(n)
		c.Conn = &prefixConn{Conn: c.Conn, pending: append([]byte(nil), pending...)}
	}
	return nil
}

// v1MaxBytes is the longest a v1 header may be, CRLF included.
const v1MaxBytes = 107

// bufferV1Line waits, until deadline, for the rest of a version 1 header
// that arrives in pieces: go-proxyproto takes one only when a single read
// brought all of it, and the protocol asks receivers to be tolerant. It
// reads into br until the bytes there stop looking like the start of a
// v1 header, hold its line end, or reach its longest; it returns an
// error only when the deadline passed first. A v2 header needs no help
// (its length is in its fixed part).
func bufferV1Line(nc net.Conn, br *bufio.Reader, deadline time.Time) error {
	if err := nc.SetReadDeadline(deadline); err != nil {
		return nil // go-proxyproto will say
	}
	defer nc.SetReadDeadline(time.Time{})
	for {
		if _, err := br.Peek(br.Buffered() + 1); errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		} else if err != nil {
			return nil
		}
		b, _ := br.Peek(br.Buffered())
		if !couldBeV1(b) || bytes.IndexByte(b, '\n') >= 0 || len(b) >= v1MaxBytes {
			return nil
		}
	}
}

// couldBeV1 reports whether b is the start of a version 1 header, as far
// as it goes.
func couldBeV1(b []byte) bool {
	const sig = "PROXY "
	k := min(len(b), len(sig))
	return string(b[:k]) == sig[:k]
}

// prefixConn is a connection with bytes already read from it.
type prefixConn struct {
	net.Conn
	pending []byte
}

// Read returns the pending bytes first.
func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.pending) > 0 {
		n := copy(b, p.pending)
		p.pending = p.pending[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// Unwrap is the connection the pending bytes came from.
func (p *prefixConn) Unwrap() net.Conn { return p.Conn }

// CloseWrite half-closes the connection, if it can be.
func (p *prefixConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
