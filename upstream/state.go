package upstream

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// State is a target's state, as both modes and the admin API see it.
type State int32

// The states. A target is in exactly one, decided in this order: an
// operator's disable or drain first, then failed health checks.
const (
	// StateUp takes new connections and batches.
	StateUp State = iota
	// StateDown failed its health checks (active, or passive: its last
	// dial or connection failed). New work avoids it while others are up.
	StateDown
	// StateDraining takes no new connections or batches; existing ones
	// finish. Operators drain a target before maintenance, and targets that
	// leave the configuration or DNS are drained.
	StateDraining
	// StateDisabled is taken out by an operator: no new work at all.
	StateDisabled
)

var stateNames = [...]string{"up", "down", "draining", "disabled"}

// String returns the state's name, as logs and the admin API show it.
func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return fmt.Sprintf("State(%d)", int32(s))
	}
	return stateNames[s]
}

// MarshalText implements encoding.TextMarshaler.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Operator modes of a target (Target.admin).
const (
	adminEnabled int32 = iota
	adminDraining
	adminDisabled
)

// ErrUnknownTarget is returned for an address not in the set.
var ErrUnknownTarget = errors.New("no such target")

// State returns the target's state.
func (t *Target) State() State {
	switch t.admin.Load() {
	case adminDisabled:
		return StateDisabled
	case adminDraining:
		return StateDraining
	}
	if t.checkDown.Load() || t.down.Load() {
		return StateDown
	}
	return StateUp
}

// Accepts reports whether new work may go to the target: it is neither
// draining nor disabled, and has not failed its active health checks. A
// target that is down only because its last dial failed still accepts:
// trying it is how it is found up again.
func (t *Target) Accepts() bool {
	return t.admin.Load() == adminEnabled && !t.checkDown.Load()
}

// FailsChecks reports whether the target's last health verdict failed.
func (t *Target) FailsChecks() bool { return t.checkDown.Load() }

// Removed reports whether the target has left the configuration (it drains
// until its last connection closes, then leaves the set).
func (t *Target) Removed() bool { return t.removed.Load() }

func (t *Target) setAdmin(mode int32) (changed bool) {
	if t.admin.Swap(mode) == mode {
		return false
	}
	t.notify()
	return true
}

// Drain stops new work going to the target; existing connections finish.
// It reports whether the state changed.
func (t *Target) Drain() bool { return t.setAdmin(adminDraining) }

// Disable takes the target out. It reports whether the state changed.
func (t *Target) Disable() bool { return t.setAdmin(adminDisabled) }

// Enable undoes Drain and Disable. It reports whether the state changed. A
// target that left the configuration cannot be enabled.
func (t *Target) Enable() bool {
	if t.removed.Load() {
		return false
	}
	return t.setAdmin(adminEnabled)
}

// CheckResult is the outcome of one active health check.
type CheckResult struct {
	At  time.Time
	Err error // nil: passed
}

// SetChecked records an active health check and, when the checker has seen
// enough in a row (rise or fall), the verdict. It reports whether the
// verdict changed the target's state.
func (t *Target) SetChecked(r CheckResult, verdict, decided bool) bool {
	// The verdict first: whoever sees this check also sees its effect.
	changed := decided && t.checkDown.Swap(!verdict) != !verdict
	t.mu.Lock()
	t.lastCheck = r
	if r.Err != nil {
		t.lastErr = r.Err
	}
	t.mu.Unlock()
	if changed {
		t.notify()
	}
	return changed
}

// LastCheck returns the last active health check, or the zero value.
func (t *Target) LastCheck() CheckResult {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastCheck
}

// notify tells the set's watchers that a state changed.
func (t *Target) notify() {
	if s := t.set; s != nil {
		s.changed()
	}
}

// Watch returns a channel that is closed at the next change of the set: a
// target added, removed, or changing state through Drain, Disable, Enable or
// a health verdict. Passive dial results do not count.
func (s *Set) Watch() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watch
}

// WatchUp returns a channel that is closed at the next time a target's
// passive state flips (MarkUp after MarkDown, or the reverse): what a dial
// or a connection found, which Watch does not report.
func (s *Set) WatchUp() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watchUp
}

// notifyUp wakes WatchUp.
func (t *Target) notifyUp() {
	if s := t.set; s != nil {
		s.mu.Lock()
		close(s.watchUp)
		s.watchUp = make(chan struct{})
		s.mu.Unlock()
	}
}

func (s *Set) changed() {
	s.mu.Lock()
	close(s.watch)
	s.watch = make(chan struct{})
	s.mu.Unlock()
}

// Lookup returns the target with address addr.
func (s *Set) Lookup(addr string) (*Target, error) {
	for _, t := range s.Targets() {
		if t.Addr == addr {
			return t, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", ErrUnknownTarget, addr)
}

// MaxWeight bounds a target's weight.
const MaxWeight = 256

// ErrSpec is wrapped by ParseSpec's errors.
var ErrSpec = errors.New("invalid target")

// ParseSpec splits a target spec, "host:port" or "host:port=weight", into
// the address and the weight (1 when absent).
func ParseSpec(spec string) (addr string, weight int, err error) {
	addr, w, found := strings.Cut(spec, "=")
	weight = 1
	if found {
		if weight, err = strconv.Atoi(w); err != nil || weight < 1 || weight > MaxWeight {
			return "", 0, fmt.Errorf("%w %q: weight must be 1..%d", ErrSpec, spec, MaxWeight)
		}
	}
	return addr, weight, nil
}

// Weight is the target's share relative to the others (default 1).
func (t *Target) Weight() int {
	if w := t.weight.Load(); w > 0 {
		return int(w)
	}
	return 1
}

// Update makes specs ("host:port" or "host:port=weight", see ParseSpec)
// the configured targets, in that order: new addresses are added (up),
// weights are set, and targets not in specs are drained and marked
// removed; they stay in the set until Prune finds them without
// connections. A removed target that comes back is enabled again and
// reported as added. A spec
// that does not parse is taken as an address of weight 1 (callers validate
// first). Update returns the targets added and removed.
func (s *Set) Update(specs []string) (added, removed []*Target) {
	return s.update1(specs, nil)
}

// Group is one named group of targets, for UpdateGroups.
type Group struct {
	Name  string
	Specs []string // as Update takes them
}

// UpdateGroups is Update for a set whose targets are in groups (NDJSON
// routing): every group's specs, each target labelled with its group's
// name (Target.Group). An address listed in two groups belongs to the
// first (callers validate first). A target's group is fixed when it is
// added: a set whose groups change is replaced, not updated.
func (s *Set) UpdateGroups(groups []Group) (added, removed []*Target) {
	var specs []string
	groupOf := map[string]string{}
	for _, g := range groups {
		for _, spec := range g.Specs {
			a, _, err := ParseSpec(spec)
			if err != nil {
				a = spec
			}
			if _, dup := groupOf[a]; !dup {
				groupOf[a] = g.Name
			}
			specs = append(specs, spec)
		}
	}
	return s.update1(specs, groupOf)
}

func (s *Set) update1(specs []string, groupOf map[string]string) (added, removed []*Target) {
	s.update.Lock()
	defer s.update.Unlock()
	old := s.Targets()
	next := make([]*Target, 0, len(specs)+len(old))
	addrs := make([]string, 0, len(specs))
	reweighted := false
	for _, spec := range specs {
		a, w, err := ParseSpec(spec)
		if err != nil {
			a, w = spec, 1
		}
		if slices.Contains(addrs, a) {
			continue // listed twice (by two DNS names, say): the first wins
		}
		addrs = append(addrs, a)
		i := slices.IndexFunc(old, func(t *Target) bool { return t.Addr == a })
		if i < 0 {
			t := &Target{Addr: a, set: s, group: groupOf[a]}
			t.weight.Store(int32(w))
			if v, ok := s.failed[a]; ok {
				// Gone and back (a config edit, a name's answer that
				// flickered): it failed its checks when it left, and
				// stays down until they pass again.
				delete(s.failed, a)
				if time.Since(v.left) < rememberFailed {
					t.checkDown.Store(true)
					t.lastCheck = v.check
				}
			}
			next = append(next, t)
			added = append(added, t)
			continue
		}
		t := old[i]
		if t.removed.Swap(false) {
			// Back before it was pruned: it is added again, and its
			// workers and checks must start again.
			t.admin.Store(adminEnabled)
			added = append(added, t)
		}
		if t.Weight() != w {
			t.weight.Store(int32(w))
			reweighted = true
		}
		next = append(next, t)
	}
	for _, t := range old {
		if slices.Contains(addrs, t.Addr) {
			continue
		}
		if !t.removed.Swap(true) {
			t.admin.Store(adminDraining)
			removed = append(removed, t)
		}
		next = append(next, t) // draining until Prune
	}
	s.targets.Store(&next)
	if len(added)+len(removed) > 0 || reweighted {
		s.changed()
	}
	return added, removed
}

// Prune drops removed targets that have no open connection left, and
// returns them.
func (s *Set) Prune() []*Target {
	s.update.Lock()
	defer s.update.Unlock()
	old := s.Targets()
	var gone []*Target
	now := time.Now()
	for a, v := range s.failed {
		if now.Sub(v.left) >= rememberFailed {
			delete(s.failed, a)
		}
	}
	next := slices.DeleteFunc(slices.Clone(old), func(t *Target) bool {
		if t.removed.Load() && t.Active() == 0 {
			gone = append(gone, t)
			if t.FailsChecks() && len(s.failed) < maxRememberedFailed {
				if s.failed == nil {
					s.failed = map[string]failedTarget{}
				}
				s.failed[t.Addr] = failedTarget{check: t.LastCheck(), left: now}
			}
			return true
		}
		return false
	})
	if len(gone) > 0 {
		s.targets.Store(&next)
		s.changed()
	}
	return gone
}

// ForgetVerdicts forgets the failed checks of targets that left the set
// (the checks were turned off: no verdict holds).
func (s *Set) ForgetVerdicts() {
	s.update.Lock()
	defer s.update.Unlock()
	clear(s.failed)
}

// rememberFailed is how long the set remembers that a target failed its
// checks when it left, for the target's return; maxRememberedFailed
// bounds how many it remembers.
const (
	rememberFailed      = 10 * time.Minute
	maxRememberedFailed = 4096
)

// failedTarget is what the set remembers of a target that left while it
// failed its checks.
type failedTarget struct {
	check CheckResult
	left  time.Time
}

// setFields are the Set's fields for dynamic membership, kept here beside
// their methods.
type setFields struct {
	targets atomic.Pointer[[]*Target] // copy on write
	update  sync.Mutex                // serialises Update and Prune
	failed  map[string]failedTarget   // targets pruned while failing checks; guarded by update
	mu      sync.Mutex
	watch   chan struct{} // closed at the next change; guarded by mu
	watchUp chan struct{} // closed at the next up/down flip; guarded by mu
}
