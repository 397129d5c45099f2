package listener

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/ksuid"
)

// DefaultHandshakeTimeout bounds a client's TLS handshake.
const DefaultHandshakeTimeout = 10 * time.Second

// backlogGrace is how long Shutdown keeps accepting, so that connections the
// kernel completed before the shutdown (and whose clients may have sent all
// their data and gone) are served rather than reset with the listener.
const backlogGrace = 100 * time.Millisecond

// Conn is an accepted client connection, after its TLS handshake.
type Conn struct {
	net.Conn
	// ID names the connection in logs.
	ID ksuid.KSUID
	// Log carries the connection's id and peer address.
	Log *slog.Logger
}

// Handler serves one connection. The listener closes the connection after
// ServeConn returns. When the listener's shutdown deadline passes, reads on
// the connection start failing (the read deadline is moved to the past);
// ServeConn must then return once it has dealt with what it read.
type Handler interface {
	ServeConn(c *Conn)
}

// Config configures a Listener.
type Config struct {
	// TLS, if set, is the server config for a TLS handshake on each
	// connection.
	TLS *tls.Config
	// HandshakeTimeout bounds the TLS handshake; zero means the default.
	HandshakeTimeout time.Duration
	// Logger receives the listener's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Stats are the listener's counters.
type Stats struct {
	Accepted        uint64 // connections accepted
	Active          int64  // connections open now
	HandshakeFailed uint64 // TLS handshakes that failed
}

// Listener accepts connections and hands them to a Handler.
type Listener struct {
	ln  net.Listener
	h   Handler
	cfg Config
	log *slog.Logger

	wg          sync.WaitGroup // one per connection
	mu          sync.Mutex
	conns       map[*Conn]struct{} // guarded by mu
	draining    bool               // Shutdown has begun; guarded by mu
	interrupted bool               // reads are being cut off; guarded by mu
	done        chan struct{}      // closed when Serve returns

	accepted, hsFailed atomic.Uint64
	active             atomic.Int64
}

// New returns a Listener that will serve ln with h.
func New(ln net.Listener, h Handler, cfg Config) *Listener {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	l := &Listener{ln: ln, h: h, cfg: cfg, log: cfg.Logger, conns: make(map[*Conn]struct{}), done: make(chan struct{})}
	if l.log == nil {
		l.log = slog.Default()
	}
	return l
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Serve accepts connections until Shutdown closes the listener; then it
// returns nil. Other accept errors that persist are returned.
func (l *Listener) Serve() error {
	defer close(l.done)
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if l.isDraining() {
				l.ln.Close()
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Out of file descriptors or similar: wait and retry, as
			// net/http does, instead of spinning.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed; retrying", "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		l.accepted.Add(1)
		l.wg.Go(func() { l.serveConn(c) })
	}
}

func (l *Listener) isDraining() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.draining
}

// serveConn runs the handshake and the handler for one connection.
func (l *Listener) serveConn(nc net.Conn) {
	c := &Conn{Conn: nc, ID: ksuid.New()}
	c.Log = l.log.With("conn", c.ID.String(), "client", nc.RemoteAddr().String())
	defer nc.Close()
	if l.cfg.TLS != nil {
		tc := tls.Server(nc, l.cfg.TLS)
		ctx, cancel := context.WithTimeout(context.Background(), l.cfg.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			l.hsFailed.Add(1)
			level := slog.LevelWarn
			if errors.Is(err, io.EOF) { // a port probe or health check
				level = slog.LevelDebug
			}
			c.Log.Log(context.Background(), level, "TLS handshake failed", "err", err)
			return
		}
		c.Conn = tc
	}
	l.track(c)
	defer l.untrack(c)
	l.h.ServeConn(c)
}

// track registers c. A connection that arrives after reads were cut off is
// cut off too.
func (l *Listener) track(c *Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.interrupted {
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
	l.conns[c] = struct{}{}
	l.active.Add(1)
}

func (l *Listener) untrack(c *Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	l.active.Add(-1)
}

// Shutdown stops accepting and waits for every connection's handler to
// return. Clients may go on sending until they close their connections; when
// ctx is done first, reads on the remaining connections are made to fail so
// that their handlers finish. Shutdown then still waits for the handlers and
// returns ctx's error.
func (l *Listener) Shutdown(ctx context.Context) error {
	l.mu.Lock()
	l.draining = true
	l.mu.Unlock()
	// Accept what the kernel has already queued, then stop.
	if dl, ok := l.ln.(interface{ SetDeadline(time.Time) error }); !ok || dl.SetDeadline(time.Now().Add(backlogGrace)) != nil {
		l.ln.Close()
	}
	<-l.done
	finished := make(chan struct{})
	go func() { l.wg.Wait(); close(finished) }()
	select {
	case <-finished:
		return nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	l.interrupted = true
	for c := range l.conns {
		_ = c.SetReadDeadline(time.Unix(1, 0))
	}
	l.mu.Unlock()
	<-finished
	return ctx.Err()
}

// Stats returns the listener's counters.
func (l *Listener) Stats() Stats {
	return Stats{Accepted: l.accepted.Load(), Active: l.active.Load(), HandshakeFailed: l.hsFailed.Load()}
}
