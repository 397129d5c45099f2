package pool

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/segmentio/ksuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/tlsutil"
	"github.com/ndlb/ndlb/upstream"
)

// pending is a written batch waiting for acknowledgement: it is acknowledged
// once the connection's acknowledged byte count reaches end.
type pending struct {
	b   *framer.Batch
	end int64
	// wire is the batch's length on the wire, when an encoding makes it
	// differ from len(b.Data) (0 otherwise).
	wire int64
}

// upConn is one upstream connection and the batches written on it that the
// target has not acknowledged yet. Only its worker touches it, except the
// reader goroutine, which only closes dead.
type upConn struct {
	tel      *telemetry
	delivery metric.RecordOption // attributes of its delivery latencies
	id       ksuid.KSUID
	target   *upstream.Target
	conn     net.Conn        // what batches are written to (TLS or TCP)
	tcp      net.Conn        // the connection under TLS, or conn
	raw      syscall.RawConn // the TCP socket; nil if unknown
	outq     *outq           // samples raw's send queue; nil if raw is
	rw       *rawWriter      // writes raw's batches on Linux, when conn is plain TCP
	count    *countConn      // raw bytes written, under TLS
	log      *slog.Logger

	encode  func(dst, data []byte) []byte // Config.Encode
	enc     [][]byte                      // encode's buffers, reused
	bufs    net.Buffers                   // the batches of the write in progress
	wv      net.Buffers                   // what WriteTo consumes; a field, so it does not escape per write
	written int64                         // bytes handed to the socket
	acked   int64                         // bytes known acknowledged
	unacked []pending                     // in write order
	// intended is past written when a write stopped inside a batch: the
	// target holds a fragment, and the connection must end with a reset
	// (abandoned).
	intended int64

	dead    chan struct{} // closed when the reader sees EOF or an error
	readErr error         // set before dead is closed
}

// countConn counts the bytes written through it: under TLS, the bytes on the
// wire, which is what SIOCOUTQ speaks of.
type countConn struct {
	net.Conn
	n atomic.Int64
}

// Write writes to the connection and counts what was written.
func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// dialConn opens a connection to t, with TLS if the pool has it.
func (p *Pool) dialConn(ctx context.Context, t *upstream.Target, reason string, id ksuid.KSUID, log *slog.Logger) (c *upConn, err error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	ctx, span := p.tel.dialSpan(ctx, t, reason)
	span.SetAttributes(attribute.String("ndlb.conn.id", id.String()))
	start := time.Now()
	defer func() { p.tel.dialDone(ctx, span, t, reason, start, err) }()
	p.st.dials.Add(1)
	raw, err := p.dial.DialContext(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, err
	}
	c = &upConn{id: id, target: t, conn: raw, tcp: raw, dead: make(chan struct{}), tel: p.tel, delivery: p.tel.deliveryOpt(t),
		encode: p.cfg.Encode}
	if sc, ok := raw.(syscall.Conn); ok {
		if c.raw, _ = sc.SyscallConn(); c.raw != nil {
			c.outq = newOutq(c.raw)
			if _, plain := raw.(*net.TCPConn); plain && p.cfg.TLS == nil {
				c.rw = newRawWriter(c.raw)
			}
		}
	}
	if p.cfg.TLS != nil {
		if err := c.startTLS(ctx, p.cfg.TLS, t.Addr); err != nil {
			raw.Close()
			if ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("TLS handshake not finished within the connect timeout (%s): %w", p.cfg.ConnectTimeout, err)
			}
			return nil, err
		}
	}
	c.log = log.With("conn", c.id.String(), "target", t.Addr)
	go c.readLoop()
	return c, nil
}

func (c *upConn) startTLS(ctx context.Context, get func() (*tls.Config, error), addr string) error {
	cfg, err := tlsutil.ForTarget(get, addr)
	if err != nil {
		return err
	}
	// Note whether the target asks for a certificate, choosing one as
	// crypto/tls would.
	cfg = cfg.Clone()
	certs, asked := cfg.Certificates, false
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		asked = true
		for i := range certs {
			if cri.SupportsCertificate(&certs[i]) == nil {
				return &certs[i], nil
			}
		}
		return new(tls.Certificate), nil
	}
	c.count = &countConn{Conn: c.conn}
	tc := tls.Client(c.count, cfg)
	start := time.Now()
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	if asked && tc.ConnectionState().Version >= tls.VersionTLS13 {
		if err := awaitVerdict(ctx, tc, time.Since(start)); err != nil {
			return err
		}
	}
	c.conn = tc
	return nil
}

// certVerdictMargin is added to twice the handshake's time in
// awaitVerdict, and certVerdictMin is the least it waits: a target may
// take its time over a certificate (a revocation list, a busy CPU).
const (
	certVerdictMargin = 100 * time.Millisecond
	certVerdictMin    = 250 * time.Millisecond
)

// awaitVerdict waits for a TLS 1.3 target that asked for a client
// certificate to refuse it. In TLS 1.3 the client's handshake ends before
// the server has checked the certificate; a server that refuses it sends
// an alert half a round trip after the client's last message, and
// discards whatever the client wrote meanwhile, after its kernel has
// acknowledged it: lines that would count as delivered and never arrive.
// So the connection is used only once the alert had time to come: twice
// the handshake's time plus certVerdictMargin, at least certVerdictMin,
// within the connect timeout. Bytes the target sends meanwhile are
// discarded, as readLoop would. A target slower than that to refuse is
// still caught when it closes, but what was written before counts as
// delivered.
func awaitVerdict(ctx context.Context, tc *tls.Conn, handshake time.Duration) error {
	deadline := time.Now().Add(max(2*handshake+certVerdictMargin, certVerdictMin))
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := tc.SetReadDeadline(deadline); err != nil {
		return err
	}
	var b [512]byte
	_, err := tc.Read(b[:])
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("TLS: the target refused the connection after the handshake (its verdict on the client certificate): %w", err)
	}
	return tc.SetReadDeadline(time.Time{})
}

// readLoop notices the target closing or resetting the connection, which an
// idle writer would not. Targets are not expected to send; what they send is
// discarded. It returns when the connection is closed.
func (c *upConn) readLoop() {
	var buf [512]byte
	for {
		if _, err := c.conn.Read(buf[:]); err != nil {
			c.readErr = err
			close(c.dead)
			return
		}
	}
}

// write writes bs as one vectored write (plain TCP) or batch by batch (TLS)
// and adds them to unacked, written or not: on error the caller requeues
// everything unacknowledged.
//
// timeout bounds a period in which the target takes nothing, not the whole
// write: a target that took some of the bytes within it (a slow reader, such
// as one far away behind a small window) gets another period for the rest,
// so a stalled target fails within one to two timeouts. A TLS write that
// times out leaves the stream unusable, so there each batch gets its own
// period instead. Once ctx is done (interruptWrites), no period is renewed.
func (c *upConn) write(ctx context.Context, bs []*framer.Batch, timeout time.Duration) error {
	if c.encode != nil {
		defer c.trimEncode()
	}
	if err := c.conn.SetWriteDeadline(time.Now().Add(timeout)); err != nil {
		c.unack(bs)
		return err
	}
	if c.count != nil {
		for i, b := range bs {
			if i > 0 {
				c.renewWriteDeadline(ctx, timeout)
			}
			if _, err := c.conn.Write(c.wire(b, 0)); err != nil {
				if c.count.n.Load() > c.written {
					c.intended = math.MaxInt64 // some of b's records went out
				}
				c.unack(bs[i:])
				return err
			}
			c.written = c.count.n.Load()
			c.unacked = append(c.unacked, pending{b: b, end: c.written})
		}
		return nil
	}
	c.bufs = c.bufs[:0]
	for i, b := range bs {
		c.bufs = append(c.bufs, c.wire(b, i))
	}
	start := c.written
	end := start
	for i, b := range bs {
		end += int64(len(c.bufs[i]))
		p := pending{b: b, end: end}
		if c.encode != nil {
			p.wire = int64(len(c.bufs[i]))
		}
		c.unacked = append(c.unacked, p)
	}
	var n int64
	var err error
	c.wv = c.bufs // consumed as it is written
	for {
		var m int64
		if c.rw != nil {
			m, err = c.rw.writeBuffers(&c.wv)
		} else {
			m, err = c.wv.WriteTo(c.conn)
		}
		n += m
		if m == 0 || !errors.Is(err, os.ErrDeadlineExceeded) || len(c.wv) == 0 {
			break
		}
		// The target took bytes in the period: slow, not stalled.
		c.renewWriteDeadline(ctx, timeout)
	}
	c.written += n
	c.wv = nil
	clear(c.bufs)
	if c.written < end && !c.atBoundary(start, len(bs)) {
		c.intended = end // the target holds a fragment of a batch
	}
	return err
}

// renewWriteDeadline gives the write under way another period of timeout,
// unless ctx is done: then interruptWrites has cut it, or will, and the
// deadline stays in the past.
func (c *upConn) renewWriteDeadline(ctx context.Context, timeout time.Duration) {
	_ = c.conn.SetWriteDeadline(time.Now().Add(timeout))
	if ctx.Err() != nil {
		_ = c.conn.SetWriteDeadline(time.Unix(1, 0))
	}
}

// atBoundary reports whether written ends where one of the last k
// batches of unacked begins or ends: a write that stopped there left the
// target no fragment. start is where the first of them begins.
func (c *upConn) atBoundary(start int64, k int) bool {
	if c.written == start {
		return true
	}
	for _, p := range c.unacked[len(c.unacked)-k:] {
		if p.end == c.written {
			return true
		}
	}
	return false
}

// trimEncode lets go of encode buffers too large to keep.
func (c *upConn) trimEncode() {
	for i, e := range c.enc {
		if cap(e) > maxKeptEncode {
			c.enc[i] = nil // a rare long batch: its buffer is not kept
		}
	}
}

// maxKeptEncode is the largest encode buffer a connection keeps for reuse.
// A write of many batches keeps one buffer per batch; most batches are far
// smaller than this.
const maxKeptEncode = 256 << 10

// wire is what b is on the wire: its lines, or their encoding (in the
// connection's i-th encode buffer, reused across writes).
func (c *upConn) wire(b *framer.Batch, i int) []byte {
	if c.encode == nil {
		return b.Data
	}
	for len(c.enc) <= i {
		c.enc = append(c.enc, nil)
	}
	c.enc[i] = c.encode(c.enc[i][:0], b.Data)
	return c.enc[i]
}

// unack adds batches that were not written; they can never be acknowledged,
// so their end lies past anything the socket will report.
func (c *upConn) unack(bs []*framer.Batch) {
	for _, b := range bs {
		c.unacked = append(c.unacked, pending{b: b, end: math.MaxInt64})
	}
}

// settle samples acknowledgement, reports the acknowledged batches Done and
// returns how many there were. It is called while the connection is open
// (also after it failed: Linux keeps a reset socket's unacknowledged count);
// when the sample fails, the batches stay unacknowledged.
func (c *upConn) settle(q *dispatch.Queue) int {
	if len(c.unacked) == 0 {
		return 0
	}
	c.acked = c.written
	if c.outq != nil {
		outq, err := c.outq.unacked()
		switch {
		case err == nil:
			c.acked = c.written - int64(outq)
		case !errors.Is(err, errors.ErrUnsupported):
			return 0 // not known: keep the batches until it is, or requeue them
		}
	}
	i := 0
	for ; i < len(c.unacked) && c.unacked[i].end <= c.acked; i++ {
		b := c.unacked[i].b
		c.target.Delivered(b.Lines, len(b.Data))
		c.tel.delivered(c.delivery, b.Enqueued)
		q.Done(b)
	}
	c.unacked = dropFront(c.unacked, i)
	return i
}

// settleWithin settles every interval while batches are unacknowledged,
// until limit has passed or acknowledgement made no progress for a delayed
// ACK's time (60 ms).
func (c *upConn) settleWithin(q *dispatch.Queue, interval, limit time.Duration) {
	const stuck = 60 * time.Millisecond
	deadline := time.Now().Add(limit)
	last, lastMove := c.acked, time.Now()
	for c.settle(q); len(c.unacked) > 0; c.settle(q) {
		now := time.Now()
		if c.acked != last {
			last, lastMove = c.acked, now
		}
		if now.After(deadline) || now.Sub(lastMove) > stuck {
			return
		}
		time.Sleep(interval)
	}
}

func dropFront(s []pending, n int) []pending {
	if n == 0 {
		return s
	}
	m := copy(s, s[n:])
	clear(s[m:])
	return s[:m]
}

// requeue hands every unacknowledged batch back to the queue and returns the
// number of lines. The whole lines of the first batch that the target has
// acknowledged are delivered, not sent again: only what the target's TCP
// stack did not acknowledge is requeued (and may be duplicated).
func (c *upConn) requeue(q *dispatch.Queue) int {
	if len(c.unacked) == 0 {
		return 0
	}
	c.trimAcked(q)
	bs := make([]*framer.Batch, len(c.unacked))
	lines := 0
	for i, p := range c.unacked {
		bs[i] = p.b
		lines += p.b.Lines
	}
	c.unacked = c.unacked[:0]
	q.Requeue(bs)
	return lines
}

// trimAcked removes from the first unacknowledged batch the whole lines
// that lie within the acknowledged bytes, and reports them delivered. Under
// TLS the wire bytes do not map onto lines, so nothing is trimmed.
func (c *upConn) trimAcked(q *dispatch.Queue) {
	if c.count != nil {
		return
	}
	p := c.unacked[0]
	wire := int64(len(p.b.Data))
	if c.encode != nil {
		wire = p.wire
	}
	start := p.end - wire
	if p.end == math.MaxInt64 || c.acked <= start {
		return
	}
	var cut, lines int
	if c.encode != nil {
		cut, lines = c.wholeEncoded(p.b.Data, c.acked-start)
	} else {
		acked := p.b.Data[:c.acked-start]
		cut = bytes.LastIndexByte(acked, '\n') + 1
		lines = bytes.Count(acked[:cut], []byte{'\n'})
	}
	if cut == 0 {
		return
	}
	p.b.Data, p.b.Lines = p.b.Data[cut:], p.b.Lines-lines
	c.target.Delivered(lines, cut)
	q.DeliveredPart(lines)
}

// wholeEncoded returns how many bytes and lines at the front of data
// encode into at most acked wire bytes: the messages the target has
// acknowledged whole. It runs only when a connection fails.
func (c *upConn) wholeEncoded(data []byte, acked int64) (cut, lines int) {
	var wire int64
	var scratch []byte
	for cut < len(data) {
		i := bytes.IndexByte(data[cut:], '\n')
		if i < 0 {
			break
		}
		scratch = c.encode(scratch[:0], data[cut:cut+i+1])
		if wire+int64(len(scratch)) > acked {
			break
		}
		wire += int64(len(scratch))
		cut += i + 1
		lines++
	}
	return cut, lines
}

// close closes the connection and waits for its reader to stop. A
// connection given up with bytes written and not known acknowledged ends
// with a reset, never a FIN: the target must not read a fragment followed
// by a clean end of stream, and the unsent rest is discarded rather than
// delivered after its batches were requeued.
func (c *upConn) close() {
	if c.abandoned() {
		c.reset()
	} else {
		c.conn.Close()
	}
	<-c.dead
}

// reset closes the TCP connection with SO_LINGER 0, so the kernel sends RST
// and drops what it had not sent. Under TLS no close_notify is sent.
func (c *upConn) reset() {
	if tc, ok := c.tcp.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.tcp.Close()
}

// abandoned reports whether closing c now would reset it: bytes written
// are not known acknowledged, or a write stopped inside a batch (the
// target holds a fragment, acknowledged or not).
func (c *upConn) abandoned() bool { return c.written > c.acked || c.written < c.intended }

// isExpected tells errors that are part of a target going away, logged at
// Debug, from surprises.
func isExpected(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
