package supervisor

import (
	"slices"
	"sync"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/upstream"
)

// tally keeps the admin API's counts of targets and client connections
// going across the instances of a listener, as internal/carry does for
// the metrics: a reload that replaces a listener starts a new instance
// counting from zero while the old one drains with its own. A count is
// then that of every running instance plus what the stopped ones
// counted, so lines_out and accepted_connections never fall back (and
// the status page's rates stay true) while the process runs.
type tally struct {
	mu       sync.Mutex
	live     map[string][]*instance            // by listener name
	base     map[string]map[string]targetCount // by name, then address: stopped instances'
	accepted map[string]uint64                 // by name: stopped instances'
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
	return &tally{live: make(map[string][]*instance), base: make(map[string]map[string]targetCount),
		accepted: make(map[string]uint64)}
}

// start counts in among the running instances of its listener.
func (t *tally) start(in *instance) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.live[in.name] = append(t.live[in.name], in)
}

// stop takes in, which has stopped, out of the running instances and
// keeps its counts: its targets' for the addresses another running
// instance of the listener still has (a removed listener's, or a target
// that left, are forgotten), and its connections'.
func (t *tally) stop(in *instance) {
	t.mu.Lock()
	defer t.mu.Unlock()
	name := in.name
	i := slices.Index(t.live[name], in)
	if i < 0 {
		return
	}
	t.live[name] = slices.Delete(t.live[name], i, i+1)
	t.accepted[name] += in.mode.Info(in.srv, name, "", nil).Accepted
	base := t.base[name]
	if base == nil {
		base = make(map[string]targetCount)
	}
	for _, tg := range in.srv.Set().Targets() {
		c := base[tg.Addr]
		c.add(countOf(tg.Stats()))
		base[tg.Addr] = c
	}
	keep := map[string]bool{}
	for _, o := range t.live[name] {
		for _, tg := range o.srv.Set().Targets() {
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
		delete(t.accepted, name)
		return
	}
	t.base[name] = base
}

// listener is info, in's, with the connections of the listener's other
// running instances (open and accepted) and of its stopped ones
// (accepted).
func (t *tally) listener(in *instance, info admin.ListenerInfo) admin.ListenerInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	info.Accepted += t.accepted[in.name]
	for _, o := range t.live[in.name] {
		if o != in {
			oi := o.mode.Info(o.srv, o.name, "", nil)
			info.Accepted += oi.Accepted
			info.Active += oi.Active
		}
	}
	return info
}

// total is st, a target of in's set, with the counts of the same address
// in the listener's other running instances and in its stopped ones, and
// the connections open in the running ones.
func (t *tally) total(in *instance, st upstream.Stats) upstream.Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := countOf(st)
	c.add(t.base[in.name][st.Addr])
	for _, o := range t.live[in.name] {
		if o == in {
			continue
		}
		for _, tg := range o.srv.Set().Targets() {
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
