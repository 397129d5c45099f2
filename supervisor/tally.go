package supervisor

import (
	"slices"
	"sync"

	"github.com/ndlb/ndlb/upstream"
)

// tally keeps the admin API's target counts going across the instances
// of a listener, as internal/carry does for the metrics: a reload that
// replaces a listener starts a new target set counting from zero while
// the old instance drains with its own. A target's counts are then those
// of every running instance's set plus what the stopped ones counted,
// so lines_out never falls back (and the status page's rates stay
// true) while the process runs.
type tally struct {
	mu   sync.Mutex
	live map[string][]*upstream.Set        // by listener name
	base map[string]map[string]targetCount // by name, then address: stopped instances'
}

// targetCount is what a target's counters hold.
type targetCount struct{ lines, bytes, bytesIn, failures uint64 }

func countOf(st upstream.Stats) targetCount {
	return targetCount{st.Lines, st.Bytes, st.BytesIn, st.Failures}
}

func (c *targetCount) add(o targetCount) {
	c.lines += o.lines
	c.bytes += o.bytes
	c.bytesIn += o.bytesIn
	c.failures += o.failures
}

func newTally() *tally {
	return &tally{live: make(map[string][]*upstream.Set), base: make(map[string]map[string]targetCount)}
}

// start counts set among the running instances of listener name.
func (t *tally) start(name string, set *upstream.Set) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.live[name] = append(t.live[name], set)
}

// stop takes set, whose instance has stopped, out of the running ones and
// keeps its counts, for the addresses another running set of the listener
// still has (a removed listener's, or a target that left, are forgotten).
func (t *tally) stop(name string, set *upstream.Set) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := slices.Index(t.live[name], set)
	if i < 0 {
		return
	}
	t.live[name] = slices.Delete(t.live[name], i, i+1)
	base := t.base[name]
	if base == nil {
		base = make(map[string]targetCount)
	}
	for _, tg := range set.Targets() {
		c := base[tg.Addr]
		c.add(countOf(tg.Stats()))
		base[tg.Addr] = c
	}
	keep := map[string]bool{}
	for _, s := range t.live[name] {
		for _, tg := range s.Targets() {
			keep[tg.Addr] = true
		}
	}
	for addr := range base {
		if !keep[addr] {
			delete(base, addr)
		}
	}
	if len(t.live[name]) == 0 {
		delete(t.live, name)
		delete(t.base, name)
		return
	}
	t.base[name] = base
}

// total is st, a target of set, with the counts of the same address in
// the listener's other running sets and in its stopped ones, and the
// connections open in the running ones.
func (t *tally) total(name string, set *upstream.Set, st upstream.Stats) upstream.Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := countOf(st)
	c.add(t.base[name][st.Addr])
	for _, s := range t.live[name] {
		if s == set {
			continue
		}
		for _, tg := range s.Targets() {
			if tg.Addr == st.Addr {
				o := tg.Stats()
				c.add(countOf(o))
				st.Conns += o.Conns // a draining instance's are open too
			}
		}
	}
	st.Lines, st.Bytes, st.BytesIn, st.Failures = c.lines, c.bytes, c.bytesIn, c.failures
	return st
}
