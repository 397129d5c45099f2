package pool

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/upstream"
)

// Defaults for Config; each field's doc says what it means.
const (
	// DefaultConnections is Config.Connections: workers per target.
	DefaultConnections = 4
	// MaxConnections is the largest Connections Validate accepts.
	MaxConnections = 1024
	// DefaultFailback is Config.Failback.
	DefaultFailback = 5 * time.Minute
	// DefaultConnectTimeout is Config.ConnectTimeout.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultWriteTimeout is Config.WriteTimeout.
	DefaultWriteTimeout = 15 * time.Second
	// DefaultUserTimeout is Config.UserTimeout (TCP_USER_TIMEOUT).
	DefaultUserTimeout = 10 * time.Second
	// MaxUserTimeout is the longest TCP_USER_TIMEOUT the kernel takes
	// (milliseconds in a 32-bit int).
	MaxUserTimeout = math.MaxInt32 * time.Millisecond
	// DefaultKeepAlive is Config.KeepAlive.
	DefaultKeepAlive = 15 * time.Second
	// DefaultBackoffInitial is Config.BackoffInitial.
	DefaultBackoffInitial = 100 * time.Millisecond
	// DefaultBackoffMax is Config.BackoffMax.
	DefaultBackoffMax = 5 * time.Second
	// MinBackoff is the shortest BackoffInitial and BackoffMax Validate
	// accepts.
	MinBackoff = time.Millisecond
	// DefaultAckInterval is Config.AckInterval.
	DefaultAckInterval = 2 * time.Millisecond
	// DefaultMaxWriteBytes is Config.MaxWriteBytes.
	DefaultMaxWriteBytes = 1 << 20
	// DefaultMaxWriteCount is Config.MaxWriteCount (well under IOV_MAX).
	DefaultMaxWriteCount = 256
)

// ErrConfig is wrapped by Config.Validate's errors.
var ErrConfig = errors.New("pool: invalid config")

// Dialer opens raw upstream connections. *net.Dialer satisfies it; tests
// inject refusals and stalls through it.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Config is the pool's behaviour. Start from DefaultConfig.
type Config struct {
	// Connections is the number of workers per target (at least 1).
	Connections int
	// Failback is how often a worker away from its home target tries it
	// again. Zero disables failback.
	Failback time.Duration
	// ConnectTimeout bounds one dial, TLS handshake included.
	ConnectTimeout time.Duration
	// WriteTimeout is how long a target may take no bytes of a write
	// before it is treated as failed. A slow target that takes some within
	// it gets another period for the rest, so a stalled one fails within
	// one to two of them (over TLS, each batch gets its own period).
	WriteTimeout time.Duration
	// UserTimeout is TCP_USER_TIMEOUT: how long written data may stay
	// unacknowledged before the kernel kills the connection. Linux applies
	// it to a shut receive window too (zero-window probes answered without
	// a window count as unacknowledged), so a receiver that keeps its
	// window shut this long fails even while it reads a little. Zero
	// leaves the system default (many minutes). Linux only.
	UserTimeout time.Duration
	// Name labels the pool's metrics and spans (ndlb.listener).
	Name string
	// KeepAlive is the idle time before TCP keepalive probes start.
	KeepAlive time.Duration
	// BackoffInitial and BackoffMax bound the wait between dial rounds.
	BackoffInitial, BackoffMax time.Duration
	// AckInterval is how often acknowledgement is sampled while written
	// batches wait for it.
	AckInterval time.Duration
	// MaxWriteBytes and MaxWriteCount bound one coalesced write.
	MaxWriteBytes, MaxWriteCount int
	// TLS, when set, returns the client TLS config for each new connection
	// (so rotated certificates are picked up). An empty ServerName is set
	// to the target's host.
	TLS func() (*tls.Config, error)
	// Encode, if set, turns a batch's lines into the bytes written to the
	// target (framer.EncodeOctet for octet-counted targets), appending
	// to dst. It must encode line by line (the encoding of lines is the
	// concatenation of each line's), so that after a failure the lines
	// the target acknowledged whole are found by their encoded length.
	Encode func(dst, data []byte) []byte
	// Lanes, if set, says which queue lanes the slot-th worker of home
	// takes batches from (routing by key, see package route). Nil: every
	// worker takes from the shared lane, lane 0.
	Lanes func(home *upstream.Target, slot int) Lanes

	// Dialer opens raw connections; nil means a net.Dialer with the
	// keepalive and TCP_USER_TIMEOUT settings above.
	Dialer Dialer
	// Clock drives backoff and failback; nil means the real clock.
	Clock clockwork.Clock
	// Logger receives the pool's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Lanes are the dispatch lanes one worker serves.
type Lanes struct {
	// Shared is the lane every worker of the target's group takes from.
	Shared int
	// Keyed, if not 0, is the worker's own lane: the messages of the keys
	// routed to this connection of its home target.
	Keyed int
	// Pinned keeps the worker on its home target: it never fails over
	// (the keys of a target that is down are routed to others instead),
	// and it dials its home again, with backoff, until it answers.
	Pinned bool
}

// DefaultConfig returns the documented defaults.
func DefaultConfig() Config {
	return Config{
		Connections:    DefaultConnections,
		Failback:       DefaultFailback,
		ConnectTimeout: DefaultConnectTimeout,
		WriteTimeout:   DefaultWriteTimeout,
		UserTimeout:    DefaultUserTimeout,
		KeepAlive:      DefaultKeepAlive,
		BackoffInitial: DefaultBackoffInitial,
		BackoffMax:     DefaultBackoffMax,
		AckInterval:    DefaultAckInterval,
		MaxWriteBytes:  DefaultMaxWriteBytes,
		MaxWriteCount:  DefaultMaxWriteCount,
	}
}

// Validate reports the first value out of range as an *invalid.Error
// naming the field, wrapping ErrConfig.
func (c Config) Validate() error {
	bad := func(field, format string, a ...any) error { return invalid.Field(ErrConfig, field, format, a...) }
	switch {
	case c.Connections < 1 || c.Connections > MaxConnections:
		return bad("Connections", "%d connections per target: want 1..%d", c.Connections, MaxConnections)
	case c.Failback < 0:
		return bad("Failback", "failback %s must not be negative", c.Failback)
	case c.ConnectTimeout < invalid.MinTimeout || c.ConnectTimeout > invalid.MaxTimeout:
		return bad("ConnectTimeout", "connect timeout %s: want %s to %s", c.ConnectTimeout, invalid.MinTimeout, invalid.MaxTimeout)
	case c.WriteTimeout < invalid.MinTimeout || c.WriteTimeout > invalid.MaxTimeout:
		return bad("WriteTimeout", "write timeout %s: want %s to %s (a shorter one fails healthy targets)", c.WriteTimeout, invalid.MinTimeout, invalid.MaxTimeout)
	case c.UserTimeout < 0 || c.UserTimeout > MaxUserTimeout:
		return bad("UserTimeout", "TCP user timeout %s: want 0 (the kernel's) to %s", c.UserTimeout, MaxUserTimeout)
	case c.KeepAlive < 0:
		return bad("KeepAlive", "keepalive %s must not be negative", c.KeepAlive)
	case c.BackoffMax < MinBackoff:
		return bad("BackoffMax", "longest backoff %s: want at least %s (a shorter one spins on a dead target)", c.BackoffMax, MinBackoff)
	case c.BackoffInitial < MinBackoff || c.BackoffInitial > c.BackoffMax:
		return bad("BackoffInitial", "first backoff %s: want at least %s and at most the longest, %s", c.BackoffInitial, MinBackoff, c.BackoffMax)
	case c.AckInterval <= 0:
		return bad("AckInterval", "acknowledgement interval %s must be positive", c.AckInterval)
	case c.MaxWriteBytes < 1:
		return bad("MaxWriteBytes", "write limit of %d bytes must be positive", c.MaxWriteBytes)
	case c.MaxWriteCount < 1:
		return bad("MaxWriteCount", "write limit of %d batches must be positive", c.MaxWriteCount)
	}
	return nil
}

// Stats are the pool's counters.
type Stats struct {
	Dials         uint64 // dial attempts
	DialFailures  uint64 // failed dial attempts
	ConnFailures  uint64 // connections that failed after being established
	Failovers     uint64 // connections made to a target other than home
	Failbacks     uint64 // returns to home after a failover
	RequeuedLines uint64 // lines handed back to the queue by failed connections
	// Resets counts connections given up with bytes unacknowledged,
	// closed with a reset so the target never sees a fragment and a FIN.
	Resets uint64
	// Writes and BatchesWritten count write calls and the batches they
	// carried: more batches than writes is coalescing at work.
	Writes, BatchesWritten uint64
}

type stats struct {
	dials, dialFailures, connFailures, failovers, failbacks, requeuedLines, resets atomic.Uint64
	writes, batchesWritten                                                         atomic.Uint64
}

// Pool runs the workers. Make one with New, then Run it.
type Pool struct {
	cfg   Config
	queue *dispatch.Queue
	set   *upstream.Set
	log   *slog.Logger
	clock clockwork.Clock
	dial  Dialer
	st    stats

	tel *telemetry

	mu      sync.Mutex
	staffed map[*upstream.Target]map[int]bool // the slots of the running workers, per home target; guarded by mu
	left    chan struct{}                     // a worker stopped: staffing may be short
}

// New returns a pool over set, taking batches from q. cfg must be valid.
func New(cfg Config, q *dispatch.Queue, set *upstream.Set) *Pool {
	p := &Pool{cfg: cfg, queue: q, set: set, log: cfg.Logger, clock: cfg.Clock, dial: cfg.Dialer, tel: newTelemetry(cfg.Name),
		left: make(chan struct{}, 1)}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.clock == nil {
		p.clock = clockwork.NewRealClock()
	}
	if p.dial == nil {
		p.dial = &net.Dialer{
			Timeout:         cfg.ConnectTimeout,
			KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: cfg.KeepAlive, Interval: 5 * time.Second, Count: 3},
			Control:         userTimeoutControl(cfg.UserTimeout),
		}
	}
	return p
}

// Run runs every worker until the queue is idle (its input closed and every
// batch delivered) or ctx is cancelled. On cancellation each worker hands its
// unacknowledged batches back to the queue before Run returns, so the caller
// can count what was left with dispatch.Queue.Discard. Targets added to the
// set while it runs get their workers; the workers of a removed target
// leave once their batches are acknowledged.
func (p *Pool) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		watch := p.set.Watch()
		p.startWorkers(ctx, &wg)
		select {
		case <-watch:
		case <-p.left: // a target removed and added back may need workers again
		case <-ctx.Done():
			return
		case <-p.queue.Idle():
			return
		}
	}
}

// maxWeightRatio bounds how many times Connections a heavy target gets.
const maxWeightRatio = 16

// startWorkers starts workers for each target (of the pool's groups) that has fewer than
// Connections × its weight relative to the lightest target (at most
// maxWeightRatio): a target of twice the weight takes batches on twice as
// many connections. When a weight goes down, the extra workers stay until
// the target leaves.
func (p *Pool) startWorkers(ctx context.Context, wg *sync.WaitGroup) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.staffed == nil {
		p.staffed = make(map[*upstream.Target]map[int]bool)
	}
	targets := p.set.Targets()
	lightest := upstream.MaxWeight
	for _, t := range targets {
		if !t.Removed() {
			lightest = min(lightest, t.Weight())
		}
	}
	for _, t := range targets {
		ratio := min(maxWeightRatio, (t.Weight()+lightest/2)/lightest)
		want := p.cfg.Connections * max(1, ratio)
		slots := p.staffed[t]
		if len(slots) >= want || t.Removed() {
			continue
		}
		if slots == nil {
			slots = map[int]bool{}
			p.staffed[t] = slots
		}
		// Each new worker takes the lowest free slot: slot 0 (the one
		// that writes a target's keyed lane, see Config.Lanes) is filled
		// again whichever worker left.
		for i := 0; len(slots) < want; i++ {
			if slots[i] {
				continue
			}
			slots[i] = true
			w := &worker{p: p, home: t, log: p.log.With("worker", fmt.Sprintf("%s#%d", t.Addr, i))}
			if p.cfg.Lanes != nil {
				w.lanes = p.cfg.Lanes(t, i)
			}
			wg.Go(func() {
				w.run(ctx)
				p.workerLeft(t, i)
			})
		}
	}
}

// workerLeft frees slot of t, forgets t once it has no worker, and lets
// Run look at the staffing again.
func (p *Pool) workerLeft(t *upstream.Target, slot int) {
	p.mu.Lock()
	if delete(p.staffed[t], slot); len(p.staffed[t]) == 0 {
		delete(p.staffed, t)
	}
	p.mu.Unlock()
	select {
	case p.left <- struct{}{}:
	default:
	}
}

// Stats returns the pool's counters.
func (p *Pool) Stats() Stats {
	return Stats{
		Dials: p.st.dials.Load(), DialFailures: p.st.dialFailures.Load(),
		ConnFailures: p.st.connFailures.Load(), Failovers: p.st.failovers.Load(),
		Failbacks: p.st.failbacks.Load(), RequeuedLines: p.st.requeuedLines.Load(),
		Resets: p.st.resets.Load(), Writes: p.st.writes.Load(), BatchesWritten: p.st.batchesWritten.Load(),
	}
}
