package passthrough

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ndlb/ndlb/balance"
	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/listener"
)

// Defaults for Config.
const (
	DefaultConnectTimeout = 5 * time.Second
	DefaultConnectRetries = 9
	DefaultMaxFails       = 3
	// MaxRetries bounds ConnectRetries and MaxFails.
	MaxRetries = 1000
	// MaxEventLoops bounds EventLoops.
	MaxEventLoops         = 1024
	DefaultFailTimeout    = 10 * time.Second
	DefaultIdleTimeout    = time.Hour
	DefaultDrainTimeout   = 30 * time.Second
	DefaultBackoffInitial = 100 * time.Millisecond
	DefaultBackoffMax     = 2 * time.Second
	// MinBackoff is the shortest BackoffInitial and BackoffMax Validate
	// accepts.
	MinBackoff = time.Millisecond
	// DefaultParkAfter is Config.ParkAfter: a connection quiet for a
	// moment (a keep-alive one between requests, say) already holds no
	// goroutine or stack; a stream that wakes again costs one epoll
	// round, not a new connection. It also bounds how many goroutines a
	// burst of new connections holds at once (a goroutine's record is
	// never freed, only reused).
	DefaultParkAfter = 250 * time.Millisecond
	// DefaultUDPIdleTimeout is Config.UDPIdleTimeout.
	DefaultUDPIdleTimeout = time.Minute
)

// Errors. ErrConfig is wrapped by Validate's errors; ErrNoTarget by the
// error of a connection that no target accepted.
var (
	ErrConfig   = errors.New("passthrough: invalid config")
	ErrNoTarget = errors.New("no target accepted the connection")
)

// ByteRange is Length bytes from Offset.
type ByteRange struct{ Offset, Length int }

// Limits of HashFirst, and the default wait for its bytes.
const (
	MaxHashFirstEnd       = 4 << 10 // a name at the start of a stream; held per waiting client
	DefaultHashKeyTimeout = time.Second
	MaxHashKeyTimeout     = 10 * time.Second
)

// HashKey is what the hash policy hashes of the client's address.
type HashKey string

// The hash keys.
const (
	HashIP     HashKey = "ip"      // the client's IP: a client sticks to one target
	HashIPPort HashKey = "ip-port" // IP and port: each connection is placed on its own
)

// Config is the whole passthrough mode. Start from DefaultConfig.
type Config struct {
	// Targets are host:port addresses, in order (the order matters to the
	// first policy).
	Targets []string
	// Name labels the server's metrics (ndlb.listener); "" means "default".
	Name string
	// Discovered means targets also come from DNS discovery, so Targets
	// may start empty.
	Discovered bool
	// Balance names the policy (balance.Names).
	Balance string
	// HashKey is hashed by the hash policy.
	HashKey HashKey
	// HashFirst, when Length > 0, adds bytes [Offset, Offset+Length) of
	// what the client sends first to the hash key, after its address:
	// clients behind one NAT, told apart by a user or host name at the
	// start of their stream, spread over the targets and each sticks to
	// its own. The server waits up to HashKeyTimeout for those bytes
	// before it chooses (a client that sends fewer is hashed on what it
	// sent), then forwards them unchanged.
	HashFirst ByteRange
	// HashKeyTimeout bounds that wait; zero means DefaultHashKeyTimeout.
	HashKeyTimeout time.Duration
	// HashOn is what the hash policy scores each target by: "addr"
	// (host:port, the default) or "host" (the same host on every port,
	// for stickiness across listeners; see balance.Hash.OnHost).
	HashOn string
	// ConnectTimeout bounds one attempt: dial, PROXY header, TLS
	// handshake.
	ConnectTimeout time.Duration
	// ConnectRetries is how many more rounds over the targets are tried,
	// with backoff between rounds, when every target failed; 0 means one
	// round.
	ConnectRetries int
	// BackoffInitial and BackoffMax bound the wait between rounds.
	BackoffInitial, BackoffMax time.Duration
	// MaxFails failed attempts in a row make a target skipped for
	// FailTimeout, unless every target is; 0 never skips.
	MaxFails    int
	FailTimeout time.Duration
	// IdleTimeout closes a connection with no traffic either way for that
	// long, or a little longer (the sweeper looks every sixteenth of it,
	// at most every second); 0 never does.
	IdleTimeout time.Duration
	// HalfCloseTimeout closes a connection one side of which has ended
	// its stream (sent FIN) once nothing has moved either way for that
	// long since, as HAProxy's timeout client-fin and server-fin do: a
	// client that sent its request and closed, waiting on a target that
	// never answers, holds two sockets only that long. 0, the default,
	// leaves such a connection to IdleTimeout: a peer that answers after a
	// long silence following the other's FIN is not cut.
	HalfCloseTimeout time.Duration
	// ParkAfter is how long a spliced connection must be idle before its
	// goroutines are let go (see the package doc); 0 never parks.
	ParkAfter time.Duration
	// EventLoop serves plain TCP connections (no TLS on either side) in
	// event loops, one per processor, on Linux: after the
	// listener has accepted a connection, its socket and the target's sit
	// in a loop's epoll set, and the loop dials, copies, splices and
	// closes inline, with no goroutine per connection. A connection while
	// some target is a host name rather than an IP address, and every
	// connection with TLS, a custom Dial, or elsewhere than Linux, is
	// served by goroutines, as when it is off. On by default.
	EventLoop bool
	// EventLoops is how many event loops (each a thread while busy) serve
	// connections with EventLoop; 0, the default, runs one per processor
	// (GOMAXPROCS). Fewer loops than cores leave more of them to the
	// backends on a shared host and batch more events per wake-up, for
	// shorter tails at a high rate of small requests, at the cost of the
	// bytes one loop can move; Validate refuses more than MaxEventLoops.
	EventLoops int
	// EventLoopThreads makes each event loop wait for its sockets in the
	// kernel (epoll_wait), on the thread it runs on, as HAProxy's threads
	// do, rather than in the Go runtime's poller: a socket's event wakes
	// its loop's thread directly, and a thread with nothing to do sleeps
	// at once instead of looking for other work. GOMAXPROCS grows by one
	// per loop while the loops run (a waiting loop holds its processor
	// without using a core), for twice as many loops in the process as it
	// had processors before; further loops wait in the poller until a
	// processor is given back, and every loop under GODEBUG's
	// asyncpreemptoff=1 does. More requests/s and steadier tails over
	// kept-alive connections; each new connection then wakes two threads
	// (the accepting goroutine's, then its loop's) rather than one, which
	// costs a few percent of the new-connection rate. On by default.
	EventLoopThreads bool
	// KeepAlive, if positive, turns TCP keepalive on for target
	// connections, probing after that much idle time; 0 leaves it off
	// and Validate refuses a negative value. Off by default, as
	// in HAProxy and nginx: IdleTimeout ends connections to vanished
	// peers, and each connection saves four system calls.
	KeepAlive time.Duration
	// SendProxy, if 1 or 2, sends a PROXY protocol header of that version
	// with the client's address at the start of each target connection.
	SendProxy int
	// TLS, if set, returns the client config for TLS to the targets.
	TLS func() (*tls.Config, error)
	// Listener configures the client side: TLS termination, PROXY
	// protocol, the connection limit. Its Logger is set from Logger.
	Listener listener.Config
	// DrainTimeout is how long open connections may go on after Shutdown
	// before they are closed.
	DrainTimeout time.Duration

	// UDP makes the server one of UDP datagrams (NewUDP): the datagrams of
	// one client address form a flow bound to one target. Connection
	// settings do not apply to it: TLS on either side, PROXY headers,
	// per-source limits, ParkAfter, KeepAlive, ConnectRetries.
	// Listener.MaxConns bounds the flows.
	UDP bool
	// UDPIdleTimeout ends a flow with no datagram either way for that
	// long.
	UDPIdleTimeout time.Duration

	// Dial opens target connections; nil means a net.Dialer with
	// KeepAlive. Tests inject refusals and stalls here.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Clock times backoff, passive health and idle timeouts (which the
	// sweeper checks on a real ticker, at this clock's time); nil means
	// the real clock.
	Clock clockwork.Clock
	// Logger receives every log; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the documented defaults, without targets.
func DefaultConfig() Config {
	return Config{
		Balance:          balance.Names[0],
		HashKey:          HashIP,
		ConnectTimeout:   DefaultConnectTimeout,
		ConnectRetries:   DefaultConnectRetries,
		BackoffInitial:   DefaultBackoffInitial,
		BackoffMax:       DefaultBackoffMax,
		MaxFails:         DefaultMaxFails,
		FailTimeout:      DefaultFailTimeout,
		IdleTimeout:      DefaultIdleTimeout,
		ParkAfter:        DefaultParkAfter,
		EventLoop:        true,
		EventLoopThreads: true,
		DrainTimeout:     DefaultDrainTimeout,
		UDPIdleTimeout:   DefaultUDPIdleTimeout,
	}
}

// Validate reports the first problem as an *invalid.Error naming the field
// ("Listener.MaxConns" for one of Listener's), wrapping ErrConfig (and
// listener.ErrConfig for one of Listener's).
func (c Config) Validate() error {
	bad := func(field, format string, a ...any) error { return invalid.Field(ErrConfig, field, format, a...) }
	if _, err := balance.New(c.Balance); err != nil {
		return bad("Balance", "balance %q: want %s", c.Balance, strings.Join(balance.Names, ", "))
	}
	switch {
	case len(c.Targets) == 0 && !c.Discovered:
		return bad("Targets", "no targets")
	case c.HashKey != HashIP && c.HashKey != HashIPPort:
		return bad("HashKey", "hash key %q: want ip, ip-port or ip+first:START:END", c.HashKey)
	case c.HashFirst.Offset < 0 || c.HashFirst.Length < 0 || c.HashFirst.Offset+c.HashFirst.Length > MaxHashFirstEnd:
		return bad("HashFirst", "hash key bytes %d..%d: want a range within the first %d bytes", c.HashFirst.Offset,
			c.HashFirst.Offset+c.HashFirst.Length, MaxHashFirstEnd)
	case c.HashKeyTimeout < 0 || c.HashKeyTimeout > MaxHashKeyTimeout:
		return bad("HashKeyTimeout", "hash key timeout %s: want 0 (the default) to %s", c.HashKeyTimeout, MaxHashKeyTimeout)
	case c.HashOn != "" && c.HashOn != "addr" && c.HashOn != "host":
		return bad("HashOn", "hash on %q: want addr or host", c.HashOn)
	case c.ConnectTimeout <= 0:
		return bad("ConnectTimeout", "connect timeout %s must be positive", c.ConnectTimeout)
	case c.DrainTimeout <= 0 || c.DrainTimeout > invalid.MaxTimeout:
		return bad("DrainTimeout", "drain timeout %s: want more than 0, at most %s", c.DrainTimeout, invalid.MaxTimeout)
	case c.ConnectRetries < 0 || c.ConnectRetries > MaxRetries:
		return bad("ConnectRetries", "%d connect retries: want 0..%d", c.ConnectRetries, MaxRetries)
	case c.MaxFails < 0 || c.MaxFails > MaxRetries:
		return bad("MaxFails", "%d failures in a row: want 0..%d", c.MaxFails, MaxRetries)
	case c.FailTimeout < 0:
		return bad("FailTimeout", "fail timeout %s must not be negative", c.FailTimeout)
	case c.IdleTimeout < 0:
		return bad("IdleTimeout", "idle timeout %s must not be negative (0: no limit)", c.IdleTimeout)
	case c.HalfCloseTimeout < 0:
		return bad("HalfCloseTimeout", "half-close timeout %s must not be negative (0: the idle timeout applies)", c.HalfCloseTimeout)
	case c.ParkAfter < 0:
		return bad("ParkAfter", "park delay %s must not be negative (0: never park)", c.ParkAfter)
	case c.KeepAlive < 0:
		return bad("KeepAlive", "keepalive %s must not be negative (0: off)", c.KeepAlive)
	case c.BackoffMax < MinBackoff:
		return bad("BackoffMax", "longest backoff %s: want at least %s (a shorter one spins on a dead target)", c.BackoffMax, MinBackoff)
	case c.BackoffInitial < MinBackoff || c.BackoffInitial > c.BackoffMax:
		return bad("BackoffInitial", "first backoff %s: want at least %s and at most the longest, %s", c.BackoffInitial, MinBackoff, c.BackoffMax)
	case c.EventLoops < 0 || c.EventLoops > MaxEventLoops:
		return bad("EventLoops", "%d event loops: want 0 (one per core) to %d", c.EventLoops, MaxEventLoops)
	case c.SendProxy != 0 && c.SendProxy != 1 && c.SendProxy != 2:
		return bad("SendProxy", "PROXY protocol version %d: want 1 or 2 (0: none)", c.SendProxy)
	}
	if c.UDP {
		if err := c.validateUDP(); err != nil {
			return err
		}
	}
	return invalid.In(ErrConfig, "Listener", c.Listener.Validate())
}

// validateUDP refuses what a UDP server cannot do.
func (c Config) validateUDP() error {
	bad := func(field, format string, a ...any) error { return invalid.Field(ErrConfig, field, format, a...) }
	l := c.Listener
	switch {
	case c.UDPIdleTimeout <= 0:
		return bad("UDPIdleTimeout", "UDP idle timeout %s must be positive (flows hold a socket each)", c.UDPIdleTimeout)
	case c.TLS != nil:
		return bad("TLS", "UDP flows cannot use TLS to the targets")
	case c.SendProxy != 0:
		return bad("SendProxy", "UDP flows cannot send PROXY headers")
	case l.TLS != nil:
		return bad("Listener.TLS", "a UDP listener cannot terminate TLS")
	case l.AcceptProxy || len(l.ProxyFrom) > 0:
		return bad("Listener.AcceptProxy", "a UDP listener cannot read PROXY headers")
	case l.MaxConnsPerSource != 0 || l.ConnRatePerSource != 0:
		return bad("Listener.MaxConnsPerSource", "per-source limits apply to TCP connections, not UDP flows")
	}
	return nil
}
