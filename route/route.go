package route

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/time/rate"

	"github.com/ndlb/ndlb/balance"
	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/pool"
	"github.com/ndlb/ndlb/routekey"
	"github.com/ndlb/ndlb/upstream"
)

// DefaultMaxLoad is Config.MaxLoad.
const DefaultMaxLoad = 1.25

const (
	// window is how many keyed messages a group's load counts before its
	// counters are halved.
	window = 1 << 17
	// slack is how many messages past the bound a target may take, so
	// that a cold start (every count near zero) does not scatter keys.
	slack = 64
)

// ErrConfig is wrapped by Config.Validate's errors.
var ErrConfig = errors.New("route: invalid config")

// Group is one target group.
type Group struct {
	// Name names the group in logs, metrics and the admin API.
	Name string
	// Values are the exact key values whose messages go to the group, as
	// they are written in the message (a JSON string's raw bytes between
	// its quotes).
	Values []string
	// Default takes the messages whose value no group lists, and those
	// without the key. At most one group is the default.
	Default bool
	// Spread balances the group's messages as without routing (any
	// worker of the group takes any batch) instead of by Config.Key.
	Spread bool
	// Targets are the group's targets, as upstream.Set.Update takes them.
	Targets []string
}

// Config is what a Router routes by.
type Config struct {
	// Key picks a message's target in its group by rendezvous hashing of
	// its value. Nil: groups spread their messages.
	Key routekey.Extractor
	// GroupKey picks a message's group by its value; nil means Key.
	GroupKey routekey.Extractor
	// MaxLoad bounds the keyed messages a target takes, as a multiple of
	// its share (by weight) of its group's; past it a key's messages go to
	// its next choice. 0 turns the bound off; else at least 1.
	MaxLoad float64
	// Groups are the target groups; none means one group of every
	// target, balanced by Key.
	Groups []Group
	// Unescape, if set, gives back the message a line holds, when the
	// line holds a backslash (framer.UnescapeOctet, for octet-counted
	// clients whose messages are escaped reversibly): keys are taken
	// from the message as the client sent it.
	Unescape func(dst, line []byte) []byte
}

// Enabled reports whether there is anything to route by.
func (c Config) Enabled() bool { return c.Key != nil || len(c.Groups) > 0 }

// Validate reports the first problem as an *invalid.Error naming the
// field, wrapping ErrConfig.
func (c Config) Validate() error {
	bad := func(field, format string, a ...any) error { return invalid.Field(ErrConfig, field, format, a...) }
	if c.MaxLoad != 0 && !(c.MaxLoad >= 1 && c.MaxLoad <= 1000) { // NaN too
		return bad("MaxLoad", "load bound %g: want 1 to 1000 (1.25: a target takes at most 25%% more than its share), or 0 for no bound", c.MaxLoad)
	}
	if len(c.Groups) == 0 {
		if c.GroupKey != nil {
			return bad("GroupKey", "a group key needs target groups")
		}
		return nil
	}
	if c.Key == nil && c.GroupKey == nil {
		return bad("GroupKey", "target groups need a key to route by (a group key or a route key)")
	}
	names, values, addrs := map[string]bool{}, map[string]string{}, map[string]string{}
	def := ""
	for _, g := range c.Groups {
		switch {
		case g.Name == "":
			return bad("Groups", "a group needs a name")
		case names[g.Name]:
			return bad("Groups", "group %q is named twice", g.Name)
		case g.Default && def != "":
			return bad("Groups", "groups %q and %q are both the default: one may be", def, g.Name)
		case len(g.Values) == 0 && !g.Default:
			return bad("Groups", "group %q takes no values and is not the default: nothing would reach it", g.Name)
		case len(g.Targets) == 0:
			return bad("Groups", "group %q has no targets", g.Name)
		}
		names[g.Name] = true
		if g.Default {
			def = g.Name
		}
		for _, v := range g.Values {
			if other, dup := values[v]; dup {
				return bad("Groups", "value %q is routed to groups %q and %q: a value goes to one group", v, other, g.Name)
			}
			values[v] = g.Name
		}
		for _, spec := range g.Targets {
			a, _, err := upstream.ParseSpec(spec)
			if err != nil {
				return bad("Groups", "group %q: %v", g.Name, err)
			}
			if other, dup := addrs[a]; dup {
				return bad("Groups", "target %s is in groups %q and %q: a target belongs to one group", a, other, g.Name)
			}
			addrs[a] = g.Name
		}
	}
	return nil
}

// TargetGroups is the groups' targets for upstream.Set.UpdateGroups.
func (c Config) TargetGroups() []upstream.Group {
	out := make([]upstream.Group, 0, len(c.Groups))
	for _, g := range c.Groups {
		out = append(out, upstream.Group{Name: g.Name, Specs: g.Targets})
	}
	return out
}

// Router routes batches by key into a queue's lanes. Make one with New,
// give its Lanes to the pool, Run it beside the pool, and Push batches.
type Router struct {
	cfg      Config
	q        *dispatch.Queue
	set      *upstream.Set
	ledger   *dispatch.Ledger
	bufs     *framer.Pool
	log      *slog.Logger
	slots    int
	groupKey routekey.Extractor
	groups   []*group
	byName   map[string]int
	byValue  map[string]int
	def      int // the default group's index, or -1
	tab      atomic.Pointer[table]
	wake     chan struct{}
	// unroutedLog says, once every 10 s at most, that lines are dropped
	// as unrouted.
	unroutedLog rate.Sometimes

	mu      sync.Mutex
	targets map[*upstream.Target]*tstate // guarded by mu
	owner   map[int]*tstate              // lane → its target; guarded by mu
	pending []*framer.Batch              // orphans to route again; guarded by mu
	moving  bool                         // Run is routing again what it took from pending; guarded by mu
	free    map[int][]int                // per group: closed, empty lanes of pruned targets; guarded by mu
	groupOf map[int]int                  // lane → its group, for ever (a lane is reused in its group only); guarded by mu
	stopped bool                         // Run returned; guarded by mu

	unrouted, movedDown, movedLoad atomic.Uint64
	decaying                       sync.Mutex // one halving of load windows at a time
}

// Outcomes of routing one message, as Stats and the metrics count them.
const (
	outKeyed     = iota // routed by its key
	outSpread           // in a group balanced by spreading
	outMissing          // no key: spread
	outMalformed        // not JSON as far as the key: spread
	outTooLong          // key over routekey.MaxKeyBytes: spread
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"keyed", "spread", "missing", "malformed", "too_long"}

// group is one target group's routing state.
type group struct {
	name   string
	shared int  // its shared lane
	keyed  bool // balanced by key
	total  atomic.Int64
	msgs   [numOutcomes]atomic.Uint64
}

// tstate is one target's routing state; it outlives tables.
type tstate struct {
	t      *upstream.Target
	g      int
	hash   uint64 // balance.TargetHash of its address
	lanes  []int  // one per worker slot
	open   bool   // its lanes take batches; guarded by Router.mu
	load   atomic.Int64
	routed atomic.Uint64
}

// table is a snapshot of where keys may go, rebuilt at every change of
// the targets' states.
type table struct {
	groups   []gtable
	eligible int // the eligible targets of every group
}

type gtable struct {
	base     int       // eligible[i]'s index among the table's eligible targets is base+i
	eligible []*tstate // the targets keys go to now
	all      []*tstate // every configured target: a key's first choice among them is its own
	wsum     float64   // the eligible targets' weights
	weights  []float64 // eligible[i]'s weight
	bound    []float64 // eligible[i]'s most keyed messages per one of the group's: MaxLoad × its share
	uniform  bool      // every weight the same: raw scores compare
}

// New returns a router of cfg (valid) into q's lanes over set's targets.
// Lines it drops as unrouted are counted in ledger.
func New(cfg Config, q *dispatch.Queue, set *upstream.Set, ledger *dispatch.Ledger, bufs *framer.Pool, log *slog.Logger) *Router {
	if log == nil {
		log = slog.Default()
	}
	r := &Router{cfg: cfg, q: q, set: set, ledger: ledger, bufs: bufs, log: log, slots: keyedLanes,
		groupKey: cfg.GroupKey, byName: map[string]int{}, byValue: map[string]int{}, def: -1,
		wake: make(chan struct{}, 1), targets: map[*upstream.Target]*tstate{}, owner: map[int]*tstate{},
		free: map[int][]int{}, groupOf: map[int]int{}, unroutedLog: rate.Sometimes{First: 1, Interval: 10 * time.Second}}
	if r.groupKey == nil && len(cfg.Groups) > 0 {
		r.groupKey = cfg.Key
	}
	if len(cfg.Groups) == 0 {
		r.groups = []*group{{shared: 0, keyed: cfg.Key != nil}}
		r.byName[""] = 0
		r.def = 0
	}
	for i, g := range cfg.Groups {
		r.groups = append(r.groups, &group{name: g.Name, shared: q.NewLane(), keyed: cfg.Key != nil && !g.Spread})
		r.byName[g.Name] = i
		for _, v := range g.Values {
			r.byValue[v] = i
		}
		if g.Default {
			r.def = i
		}
	}
	r.rebuild()
	return r
}

// Orphans is the dispatch.Config.Orphans of the router's queue: batches
// handed back to a closed lane are routed again.
func (r *Router) Orphans(bs []*framer.Batch) {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		r.returnShared(bs)
		return
	}
	r.pending = append(r.pending, bs...)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// returnShared puts batches in their groups' shared lanes, for a router
// that no longer routes (the queue's Discard then finds them).
func (r *Router) returnShared(bs []*framer.Batch) {
	for _, b := range bs {
		r.mu.Lock()
		g := r.groupOf[b.Lane] // 0 for a shared lane: no orphan comes from one
		r.mu.Unlock()
		r.q.Return([]*framer.Batch{b}, r.groups[g].shared)
	}
}

// Lanes is the pool.Config.Lanes of the router's pool.
func (r *Router) Lanes(home *upstream.Target, slot int) pool.Lanes {
	r.mu.Lock()
	defer r.mu.Unlock()
	ts := r.state(home)
	g := r.groups[ts.g]
	if !g.keyed {
		return pool.Lanes{Shared: g.shared}
	}
	l := pool.Lanes{Shared: g.shared, Pinned: true}
	if slot < len(ts.lanes) {
		l.Keyed = ts.lanes[slot]
	}
	return l
}

// state returns t's routing state, making it (and its lanes, closed until
// the next rebuild) the first time. r.mu must be held.
func (r *Router) state(t *upstream.Target) *tstate {
	if ts := r.targets[t]; ts != nil {
		return ts
	}
	g, ok := r.byName[t.Group()]
	if !ok {
		g = 0
	}
	ts := &tstate{t: t, g: g, hash: balance.TargetHash(t.Addr)}
	if r.groups[g].keyed {
		for range r.slots {
			var id int
			if free := r.free[g]; len(free) > 0 {
				id, r.free[g] = free[len(free)-1], free[:len(free)-1]
			} else {
				id = r.q.NewLane()
				r.q.CloseLane(id)
			}
			ts.lanes = append(ts.lanes, id)
			r.owner[id] = ts
			r.groupOf[id] = g
		}
	}
	r.targets[t] = ts
	return ts
}

// Run keeps the routing table in step with the targets' states and routes
// again what closed lanes held, until ctx is done or the queue is idle.
// Batches handed back after it returns go to their groups' shared lanes.
func (r *Router) Run(ctx context.Context) {
	defer r.stop()
	for {
		watch, up := r.set.Watch(), r.set.WatchUp()
		moved := r.rebuild()
		r.mu.Lock()
		// Oldest first: what workers handed back was written before
		// what waited in the lanes.
		moved = append(r.pending, moved...)
		r.pending, r.moving = nil, true
		r.mu.Unlock()
		r.reroute(moved)
		r.mu.Lock()
		r.moving = false
		r.mu.Unlock()
		select {
		case <-watch:
		case <-up:
		case <-r.wake:
		case <-ctx.Done():
			return
		case <-r.q.Idle():
			return
		}
	}
}

func (r *Router) stop() {
	r.mu.Lock()
	r.stopped = true
	left := r.pending
	r.pending = nil
	r.mu.Unlock()
	r.returnShared(left)
}

// rebuild makes a new table from the targets' states, opens the lanes of
// targets that take keys again, closes those of targets that stopped, and
// returns what the closed lanes held.
func (r *Router) rebuild() (moved []*framer.Batch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	tab := &table{groups: make([]gtable, len(r.groups))}
	current := map[*upstream.Target]bool{}
	for _, t := range r.set.Targets() {
		current[t] = true
		ts := r.state(t)
		if t.Removed() {
			continue
		}
		gt := &tab.groups[ts.g]
		gt.all = append(gt.all, ts)
	}
	for i := range tab.groups {
		gt := &tab.groups[i]
		for _, ts := range gt.all {
			if ts.t.Accepts() && ts.t.Up() {
				gt.eligible = append(gt.eligible, ts)
			}
		}
		if len(gt.eligible) == 0 { // none up: keys wait for their own
			for _, ts := range gt.all {
				if ts.t.Accepts() {
					gt.eligible = append(gt.eligible, ts)
				}
			}
		}
		gt.base = tab.eligible
		tab.eligible += len(gt.eligible)
		gt.uniform = true
		for _, ts := range gt.eligible {
			w := float64(ts.t.Weight())
			gt.weights = append(gt.weights, w)
			gt.wsum += w
			if w != gt.weights[0] {
				gt.uniform = false
			}
		}
		for _, w := range gt.weights { // the bound per message is then one multiplication
			gt.bound = append(gt.bound, r.cfg.MaxLoad*w/gt.wsum)
		}
	}
	old := r.tab.Load()
	for i := range tab.groups {
		if old == nil || !slices.Equal(old.groups[i].eligible, tab.groups[i].eligible) {
			rebase(&tab.groups[i], r.groups[i])
		}
	}
	// The new table first: a producer whose push finds a lane closed
	// below routes again with it, not with the table that chose the lane.
	r.tab.Store(tab)
	for t, ts := range r.targets {
		open := current[t] && slices.Contains(tab.groups[ts.g].eligible, ts)
		switch {
		case open && !ts.open:
			for _, id := range ts.lanes {
				r.q.OpenLane(id)
			}
			if old != nil && len(ts.lanes) > 0 {
				r.log.Info("routing keys to target again", "target", t.Addr, "group", t.Group())
			}
		case !open && ts.open:
			n := len(moved)
			for _, id := range ts.lanes {
				moved = append(moved, r.q.CloseLane(id)...)
			}
			if len(ts.lanes) > 0 {
				r.log.Info("routing keys away from target", "target", t.Addr, "group", t.Group(), "state", t.State().String(),
					"queued_batches", len(moved)-n)
			}
		}
		ts.open = open
		if !current[t] {
			// Pruned: it has no connection left, so no worker holds a
			// batch of its lanes; they are empty and closed, and the
			// next target to come takes them.
			delete(r.targets, t)
			for _, id := range ts.lanes {
				delete(r.owner, id)
				r.free[ts.g] = append(r.free[ts.g], id)
			}
		}
	}
	return moved
}

// rebase makes a group's load window fit a new set of eligible targets: a
// target that joins starts at its share of what the others carry (not at
// nothing, which would let it take every overflow, nor at a stale count,
// which would hold its own keys off it after a failure), and the total is
// what the eligible targets carry, so the bound is against the targets
// that take keys now.
func rebase(gt *gtable, grp *group) {
	var carried, wcarried float64 // loads and weights of targets that had been eligible
	for i, ts := range gt.eligible {
		if ts.open {
			carried += float64(ts.load.Load())
			wcarried += gt.weights[i]
		}
	}
	total := int64(0)
	for i, ts := range gt.eligible {
		if !ts.open {
			l := int64(0)
			if wcarried > 0 {
				l = int64(carried / wcarried * gt.weights[i])
			}
			ts.load.Store(l)
		}
		total += ts.load.Load()
	}
	grp.total.Store(total)
}

// reroute routes again batches of closed lanes, newest first, so that at
// the front of their new lanes they keep their order.
func (r *Router) reroute(bs []*framer.Batch) {
	if len(bs) == 0 {
		return
	}
	sc := &Scratch{again: true}
	for i := len(bs) - 1; i >= 0; i-- {
		old := bs[i]
		r.mu.Lock()
		g := r.groupOf[old.Lane]
		r.mu.Unlock()
		tab := r.tab.Load()
		sc.begin(r, tab)
		sc.recs = sc.recs[:0]
		forEachLine(old.Data, func(start, end int) {
			sc.recs = append(sc.recs, rec{start, end, r.laneIn(tab, g, sc.message(r, old.Data[start:end-1]), nil, routekey.Missing, sc)})
		})
		sc.flush(r)
		parts, lanes := r.split(old, sc)
		r.q.Reroute(old, parts, lanes)
	}
}

// forEachLine calls fn with the bounds of each line of data (whole lines,
// each ending in '\n'), end past the newline.
func forEachLine(data []byte, fn func(start, end int)) {
	for start := 0; start < len(data); {
		n := bytes.IndexByte(data[start:], '\n')
		if n < 0 { // not a whole line: keep it whole
			fn(start, len(data))
			return
		}
		fn(start, start+n+1)
		start += n + 1
	}
}

// rec is one line of a batch being routed and its lane (-1: unrouted).
type rec struct {
	start, end, lane int
}

// Scratch is one producer's reusable routing memory: a client connection
// keeps one, so routing allocates nothing in the steady state. It also
// tallies a batch's counts, added to the shared counters once per batch
// (flush), and remembers recent keys' first choices.
type Scratch struct {
	recs  []rec
	bytes []int // per lane: bytes routed to it
	part  []int // per lane: its index in parts, or -1
	order []int // lanes in first-use order
	parts []*framer.Batch
	cand  []int // candidate order for the load bound

	tab       *table             // the table the tallies are against
	delta     []int64            // per eligible target (gtable.base+i): keyed messages routed this batch
	gtotal    []int64            // per group: keyed messages routed this batch
	load      []int64            // per eligible target: its load when the batch began
	total     []int64            // per group: its total when the batch began
	outs      []uint64           // per group and outcome: messages this batch
	cache     *[cacheSize]choice // made at the first keyed message
	scores    []float64          // candidates' scores, for the load bound
	unescaped []byte             // the message of an escaped line (Config.Unescape)
	// again: the lines were counted by outcome when they were first
	// routed; routing them again (a closed lane) counts only loads.
	again bool
}

// keyedLanes is how many keyed lanes (and so connections) each target has:
// one. A key must stay on one connection to keep its order, and one lane
// per target keeps a client's batch split in as few parts as there are
// targets, each written whole; the target's other connections carry the
// messages without a key.
const keyedLanes = 1

// cacheSize is how many keys' choices a client remembers.
const cacheSize = 128

// choice is a key's first choice among a table's eligible targets, and
// its next ones once the load bound asked for them.
type choice struct {
	tab   *table
	h     uint64
	g     int32
	best  int32
	down  bool     // it is not the key's own target (which takes no work now)
	next  [3]int32 // its second to fourth choices (when nexts > 0)
	nexts int32
}

// message is the message line holds, for its key: line itself, or with
// Config.Unescape, the message unescaped into sc (valid until the next
// call).
func (sc *Scratch) message(r *Router, line []byte) []byte {
	if r.cfg.Unescape == nil || bytes.IndexByte(line, '\\') < 0 {
		return line
	}
	sc.unescaped = r.cfg.Unescape(sc.unescaped[:0], line)
	return sc.unescaped
}

// begin readies sc's tallies for a batch routed with tab.
func (sc *Scratch) begin(r *Router, tab *table) {
	sc.tab = tab
	sc.delta = resize(sc.delta, tab.eligible)
	sc.gtotal = resize(sc.gtotal, len(r.groups))
	sc.outs = resize(sc.outs, len(r.groups)*numOutcomes)
	if r.cfg.MaxLoad > 0 {
		// The bound is checked against the counts as the batch began
		// plus its own: plain reads, not shared cache lines per message.
		sc.load = resize(sc.load, tab.eligible)
		sc.total = resize(sc.total, len(r.groups))
		for g := range tab.groups {
			gt := &tab.groups[g]
			for i, ts := range gt.eligible {
				sc.load[gt.base+i] = ts.load.Load()
			}
			sc.total[g] = r.groups[g].total.Load()
		}
	}
}

func resize[T int64 | uint64](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// flush adds sc's tallies to the shared counters.
func (sc *Scratch) flush(r *Router) {
	tab := sc.tab
	for g := range tab.groups {
		gt, grp := &tab.groups[g], r.groups[g]
		for i, ts := range gt.eligible {
			if d := sc.delta[gt.base+i]; d != 0 {
				ts.load.Add(d)
				ts.routed.Add(uint64(d))
				sc.delta[gt.base+i] = 0
			}
		}
		if d := sc.gtotal[g]; d != 0 {
			sc.gtotal[g] = 0
			if grp.total.Add(d) >= window {
				r.decay(gt, grp)
			}
		}
		for o := range numOutcomes {
			if d := sc.outs[g*numOutcomes+o]; d != 0 {
				if !sc.again {
					grp.msgs[o].Add(d)
				}
				sc.outs[g*numOutcomes+o] = 0
			}
		}
	}
}

// Push routes b's lines into the queue's lanes, blocking while the
// queue's budget is spent, and takes b (it is queued, or released). It
// returns the lines not queued because ctx ended or the queue closed
// (the caller counts them); unrouted lines are counted here.
func (r *Router) Push(ctx context.Context, b *framer.Batch, sc *Scratch) (notQueued int, err error) {
	tab := r.tab.Load()
	sc.begin(r, tab)
	sc.recs = sc.recs[:0]
	unrouted := 0
	same := true
	forEachLine(b.Data, func(start, end int) {
		lane := r.laneOf(tab, sc.message(r, b.Data[start:end-1]), sc)
		if lane < 0 {
			unrouted++
		}
		if len(sc.recs) > 0 && sc.recs[0].lane != lane {
			same = false
		}
		sc.recs = append(sc.recs, rec{start, end, lane})
	})
	sc.flush(r)
	if unrouted > 0 {
		n := r.unrouted.Add(uint64(unrouted))
		r.ledger.DropRead(dispatch.DropUnrouted, uint64(unrouted))
		r.unroutedLog.Do(func() {
			r.log.Warn("lines dropped as unrouted: no group takes their group key (missing, unreadable, or a value no group lists) and there is no default group (logged at most every 10 s)",
				"lines", unrouted, "unrouted_so_far", n)
		})
		if unrouted == len(sc.recs) {
			b.Release()
			return 0, nil
		}
	}
	if same && unrouted == 0 {
		err := r.q.PushTo(ctx, b, sc.recs[0].lane)
		switch {
		case err == nil:
			return 0, nil
		case !errors.Is(err, dispatch.ErrLaneClosed):
			n := b.Lines
			b.Release()
			return n, err
		}
		return r.again(ctx, b)
	}
	parts, lanes := r.split(b, sc)
	b.Release()
	for i, p := range parts {
		err := r.q.PushTo(ctx, p, lanes[i])
		if errors.Is(err, dispatch.ErrLaneClosed) {
			var n int
			if n, err = r.again(ctx, p); n > 0 || err != nil {
				return n + releaseAll(parts[i+1:]), err
			}
			continue
		}
		if err != nil {
			return releaseAll(parts[i:]), err
		}
	}
	return 0, nil
}

// again routes a batch whose lane closed as it was pushed, with the
// current table.
func (r *Router) again(ctx context.Context, b *framer.Batch) (int, error) {
	return r.Push(ctx, b, &Scratch{again: true})
}

// releaseAll releases bs and returns their lines.
func releaseAll(bs []*framer.Batch) int {
	n := 0
	for _, b := range bs {
		n += b.Lines
		b.Release()
	}
	return n
}

// split copies the lines of b that sc.recs routes into one new batch per
// lane, in the order the lanes are first used, and returns them with
// their lanes (both held by sc until its next use).
func (r *Router) split(b *framer.Batch, sc *Scratch) (parts []*framer.Batch, lanes []int) {
	sc.order = sc.order[:0]
	for _, rc := range sc.recs {
		if rc.lane < 0 {
			continue
		}
		for rc.lane >= len(sc.bytes) {
			sc.bytes, sc.part = append(sc.bytes, 0), append(sc.part, -1)
		}
		if sc.part[rc.lane] < 0 {
			sc.part[rc.lane] = len(sc.order)
			sc.order = append(sc.order, rc.lane)
		}
		sc.bytes[rc.lane] += rc.end - rc.start
	}
	sc.parts = sc.parts[:0]
	for _, l := range sc.order {
		sc.parts = append(sc.parts, r.bufs.GetEmpty(sc.bytes[l]))
	}
	// Consecutive lines bound for one lane are copied as one run.
	for i := 0; i < len(sc.recs); {
		rc := sc.recs[i]
		j := i + 1
		for j < len(sc.recs) && sc.recs[j].lane == rc.lane && sc.recs[j].start == sc.recs[j-1].end {
			j++
		}
		if rc.lane >= 0 {
			p := sc.parts[sc.part[rc.lane]]
			p.Data = append(p.Data, b.Data[rc.start:sc.recs[j-1].end]...)
			p.Lines += j - i
		}
		i = j
	}
	for _, l := range sc.order {
		sc.bytes[l], sc.part[l] = 0, -1
	}
	return sc.parts, sc.order
}

// laneOf is the lane of one message (without its newline), or -1 when no
// group takes it.
func (r *Router) laneOf(tab *table, msg []byte, sc *Scratch) int {
	g := 0
	var key []byte
	out := routekey.Missing
	if r.groupKey != nil {
		key, out = r.groupKey.Key(msg)
		g = -1
		if out == routekey.Found {
			if i, ok := r.byValue[string(key)]; ok {
				g = i
			}
		}
		if g < 0 {
			g = r.def
		}
		if g < 0 {
			return -1
		}
		if r.groupKey != r.cfg.Key {
			key, out = nil, routekey.Missing
		}
	}
	return r.laneIn(tab, g, msg, key, out, sc)
}

// laneIn is the lane of msg in group g. key and out are msg's Key when it
// was taken already (by the group key), else nil and Missing.
func (r *Router) laneIn(tab *table, g int, msg, key []byte, out routekey.Outcome, sc *Scratch) int {
	grp := r.groups[g]
	outs := sc.outs[g*numOutcomes : (g+1)*numOutcomes]
	if !grp.keyed {
		outs[outSpread]++
		return grp.shared
	}
	if key == nil {
		key, out = r.cfg.Key.Key(msg)
	}
	switch out {
	case routekey.Found:
	case routekey.Malformed:
		outs[outMalformed]++
		return grp.shared
	case routekey.TooLong:
		outs[outTooLong]++
		return grp.shared
	default:
		outs[outMissing]++
		return grp.shared
	}
	h := xxhash.Sum64(key)
	ts := r.pick(&tab.groups[g], g, h, sc)
	if ts == nil || len(ts.lanes) == 0 {
		outs[outMissing]++ // nowhere to go by key: wait in the shared lane
		return grp.shared
	}
	outs[outKeyed]++
	return ts.lanes[slotOf(h, len(ts.lanes))]
}

// slotOf is a key's worker slot at its target, independent of the target
// it hashed to.
func slotOf(h uint64, slots int) int {
	return int(balance.ScoreHashed(h, 0x9e3779b97f4a7c15) % uint64(slots))
}

// score is a target's rendezvous score for key hash h, comparable within
// gt.
func (gt *gtable) score(i int, h uint64) float64 {
	s := balance.ScoreHashed(h, gt.eligible[i].hash)
	if gt.uniform {
		return float64(s)
	}
	return balance.Weighted(s, int(gt.weights[i]))
}

// pick chooses the eligible target of group g for key hash h: the highest
// score, or the highest within the load bound, and tallies it in sc.
func (r *Router) pick(gt *gtable, g int, h uint64, sc *Scratch) *tstate {
	n := len(gt.eligible)
	if n == 0 {
		return nil
	}
	if sc.cache == nil {
		sc.cache = new([cacheSize]choice)
	}
	// Two ways: a key may sit in either of two slots, so a few dozen
	// keys rarely push each other out.
	e := &sc.cache[h&(cacheSize-1)]
	if e.tab != sc.tab || e.h != h || e.g != int32(g) {
		if alt := &sc.cache[(h>>32)&(cacheSize-1)]; alt.tab == sc.tab && alt.h == h && alt.g == int32(g) {
			e = alt
		} else if e.tab == sc.tab {
			e = alt // keep the other slot's key; this one is newer
		}
	}
	if e.tab != sc.tab || e.h != h || e.g != int32(g) {
		best, bestScore := 0, gt.score(0, h)
		for i := 1; i < n; i++ {
			if s := gt.score(i, h); s > bestScore {
				best, bestScore = i, s
			}
		}
		*e = choice{tab: sc.tab, h: h, g: int32(g), best: int32(best),
			down: len(gt.all) != n && gt.firstChoice(h) != gt.eligible[best]}
	}
	best := int(e.best)
	chosen := best
	if c := r.cfg.MaxLoad; c > 0 && n > 1 && !gt.within(best, g, sc) {
		chosen = r.overflow(gt, g, h, e, sc, c)
	}
	if chosen == best && e.down {
		r.movedDown.Add(1)
	}
	sc.delta[gt.base+chosen]++
	sc.gtotal[g]++
	return gt.eligible[chosen]
}

// overflow is the target for a key whose first choice is over the bound:
// its next choice within the bound, or its first if none is.
func (r *Router) overflow(gt *gtable, g int, h uint64, e *choice, sc *Scratch, c float64) int {
	if e.nexts == 0 {
		cand, scores := sc.cand[:0], sc.scores[:0]
		for i := range gt.eligible {
			cand, scores = append(cand, i), append(scores, gt.score(i, h))
		}
		slices.SortFunc(cand, func(a, b int) int {
			switch sa, sb := scores[a], scores[b]; {
			case sa > sb:
				return -1
			case sa < sb:
				return 1
			}
			return 0
		})
		sc.scores = scores
		sc.cand = cand
		for k := 1; k < len(cand) && k <= len(e.next); k++ {
			e.next[k-1] = int32(cand[k])
			e.nexts++
		}
		if len(cand) > len(e.next)+1 { // more than the cache holds: search them all
			for _, i := range cand[1:] {
				if gt.within(i, g, sc) {
					r.movedLoad.Add(1)
					return i
				}
			}
			return int(e.best)
		}
	}
	for _, i := range e.next[:e.nexts] {
		if gt.within(int(i), g, sc) {
			r.movedLoad.Add(1)
			return int(i)
		}
	}
	return int(e.best)
}

// within reports whether eligible target i of group g may take one more
// keyed message under the bound (gtable.bound), counting the batch in
// progress.
func (gt *gtable) within(i, g int, sc *Scratch) bool {
	load := float64(sc.load[gt.base+i] + sc.delta[gt.base+i] + 1)
	return load <= gt.bound[i]*float64(sc.total[g]+sc.gtotal[g]+1)+slack
}

// firstChoice is the key's target among every configured target of the
// group, up or not: where it goes when all are well.
func (gt *gtable) firstChoice(h uint64) *tstate {
	var best *tstate
	var bestScore float64
	uniform := true
	for _, ts := range gt.all {
		if ts.t.Weight() != gt.all[0].t.Weight() {
			uniform = false
		}
	}
	for _, ts := range gt.all {
		s := balance.ScoreHashed(h, ts.hash)
		sc := float64(s)
		if !uniform {
			sc = balance.Weighted(s, ts.t.Weight())
		}
		if best == nil || sc > bestScore {
			best, bestScore = ts, sc
		}
	}
	return best
}

// decay halves a group's load counts, so that they weigh recent traffic.
func (r *Router) decay(gt *gtable, grp *group) {
	if !r.decaying.TryLock() {
		return // another producer is halving
	}
	defer r.decaying.Unlock()
	if grp.total.Load() < window {
		return
	}
	for _, ts := range gt.all {
		ts.load.Store(ts.load.Load() / 2)
	}
	grp.total.Store(grp.total.Load() / 2)
}

// Stats are the router's counters.
type Stats struct {
	Groups []GroupStats
	// Unrouted counts lines no group took (dropped, in the ledger as
	// dispatch.DropUnrouted).
	Unrouted uint64
	// MovedDown counts keyed messages sent to other than their key's
	// first choice because that target was not taking work; MovedLoad
	// those sent on because their target was over the load bound.
	MovedDown, MovedLoad uint64
}

// GroupStats are one group's counters.
type GroupStats struct {
	Name string
	// Messages counts the group's messages by how they were routed:
	// keyed, spread (a group balanced by spreading), missing,
	// malformed, too_long (no usable key: spread).
	Messages map[string]uint64
	Targets  []TargetStats
}

// TargetStats are one target's routing counters.
type TargetStats struct {
	Addr string
	// Routed counts the keyed messages routed to the target.
	Routed uint64
	// Load is the target's keyed messages in the current window over its
	// share of the group's: 1 is its share, MaxLoad the bound.
	Load float64
	// Eligible says the target takes keys now.
	Eligible bool
}

// Stats returns the router's counters.
func (r *Router) Stats() Stats {
	st := Stats{Unrouted: r.unrouted.Load(), MovedDown: r.movedDown.Load(), MovedLoad: r.movedLoad.Load()}
	tab := r.tab.Load()
	for i, g := range r.groups {
		gs := GroupStats{Name: g.name, Messages: map[string]uint64{}}
		for o := range numOutcomes {
			gs.Messages[outcomeNames[o]] = g.msgs[o].Load()
		}
		gt := &tab.groups[i]
		total := float64(g.total.Load())
		for _, ts := range gt.all {
			ti := TargetStats{Addr: ts.t.Addr, Routed: ts.routed.Load()}
			if j := slices.Index(gt.eligible, ts); j >= 0 {
				ti.Eligible = true
				if share := total * gt.weights[j] / gt.wsum; share > 0 {
					ti.Load = float64(ts.load.Load()) / share
				}
			}
			gs.Targets = append(gs.Targets, ti)
		}
		st.Groups = append(st.Groups, gs)
	}
	return st
}

// String describes the routing for the log.
func (c Config) String() string {
	if !c.Enabled() {
		return "off"
	}
	key, gkey := "none", "none"
	if c.Key != nil {
		key = c.Key.String()
	}
	if c.GroupKey != nil {
		gkey = c.GroupKey.String()
	}
	return fmt.Sprintf("key=%s group_key=%s groups=%d max_load=%g", key, gkey, len(c.Groups), c.MaxLoad)
}
