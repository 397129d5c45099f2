package listener

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// MaxSources bounds the table of client addresses (IPv4 addresses, IPv6
// /64s) that per-source limits keep. When it is full of addresses that all hold connections or spent
// their rate, a new address is served unlimited (and counted) rather than
// refused: the table cannot be used to lock everyone out.
const MaxSources = 100_000

// sources enforces Config.MaxConnsPerSource and Config.ConnRatePerSource.
type sources struct {
	maxConns int
	rate     rate.Limit
	burst    int

	mu        sync.Mutex
	m         map[netip.Addr]*source // guarded by mu
	fullUntil time.Time              // a sweep found nothing to forget: none again before; guarded by mu
}

// source is one client address's state.
type source struct {
	conns int
	lim   *rate.Limiter // nil without a rate limit
	last  time.Time     // of the last connection
}

func newSources(cfg Config) *sources {
	if cfg.MaxConnsPerSource <= 0 && cfg.ConnRatePerSource <= 0 {
		return nil
	}
	return &sources{maxConns: cfg.MaxConnsPerSource, rate: rate.Limit(cfg.ConnRatePerSource), burst: max(cfg.ConnRatePerSource, 1),
		m: make(map[netip.Addr]*source)}
}

// Why admit refused a connection.
const (
	overConns = "source_conns" // MaxConnsPerSource open already
	overRate  = "source_rate"  // ConnRatePerSource spent
)

// admit decides whether a new connection from addr is served; when it is,
// key is what release takes when it ends (invalid if it is not tracked).
func (s *sources) admit(addr net.Addr, now time.Time) (key netip.Addr, refused string, untracked bool) {
	if s == nil {
		return netip.Addr{}, "", false
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Addr{}, "", true
	}
	key = sourceKey(ap.Addr())
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[key]
	if e == nil {
		if len(s.m) >= MaxSources && (now.Before(s.fullUntil) || !s.sweep(now)) {
			return netip.Addr{}, "", true
		}
		e = &source{}
		if s.rate > 0 {
			e.lim = rate.NewLimiter(s.rate, s.burst)
		}
		s.m[key] = e
	}
	e.last = now
	switch {
	case s.maxConns > 0 && e.conns >= s.maxConns:
		return netip.Addr{}, overConns, false
	case e.lim != nil && !e.lim.AllowN(now, 1):
		return netip.Addr{}, overRate, false
	}
	e.conns++
	return key, "", false
}

// release ends a connection admit let in.
func (s *sources) release(key netip.Addr) {
	if s == nil || !key.IsValid() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[key]; e != nil && e.conns > 0 {
		e.conns--
	}
}

// sweep forgets addresses that hold no connection and whose rate has
// refilled (or that were last seen a minute ago); it reports whether room
// was made. Called with mu held, only when the table is full.
func (s *sources) sweep(now time.Time) bool {
	for k, e := range s.m {
		idle := e.lim == nil || e.lim.TokensAt(now) >= float64(s.burst) || now.Sub(e.last) > time.Minute
		if e.conns == 0 && idle {
			delete(s.m, k)
		}
	}
	if len(s.m) >= MaxSources {
		s.fullUntil = now.Add(time.Second) // a full sweep is costly: not on every connection
		return false
	}
	return true
}

// sourceKey is the source an address counts as: an IPv4 address, or the
// /64 an IPv6 one is in (one host commonly holds a whole /64, and would
// otherwise be a new source on every connection).
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is4() {
		return a
	}
	p, _ := a.WithZone("").Prefix(64)
	return p.Addr()
}

// size is how many addresses the table holds.
func (s *sources) size() int {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}
