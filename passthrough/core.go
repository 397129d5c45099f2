package passthrough

import (
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/jonboulle/clockwork"

	"github.com/ndlb/ndlb/balance"
	"github.com/ndlb/ndlb/upstream"
)

// core is what the TCP and the UDP server share: the config, the targets,
// the balancing policy and passive health.
type core struct {
	cfg    Config
	log    *slog.Logger
	clock  clockwork.Clock
	policy atomic.Pointer[policyBox] // swapped by SetBalance
	set    *upstream.Set
	// attrCache holds each target's metric attribute sets (*targetOpts).
	attrCache sync.Map
}

// init validates cfg, fills its defaults and sets c up.
func (c *core) init(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	c.cfg, c.log, c.clock, c.set = cfg, cfg.Logger, cfg.Clock, upstream.NewSet(cfg.Targets)
	return c.SetBalance(cfg.Balance) // checked by Validate

}

// policyBox holds a policy for atomic.Pointer.
type policyBox struct {
	name string
	p    balance.Policy
}

// SetBalance switches the balancing policy for new connections (or flows);
// open ones keep their target.
func (s *core) SetBalance(name string) error {
	p, err := balance.New(name)
	if err != nil {
		return err
	}
	if _, ok := p.(balance.Hash); ok && s.cfg.HashOn == "host" {
		p = balance.Hash{OnHost: true}
	}
	s.policy.Store(&policyBox{name: name, p: p})
	return nil
}

// Balance is the name of the balancing policy.
func (s *core) Balance() string { return s.policy.Load().name }

// Set is the server's target set, for the admin API and health checks.
func (s *core) Set() *upstream.Set { return s.set }

// Targets returns each target's counters, in configuration order.
func (s *core) Targets() []upstream.Stats { return s.set.Stats() }

// pruneAttrs forgets the cached metric attributes of targets that left the
// set, so DNS churn cannot grow the cache.
func (s *core) pruneAttrs() {
	targets := s.set.Targets()
	s.attrCache.Range(func(k, _ any) bool {
		if !slices.Contains(targets, k.(*upstream.Target)) {
			s.attrCache.Delete(k)
		}
		return true
	})
}

// errNoneAccepts is the last error of a round without candidates.
var errNoneAccepts = errors.New("every target is draining, disabled or failing its health checks")

// attemptFailed records a failed attempt on t for passive health.
func (s *core) attemptFailed(t *upstream.Target, err error) {
	if localFailure(err) {
		return // ndlb's own shortage, not the target's doing
	}
	if t.AttemptFailed(err, s.clock.Now(), s.cfg.MaxFails, s.cfg.FailTimeout) {
		s.log.Warn("target skipped: its last attempts failed", "target", t.Addr,
			"max_fails", s.cfg.MaxFails, "fail_timeout", s.cfg.FailTimeout, "err", err)
	}
}

// localShortages are the errors of an attempt that failed for want of
// something on ndlb's side: descriptors, buffer memory, local ports, epoll
// watches (ENOSPC).
var localShortages = []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL, syscall.ENOSPC}

// localFailure reports whether err is one of localShortages: passive
// health does not hold that against the target, which would take every
// target out of rotation in turn while the shortage lasts.
func localFailure(err error) bool {
	for _, e := range localShortages {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// attemptSucceeded records that t served a connection.
func (s *core) attemptSucceeded(t *upstream.Target) {
	if t.AttemptSucceeded() {
		s.log.Info("target serves connections again", "target", t.Addr)
	}
}

// candidates appends the targets to try, in the policy's order: those that
// accept new work (not draining, disabled or failing health checks) and are
// not skipped by passive health, or, when every accepting target is
// skipped, all accepting targets.
//
// The policy orders only those, so a policy that takes turns (round-robin,
// least connections' ties) spreads over them evenly: ordering every target
// and leaving some out after would give a left-out target's turns to the
// one after it in the list.
func (s *core) candidates(dst []int, targets []*upstream.Target, key []byte) []int {
	policy := s.policy.Load().p
	now := s.clock.Now()
	accepting, healthy := 0, 0
	for _, t := range targets {
		if t.Accepts() {
			accepting++
			if !t.Skipped(now) {
				healthy++
			}
		}
	}
	if healthy == len(targets) || accepting == 0 {
		if accepting == 0 {
			return dst
		}
		return policy.Order(dst, targets, key)
	}
	// Some take no new work (rare): order a list of the others.
	sub := make([]*upstream.Target, 0, len(targets))
	idx := make([]int, 0, len(targets))
	for i, t := range targets {
		if t.Accepts() && (healthy == 0 || !t.Skipped(now)) {
			sub, idx = append(sub, t), append(idx, i)
		}
	}
	if len(sub) == 0 { // their health changed since the count
		for i, t := range targets {
			if t.Accepts() {
				sub, idx = append(sub, t), append(idx, i)
			}
		}
	}
	base := len(dst)
	dst = policy.Order(dst, sub, key)
	for j := base; j < len(dst); j++ {
		dst[j] = idx[dst[j]]
	}
	return dst
}
