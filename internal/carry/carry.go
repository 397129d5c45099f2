package carry

import (
	"context"
	"maps"
	"slices"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/embedded"
)

// Group reports, through one callback, what its live sources observe, and
// keeps its counters continuous across them: a counter's value is what
// the live sources observe plus what the sources removed before them had
// counted, for the same instrument and attributes.
//
// A listener replaced by a reload is the case it is for: the replacement
// counts from zero, the old instance drains beside it, and then goes.
// Reported apart, their counters would fall back when the old one left;
// through a Group they go on from where the pair stood.
type Group struct {
	carried map[metric.Observable]bool
	latest  map[metric.Observable]bool

	// mu guards sources, base, fbase and live. It is held while sources
	// observe, so that a removal and a collection never overlap.
	mu      sync.Mutex
	sources []*Source
	// counted by removed sources, by instrument and attributes
	base  map[key[metric.Int64Observable]]int64
	fbase map[key[metric.Float64Observable]]float64
	live  int // keys the last collection or prune found
}

var (
	_ metric.Observer     = (*collector)(nil)
	_ metric.Registration = (*Source)(nil)
)

// Instruments are a Group's instruments, by how the observations of
// several live sources with the same attributes make one.
type Instruments struct {
	// Counters are cumulative: the live sources' sum, plus what removed
	// sources had counted.
	Counters []metric.Observable
	// Sums are how much there is now (connections open, bytes queued):
	// the live sources' sum.
	Sums []metric.Observable
	// Latest are settings and states: the newest live source's value.
	Latest []metric.Observable
}

// key is an instrument (I: metric.Int64Observable or
// metric.Float64Observable) and a set of attributes.
type key[I comparable] struct {
	inst  I
	attrs attribute.Distinct
}

// New registers with m one callback that reports the observations of the
// group's sources. An instrument a source observes that is not in in is
// dropped by the SDK.
func New(m metric.Meter, in Instruments) (*Group, error) {
	g := &Group{carried: make(map[metric.Observable]bool), latest: make(map[metric.Observable]bool),
		base: make(map[key[metric.Int64Observable]]int64), fbase: make(map[key[metric.Float64Observable]]float64)}
	var all []metric.Observable
	for _, c := range in.Counters {
		g.carried[c] = true
		all = append(all, c)
	}
	for _, l := range in.Latest {
		g.latest[l] = true
	}
	all = append(append(all, in.Sums...), in.Latest...)
	if _, err := m.RegisterCallback(g.report, all...); err != nil {
		return nil, err
	}
	return g, nil
}

// Add makes observe a source of the group until the returned registration
// is unregistered. observe must not block; it is called with the group's
// lock held, once per collection.
func (g *Group) Add(observe func(metric.Observer)) *Source {
	s := &Source{g: g, observe: observe}
	g.mu.Lock()
	g.sources = append(g.sources, s)
	g.mu.Unlock()
	return s
}

// report is the group's callback.
func (g *Group) report(_ context.Context, o metric.Observer) error {
	g.mu.Lock()
	c := g.collect()
	g.prune(c)
	emit(c.ints, g.base, g.carried, c.sets, o.ObserveInt64)
	emit(c.floats, g.fbase, g.carried, c.sets, o.ObserveFloat64)
	g.mu.Unlock()
	return nil
}

// emit observes each of cur's values with o, a counter's with its base
// added.
func emit[I interface {
	comparable
	metric.Observable
}, V int64 | float64](cur, base map[key[I]]V, carried map[metric.Observable]bool, sets map[attribute.Distinct]attribute.Set,
	o func(I, V, ...metric.ObserveOption)) {
	for k, v := range cur {
		if carried[k.inst] {
			v += base[k]
		}
		o(k.inst, v, metric.WithAttributeSet(sets[k.attrs]))
	}
}

// collect has every live source observe. Called with g.mu held.
func (g *Group) collect() *collector {
	c := g.newCollector()
	for _, s := range g.sources {
		s.observe(c)
	}
	return c
}

// remove takes s out of the group, adding its counters' last values to
// the base. Base entries no live source observes any longer (a removed
// listener's, a target gone from every set) are forgotten at the next
// collection, or here once the base has grown well past what was last
// reported: the base stays about as large as what is reported, and a
// removal observes only the source it removes.
func (g *Group) remove(s *Source) {
	g.mu.Lock()
	defer g.mu.Unlock()
	i := slices.Index(g.sources, s)
	if i < 0 {
		return // removed already
	}
	last := g.newCollector()
	s.observe(last)
	fold(g.base, last.ints, g.carried)
	fold(g.fbase, last.floats, g.carried)
	g.sources = slices.Delete(g.sources, i, i+1)
	if len(g.base)+len(g.fbase) > 2*g.live+256 {
		g.prune(g.collect())
	}
}

// prune forgets the base entries c, every live source's observations,
// does not have. Called with g.mu held.
func (g *Group) prune(c *collector) {
	maps.DeleteFunc(g.base, func(k key[metric.Int64Observable], _ int64) bool { _, ok := c.ints[k]; return !ok })
	maps.DeleteFunc(g.fbase, func(k key[metric.Float64Observable], _ float64) bool { _, ok := c.floats[k]; return !ok })
	g.live = len(c.ints) + len(c.floats)
}

// fold adds to base the counters' values in last.
func fold[I interface {
	comparable
	metric.Observable
}, V int64 | float64](base, last map[key[I]]V, carried map[metric.Observable]bool) {
	for k, v := range last {
		if carried[k.inst] {
			base[k] += v
		}
	}
}

func (g *Group) newCollector() *collector {
	return &collector{latest: g.latest, ints: make(map[key[metric.Int64Observable]]int64),
		floats: make(map[key[metric.Float64Observable]]float64), sets: make(map[attribute.Distinct]attribute.Set)}
}

// Source is one member of a Group, reporting until unregistered.
type Source struct {
	embedded.Registration
	g       *Group
	observe func(metric.Observer)
}

// Unregister ends s's reports; its counters' last values stay in the
// group's (see Group). It is safe to call more than once.
func (s *Source) Unregister() error {
	s.g.remove(s)
	return nil
}

// collector is the Observer the sources observe into, one after another
// in the order they were added: it sums what they observe by instrument
// and attributes, or keeps the last for the latest instruments.
type collector struct {
	embedded.Observer
	latest map[metric.Observable]bool
	ints   map[key[metric.Int64Observable]]int64
	floats map[key[metric.Float64Observable]]float64
	sets   map[attribute.Distinct]attribute.Set
}

func (c *collector) attrs(opts []metric.ObserveOption) attribute.Distinct {
	set := metric.NewObserveConfig(opts).Attributes()
	d := set.Equivalent()
	if _, ok := c.sets[d]; !ok {
		c.sets[d] = set
	}
	return d
}

// ObserveInt64 adds v to what inst has with those attributes, or sets it.
func (c *collector) ObserveInt64(inst metric.Int64Observable, v int64, opts ...metric.ObserveOption) {
	merge(c.ints, key[metric.Int64Observable]{inst, c.attrs(opts)}, v, c.latest[inst])
}

// ObserveFloat64 adds v to what inst has with those attributes, or sets it.
func (c *collector) ObserveFloat64(inst metric.Float64Observable, v float64, opts ...metric.ObserveOption) {
	merge(c.floats, key[metric.Float64Observable]{inst, c.attrs(opts)}, v, c.latest[inst])
}

// merge adds v to m[k], or sets it (latest).
func merge[K comparable, V int64 | float64](m map[K]V, k K, v V, latest bool) {
	if latest {
		m[k] = v
	} else {
		m[k] += v
	}
}
