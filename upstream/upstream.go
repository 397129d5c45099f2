package upstream

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ndlb/ndlb/internal/mono"
)

// Target is one upstream address and its state. Its methods are safe for
// concurrent use.
type Target struct {
	// Addr is the target's host:port.
	Addr string

	group string // the target group (NDJSON routing); "" outside groups

	down     atomic.Bool
	lastUp   atomic.Int64 // when MarkUp was last called (mono); 0: never
	mu       sync.Mutex
	lastErr  error // guarded by mu
	lines    atomic.Uint64
	bytes    atomic.Uint64
	bytesIn  atomic.Uint64
	conns    atomic.Int64
	failures atomic.Uint64

	// Passive health (passthrough mode): failed attempts in a row, and
	// the time (mono; 0: none) until which the target is skipped.
	streak    atomic.Int64
	skipUntil atomic.Int64

	// See state.go.
	set       *Set         // the set that notifies on changes
	admin     atomic.Int32 // adminEnabled, adminDraining or adminDisabled
	checkDown atomic.Bool  // failed its active health checks
	removed   atomic.Bool  // left the configuration; draining until Prune
	weight    atomic.Int32 // 0 means 1
	lastCheck CheckResult  // guarded by mu
}

// Up reports whether the last dial or connection to the target succeeded. A
// target starts up.
func (t *Target) Up() bool { return !t.down.Load() }

// MarkUp records a successful dial and reports whether the target was down.
// A change wakes the set's WatchUp.
func (t *Target) MarkUp() bool {
	t.lastUp.Store(mono.Now())
	if !t.down.Swap(false) {
		return false
	}
	t.notifyUp()
	return true
}

// MarkDown records a failed dial or a failed connection and reports whether
// the target was up.
func (t *Target) MarkDown(err error) bool {
	t.failures.Add(1)
	t.mu.Lock()
	t.lastErr = err
	t.mu.Unlock()
	if t.down.Swap(true) {
		return false
	}
	t.notifyUp()
	return true
}

// DialFailed is MarkDown for a dial that began at started: a dial that
// began before the last successful one is stale news (it raced the
// target's return) and counts as a failure without marking the target
// down. It reports whether the target was up.
func (t *Target) DialFailed(err error, started time.Time) bool {
	if up := t.lastUp.Load(); up != 0 && mono.Of(started) < up {
		t.failures.Add(1)
		t.mu.Lock()
		t.lastErr = err
		t.mu.Unlock()
		return false
	}
	return t.MarkDown(err)
}

// Group is the target group the target belongs to (see Set.UpdateGroups);
// "" for a set without groups.
func (t *Target) Group() string { return t.group }

// LastErr returns the error of the last failure, or nil.
func (t *Target) LastErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastErr
}

// AttemptFailed records a failed connection attempt (passthrough mode). After
// maxFails failures in a row the target is skipped until now+failTimeout;
// AttemptFailed reports whether this failure started such a period. A target
// tried again after its period and failing again is skipped again at once.
func (t *Target) AttemptFailed(err error, now time.Time, maxFails int, failTimeout time.Duration) bool {
	t.MarkDown(err)
	if maxFails <= 0 || t.streak.Add(1) < int64(maxFails) {
		return false
	}
	was := t.Skipped(now)
	t.skipUntil.Store(mono.Of(now) + int64(failTimeout))
	return !was
}

// AttemptSucceeded records a successful connection attempt and reports
// whether the target had been down.
func (t *Target) AttemptSucceeded() bool {
	t.streak.Store(0)
	t.skipUntil.Store(0)
	return t.MarkUp()
}

// Skipped reports whether passive health check excludes the target at now.
func (t *Target) Skipped(now time.Time) bool {
	until := t.skipUntil.Load()
	return until != 0 && mono.Of(now) < until
}

// Active is the number of the target's open connections.
func (t *Target) Active() int64 { return t.conns.Load() }

// Delivered counts lines and bytes the target acknowledged.
func (t *Target) Delivered(lines, bytes int) {
	t.lines.Add(uint64(lines))
	t.bytes.Add(uint64(bytes))
}

// Received counts bytes the target sent (passthrough mode).
func (t *Target) Received(bytes int) { t.bytesIn.Add(uint64(bytes)) }

// ConnOpened and ConnClosed track the target's open connections: worker
// connections in NDJSON mode, proxied ones in passthrough mode.
func (t *Target) ConnOpened() { t.conns.Add(1) }

// ConnClosed is the pair of ConnOpened.
func (t *Target) ConnClosed() { t.conns.Add(-1) }

// Stats is a snapshot of a target's state and counters.
type Stats struct {
	Addr     string
	Group    string // the target group; "" outside groups
	State    State
	Removed  bool   // left the configuration; draining
	Weight   int    // share relative to the other targets
	Up       bool   // the last dial or connection succeeded
	Lines    uint64 // lines acknowledged (NDJSON mode)
	Bytes    uint64 // bytes sent: acknowledged in NDJSON mode, forwarded in passthrough
	BytesIn  uint64 // bytes the target sent (passthrough mode)
	Conns    int64  // open connections
	Failures uint64 // failed dials and connections
}

// Stats returns a snapshot of the target's counters.
func (t *Target) Stats() Stats {
	return Stats{
		Addr: t.Addr, Group: t.group, State: t.State(), Removed: t.Removed(), Weight: t.Weight(), Up: t.Up(), Lines: t.lines.Load(), Bytes: t.bytes.Load(), BytesIn: t.bytesIn.Load(),
		Conns: t.conns.Load(), Failures: t.failures.Load(),
	}
}

// Set is the list of targets. Targets may be added, drained and removed
// while it is in use (see Update); readers take a snapshot with Targets.
type Set struct {
	setFields
}

// NewSet returns a set of the given addresses, in order.
func NewSet(addrs []string) *Set {
	s := &Set{}
	s.watch, s.watchUp = make(chan struct{}), make(chan struct{})
	empty := []*Target{}
	s.targets.Store(&empty)
	s.Update(addrs)
	return s
}

// Targets returns a snapshot of the targets: configured ones in
// configuration order, then removed ones still draining. The slice must
// not be modified.
func (s *Set) Targets() []*Target { return *s.targets.Load() }

// Stats returns each target's counters, in configuration order.
func (s *Set) Stats() []Stats {
	targets := s.Targets()
	out := make([]Stats, 0, len(targets))
	for _, t := range targets {
		out = append(out, t.Stats())
	}
	return out
}

// FailoverOrder returns every target of home's group that accepts new work
// (see Accepts) except prev, for a worker whose home is home and whose
// connection to prev failed (prev may be nil): home first if it is up, then
// the other up targets in random order, then the down ones in random order,
// and prev last.
func (s *Set) FailoverOrder(home, prev *Target) []*Target {
	targets := s.Targets()
	var up, down []*Target
	for _, t := range targets {
		switch {
		case !t.Accepts() || t.group != home.group:
		case t == prev || t == home:
		case t.Up():
			up = append(up, t)
		default:
			down = append(down, t)
		}
	}
	rand.Shuffle(len(up), func(i, j int) { up[i], up[j] = up[j], up[i] })
	rand.Shuffle(len(down), func(i, j int) { down[i], down[j] = down[j], down[i] })
	order := make([]*Target, 0, len(targets))
	homeOK := home != prev && home.Accepts()
	if homeOK && home.Up() {
		order = append(order, home)
	}
	order = append(order, up...)
	if homeOK && !home.Up() {
		order = append(order, home)
	}
	order = append(order, down...)
	if prev != nil && prev.Accepts() {
		order = append(order, prev)
	}
	return order
}
