package passthrough

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/pires/go-proxyproto"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/tlsutil"
	"github.com/ndlb/ndlb/upstream"
)

// connect returns a connection to the first target that accepts c, trying
// the policy's order round by round, and the number of attempts it made.
func (s *Server) connect(ctx context.Context, c *listener.Conn) (net.Conn, *upstream.Target, int, error) {
	key := hashKey(c.Client, s.cfg.HashKey)
	if s.cfg.HashFirst.Length > 0 && s.policy.Load().name == "hash" {
		key = append(key, s.firstBytes(c)...)
	}
	var order []int
	bo := backoff.WithContext(backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(s.cfg.BackoffInitial),
		backoff.WithMaxInterval(s.cfg.BackoffMax),
		backoff.WithMaxElapsedTime(0),
	), ctx)
	attempts := 0
	var lastErr error
	for round := 0; ; round++ {
		targets := s.set.Targets() // a snapshot per round: the set may change
		order = s.candidates(order[:0], targets, key)
		if len(order) == 0 {
			lastErr = errNoneAccepts
		}
		for _, i := range order {
			t := targets[i]
			attempts++
			conn, err := s.attempt(ctx, t, c, attempts)
			if err == nil {
				// The attempt is judged by the session: a target
				// that accepts and then resets has not succeeded.
				return conn, t, attempts, nil
			}
			if ctx.Err() != nil {
				return nil, nil, attempts, ctx.Err()
			}
			lastErr = err
			s.dialFailed.Add(1)
			c.Log.Debug("target attempt failed; trying the next", "target", t.Addr, "err", err)
			s.attemptFailed(t, err)
		}
		if round == s.cfg.ConnectRetries {
			return nil, nil, attempts, fmt.Errorf("%w after %d attempts: %w", ErrNoTarget, attempts, lastErr)
		}
		if err := s.wait(ctx, bo.NextBackOff()); err != nil {
			return nil, nil, attempts, err
		}
	}
}

func (s *Server) wait(ctx context.Context, d time.Duration) error {
	if d == backoff.Stop {
		return ctx.Err()
	}
	t := s.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// attempt opens one connection to t for c: dial, PROXY header, TLS, all
// within ConnectTimeout.
func (s *Server) attempt(ctx context.Context, t *upstream.Target, c *listener.Conn, n int) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	defer cancel()
	ctx, span := startSpan(ctx, "ndlb.upstream.dial", trace.SpanKindClient, func() []attribute.KeyValue {
		return dialAttrs(t, n)
	})
	defer span.End()
	start := time.Now()
	conn, err := s.dialHandshake(ctx, t, c)
	s.recordDial(ctx, t, time.Since(start), err)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return conn, err
}

// dialHandshake dials t and runs the PROXY header and TLS.
func (s *Server) dialHandshake(ctx context.Context, t *upstream.Target, c *listener.Conn) (net.Conn, error) {
	conn, err := s.dial(ctx, "tcp", t.Addr)
	if err != nil {
		return nil, err
	}
	if err := s.sendProxy(ctx, conn, c); err != nil {
		conn.Close()
		return nil, err
	}
	if s.cfg.TLS != nil {
		tc, err := s.startTLS(ctx, conn, t)
		if err != nil {
			conn.Close()
			return nil, err
		}
		conn = tc
	}
	return conn, nil
}

// sendProxy writes the PROXY header, if configured, with c's addresses.
func (s *Server) sendProxy(ctx context.Context, conn net.Conn, c *listener.Conn) error {
	if s.cfg.SendProxy == 0 {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetWriteDeadline(dl)
		defer conn.SetWriteDeadline(time.Time{})
	}
	h := proxyproto.HeaderProxyFromAddrs(byte(s.cfg.SendProxy), c.Client, c.Local)
	if _, err := h.WriteTo(conn); err != nil {
		return fmt.Errorf("send PROXY header: %w", err)
	}
	return nil
}

// startTLS wraps conn in TLS to t.
func (s *Server) startTLS(ctx context.Context, conn net.Conn, t *upstream.Target) (net.Conn, error) {
	cfg, err := tlsutil.ForTarget(s.cfg.TLS, t.Addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, nil
}

// hashKey is what the hash policy hashes of the client's address: its IP
// in 4-byte form for IPv4 (so that IPv4 and IPv4-mapped IPv6 listeners
// agree), then the port for HashIPPort.
func hashKey(client net.Addr, k HashKey) []byte {
	ta, ok := client.(*net.TCPAddr)
	if !ok {
		return []byte(client.String())
	}
	return hashKeyOf(ta.AddrPort(), k)
}

// hashKeyOf is hashKey of an address and port (a UDP client's).
func hashKeyOf(client netip.AddrPort, k HashKey) []byte {
	key := make([]byte, 0, 18)
	if ip := client.Addr().Unmap(); ip.Is4() {
		b := ip.As4()
		key = append(key, b[:]...)
	} else {
		b := ip.As16()
		key = append(key, b[:]...)
	}
	if k == HashIPPort {
		key = append(key, byte(client.Port()>>8), byte(client.Port()))
	}
	return key
}

// firstBytes reads what the client sends first, up to the end of
// HashFirst, waiting at most HashKeyTimeout, puts it back to be forwarded
// unchanged, and returns the part HashFirst names (shorter, or empty, if
// the client sent less).
func (s *Server) firstBytes(c *listener.Conn) []byte {
	r := s.cfg.HashFirst
	wait := s.cfg.HashKeyTimeout
	if wait <= 0 {
		wait = DefaultHashKeyTimeout
	}
	buf := make([]byte, r.Offset+r.Length)
	_ = c.SetReadDeadline(time.Now().Add(wait))
	n, _ := io.ReadAtLeast(c, buf, len(buf)) // what came in time, if less
	if !c.Interrupted() {
		_ = c.SetReadDeadline(time.Time{})
	}
	c.Unread(buf[:n])
	if n <= r.Offset {
		return nil
	}
	return buf[r.Offset:n]
}
