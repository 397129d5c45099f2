package dispatch

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/invalid"
)

// DefaultMaxBytes is the default byte budget: 64 MiB.
const DefaultMaxBytes = 64 << 20

// Errors returned by the queue.
var (
	// ErrClosed: Push after CloseInput.
	ErrClosed = errors.New("dispatch: queue closed to input")
	// ErrConfig: a Config value out of range.
	ErrConfig = errors.New("dispatch: invalid config")
	// ErrLaneClosed: PushTo a lane closed by CloseLane; route the batch
	// again.
	ErrLaneClosed = errors.New("dispatch: lane closed")
	// ErrOwedFull is returned by PushOwing when the queue already owes
	// a whole budget's worth: it holds twice its budget.
	ErrOwedFull = errors.New("dispatch: queue owes a whole budget already")
)

// Config bounds the queue.
type Config struct {
	// MaxBytes is the byte budget: the summed Weight of every batch pushed
	// and not yet Done. It must be at least one batch's largest weight.
	MaxBytes int64
	// Ledger, if set, is the account the queue adds its lines to
	// (received at Push, delivered at Done, dropped at Discard).
	Ledger *Ledger
	// OnDone, if set, is called with each batch reported Done (delivered
	// whole), before it is released: a spool acknowledges its record.
	OnDone func(*framer.Batch)
	// Orphans, if set, receives batches handed back by Requeue to a lane
	// that CloseLane closed, to route them again (with Reroute). It is
	// called without the queue's lock and must not block for long. Nil:
	// such batches go to the shared lane.
	Orphans func([]*framer.Batch)
}

// DefaultConfig returns a 64 MiB budget.
func DefaultConfig() Config { return Config{MaxBytes: DefaultMaxBytes} }

// Validate checks the budget against the largest batch the framer can make;
// its error is an *invalid.Error about MaxBytes, wrapping ErrConfig.
func (c Config) Validate(fc framer.Config) error {
	if c.MaxBytes < int64(fc.MaxBatchBytes()) {
		return invalid.Field(ErrConfig, "MaxBytes", "buffer of %s cannot hold one batch of %s (a line of the maximum length plus one read)",
			invalid.Bytes(c.MaxBytes), invalid.Bytes(int64(fc.MaxBatchBytes())))
	}
	return nil
}

// Stats are the queue's counters since it was made.
type Stats struct {
	LinesIn        uint64 // lines pushed
	LinesOut       uint64 // lines acknowledged by a target
	LinesDropped   uint64 // lines given up by Discard
	RetriedBatches uint64 // Requeue calls, per batch
	RetriedLines   uint64 // lines in those batches
	Bytes          int64  // budget in use now
	Depth          int    // batches waiting now
}

// Queue is the bounded batch queue. Its methods are safe for concurrent use.
//
// Batches wait in lanes. Lane 0 is shared: any worker takes from it.
// Routing by key (package route) adds a lane per target connection with
// NewLane, so that the messages of one key go over one connection in
// order; a lane whose target stops taking work is closed and its batches
// routed again.
type Queue struct {
	budget  *semaphore.Weighted
	max     int64
	ledger  *Ledger
	orphans func([]*framer.Batch)
	onDone  func(*framer.Batch)

	mu          sync.Mutex
	lanes       []*lane       // lanes[0] is shared; append-only; guarded by mu
	outstanding int           // pushed and not Done or discarded; guarded by mu
	closed      bool          // no more pushes; guarded by mu
	idle        chan struct{} // closed when closed and outstanding is 0; guarded by mu

	linesIn, linesOut, linesDropped atomic.Uint64
	retriedBatches, retriedLines    atomic.Uint64
	bytes                           atomic.Int64
	owed                            atomic.Int64 // budget Reroute used without acquiring it
}

// lane is one FIFO of batches and its worker signal.
type lane struct {
	items  deque
	ready  chan struct{} // holds a token while batches may be waiting
	closed bool          // CloseLane: pushes refused, requeues orphaned
}

func newLane() *lane { return &lane{ready: make(chan struct{}, 1)} }

// signal leaves a token in ready, if there is none yet.
func (l *lane) signal() {
	select {
	case l.ready <- struct{}{}:
	default:
	}
}

// New returns a queue with the given budget.
func New(cfg Config) *Queue {
	return &Queue{
		budget:  semaphore.NewWeighted(cfg.MaxBytes),
		max:     cfg.MaxBytes,
		ledger:  cfg.Ledger,
		orphans: cfg.Orphans,
		onDone:  cfg.OnDone,
		lanes:   []*lane{newLane()},
		idle:    make(chan struct{}),
	}
}

// NewLane adds an open lane and returns its number.
func (q *Queue) NewLane() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.lanes = append(q.lanes, newLane())
	return len(q.lanes) - 1
}

// Lanes is the number of lanes, the shared one included.
func (q *Queue) Lanes() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.lanes)
}

// CloseLane refuses further pushes to lane id and returns the batches
// waiting in it, in order. They are still outstanding: the caller routes
// them again with Reroute. Batches requeued to the lane from now on go to
// Config.Orphans. The shared lane cannot be closed.
func (q *Queue) CloseLane(id int) []*framer.Batch {
	if id == 0 {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	l := q.lanes[id]
	l.closed = true
	var out []*framer.Batch
	for l.items.len() > 0 {
		out = append(out, l.items.popFront())
	}
	return out
}

// OpenLane lets lane id take batches again.
func (q *Queue) OpenLane(id int) {
	q.mu.Lock()
	q.lanes[id].closed = false
	q.mu.Unlock()
}

func (q *Queue) weight(b *framer.Batch) int64 { return min(int64(b.Weight()), q.max) }

// Push appends b to the shared lane, blocking while the budget is spent.
// On success the queue owns b until a worker reports it Done, and b's
// memory counts against the queue's budget instead of the framers'
// (framer.Batch.Uncharge); on error the caller still owns it.
func (q *Queue) Push(ctx context.Context, b *framer.Batch) error { return q.PushTo(ctx, b, 0) }

// PushTo is Push to lane id. It returns ErrLaneClosed if the lane was
// closed, and the caller still owns b.
func (q *Queue) PushTo(ctx context.Context, b *framer.Batch, id int) error {
	return q.push(ctx, b, id, true)
}

// PushCounted is Push of lines the ledger has counted as received already
// (a spool's records: counted when they were read and spooled).
func (q *Queue) PushCounted(ctx context.Context, b *framer.Batch) error {
	return q.push(ctx, b, 0, false)
}

// Reserve takes room for b in the budget without waiting, and reports
// whether there was some. A reserved batch must then be queued with
// PushReserved.
func (q *Queue) Reserve(b *framer.Batch) bool { return q.budget.TryAcquire(q.weight(b)) }

// PushReserved is PushCounted of a batch Reserve took room for: it never
// waits. On error the room is given back and the caller still owns b.
func (q *Queue) PushReserved(b *framer.Batch) error {
	return q.pushAcquired(b, 0, false, q.weight(b), false)
}

func (q *Queue) push(ctx context.Context, b *framer.Batch, id int, count bool) error {
	w := q.weight(b)
	if err := q.budget.Acquire(ctx, w); err != nil {
		return err
	}
	return q.pushAcquired(b, id, count, w, false)
}

// PushOwing is PushCounted without waiting for the budget: what b weighs
// beyond the room left is owed, as Reroute's is, and paid back from the
// next batches delivered, so that producers wait meanwhile. It is how a
// reload hands a replaced listener's queue to its replacement. It owes
// at most one budget's worth (ErrOwedFull beyond it), so a queue holds
// at most twice its budget however many hand it theirs. On error the
// caller still owns b.
func (q *Queue) PushOwing(b *framer.Batch) error {
	w := q.weight(b)
	if q.budget.TryAcquire(w) {
		return q.pushAcquired(b, 0, false, w, false)
	}
	if q.owed.Load()+w > q.max {
		return ErrOwedFull
	}
	return q.pushAcquired(b, 0, false, w, true)
}

// pushAcquired queues b, whose weight w was acquired from the budget, or
// is to be owed.
func (q *Queue) pushAcquired(b *framer.Batch, id int, count bool, w int64, owing bool) error {
	lines := uint64(b.Lines) // b may be Done as soon as it is queued
	q.mu.Lock()
	l := q.lanes[id]
	switch {
	case q.closed:
		q.mu.Unlock()
		if !owing {
			q.budget.Release(w)
		}
		return ErrClosed
	case l.closed:
		q.mu.Unlock()
		if !owing {
			q.budget.Release(w)
		}
		return ErrLaneClosed
	}
	if owing {
		q.owed.Add(w)
	}
	b.Uncharge()
	b.Enqueued, b.Lane = time.Now(), id
	q.bytes.Add(w)
	l.items.pushBack(b)
	q.outstanding++
	q.linesIn.Add(lines)
	if count {
		q.ledger.Received(lines)
	}
	q.mu.Unlock()
	l.signal()
	return nil
}

// Reroute replaces old, a batch the queue owns (from CloseLane or
// Config.Orphans), with parts: its lines, split for other lanes (lanes[i]
// is parts[i]'s). old is released; the parts are queued at the front of
// their lanes, as a requeue is, so that they go before newer batches (call
// it for the newest batch first). The lines were counted when old was
// pushed and are not counted again. A part whose lane is closed goes to
// Config.Orphans in turn.
//
// Reroute never waits for the budget: the parts take over old's share of
// it, and what they weigh beyond it (buffers come in size classes) is owed
// and paid back from the next batches delivered. A router waiting behind
// producers could not see a target return, and the bound would move by a
// few buffers at most.
func (q *Queue) Reroute(old *framer.Batch, parts []*framer.Batch, lanes []int) {
	enq := old.Enqueued
	var w int64
	for _, b := range parts {
		w += q.weight(b)
	}
	wOld := q.weight(old)
	old.Release()
	q.bytes.Add(w - wOld)
	if w <= wOld {
		q.payBack(wOld - w)
	} else {
		q.owed.Add(w - wOld)
	}
	q.mu.Lock()
	q.outstanding += len(parts) - 1
	q.checkIdle()
	q.mu.Unlock()
	for i, b := range parts {
		b.Uncharge()
		b.Enqueued, b.Lane = enq, lanes[i]
		q.mu.Lock()
		l := q.lanes[lanes[i]]
		if l.closed {
			q.mu.Unlock()
			q.orphaned([]*framer.Batch{b})
			continue
		}
		l.items.pushFront(b)
		q.mu.Unlock()
		l.signal()
	}
}

// Return puts batches the caller holds (from CloseLane or Config.Orphans)
// back at the front of lane id, in their order, whether or not it is
// closed: for a router that stops routing, to its groups' shared lanes.
func (q *Queue) Return(bs []*framer.Batch, id int) {
	if len(bs) == 0 {
		return
	}
	q.mu.Lock()
	l := q.lanes[id]
	for i := len(bs) - 1; i >= 0; i-- {
		bs[i].Lane = id
		l.items.pushFront(bs[i])
	}
	q.mu.Unlock()
	l.signal()
}

// orphaned hands batches of closed lanes to Config.Orphans, or to the
// shared lane without it.
func (q *Queue) orphaned(bs []*framer.Batch) {
	if q.orphans != nil {
		q.orphans(bs)
		return
	}
	q.mu.Lock()
	for i := len(bs) - 1; i >= 0; i-- {
		bs[i].Lane = 0
		q.lanes[0].items.pushFront(bs[i])
	}
	q.mu.Unlock()
	q.lanes[0].signal()
}

// Ready is signalled when batches may be waiting in the shared lane. A
// worker that receives from it must call TryPop (or TryPopLanes with lane 0
// first), which passes the signal on when batches remain.
func (q *Queue) Ready() <-chan struct{} { return q.lanes[0].ready }

// LaneReady is Ready for lane id.
func (q *Queue) LaneReady(id int) <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.lanes[id].ready
}

// TryPop appends to dst up to maxBatches batches waiting in the shared
// lane, stopping before the total length would pass maxBytes (but taking
// at least one), and returns dst. It does not block. The worker owns the
// popped batches until it reports each of them with Done or Requeue.
func (q *Queue) TryPop(dst []*framer.Batch, maxBatches, maxBytes int) []*framer.Batch {
	return q.TryPopLanes(dst, []int{0}, maxBatches, maxBytes)
}

// TryPopLanes is TryPop from several lanes: from the first until it is
// empty, then the next, within the same limits. A worker passes first the
// lane whose Ready signal it received.
func (q *Queue) TryPopLanes(dst []*framer.Batch, lanes []int, maxBatches, maxBytes int) []*framer.Batch {
	q.mu.Lock()
	size, n := 0, 0
	var more [4]*lane
	left := more[:0]
	for _, id := range lanes {
		l := q.lanes[id]
		for n < maxBatches && l.items.len() > 0 {
			ln := len(l.items.front().Data)
			if n > 0 && size+ln > maxBytes {
				break
			}
			size += ln
			n++
			dst = append(dst, l.items.popFront())
		}
		if l.items.len() > 0 {
			left = append(left, l)
		}
	}
	q.mu.Unlock()
	for _, l := range left {
		l.signal()
	}
	return dst
}

// Requeue puts batches whose delivery failed back at the front of their
// lanes, in their original order, for another worker (or another route,
// for a lane closed meanwhile: see Config.Orphans).
func (q *Queue) Requeue(bs []*framer.Batch) {
	if len(bs) == 0 {
		return
	}
	var orphans []*framer.Batch
	var woken [4]*lane
	wake := woken[:0]
	q.mu.Lock()
	for i := len(bs) - 1; i >= 0; i-- {
		b := bs[i]
		q.retriedLines.Add(uint64(b.Lines))
		l := q.lanes[b.Lane]
		if l.closed {
			orphans = append(orphans, b)
			continue
		}
		l.items.pushFront(b)
		if !slices.Contains(wake, l) {
			wake = append(wake, l)
		}
	}
	q.mu.Unlock()
	q.retriedBatches.Add(uint64(len(bs)))
	for _, l := range wake {
		l.signal()
	}
	if len(orphans) > 0 {
		slices.Reverse(orphans) // back in their order
		q.orphaned(orphans)
	}
}

// Done reports b delivered: its bytes were acknowledged by a target. The
// batch is released and its budget returned.
func (q *Queue) Done(b *framer.Batch) {
	q.linesOut.Add(uint64(b.Lines))
	q.ledger.Delivered(uint64(b.Lines))
	if q.onDone != nil {
		q.onDone(b)
	}
	q.finish(b)
}

// DeliveredPart counts lines that a worker cut from the front of a batch it
// holds because the target acknowledged them; the rest of the batch is still
// reported with Done or Requeue.
func (q *Queue) DeliveredPart(lines int) {
	q.linesOut.Add(uint64(lines))
	q.ledger.Delivered(uint64(lines))
}

func (q *Queue) finish(b *framer.Batch) {
	w := q.weight(b)
	b.Release()
	q.forget(w)
}

// forget takes a batch of weight w out of the queue's account: its
// bytes, what Reroute owes, the budget, the batches outstanding.
func (q *Queue) forget(w int64) {
	q.bytes.Add(-w)
	q.payBack(w)
	q.mu.Lock()
	q.outstanding--
	q.checkIdle()
	q.mu.Unlock()
}

// payBack returns w bytes of the budget, paying what is owed (Reroute,
// PushOwing) first: that much of it was never acquired.
func (q *Queue) payBack(w int64) {
	for {
		owed := q.owed.Load()
		if owed == 0 {
			break
		}
		pay := min(owed, w)
		if q.owed.CompareAndSwap(owed, owed-pay) {
			w -= pay
			break
		}
	}
	if w > 0 {
		q.budget.Release(w)
	}
}

// checkIdle closes idle once input is closed and nothing is outstanding.
// q.mu must be held.
func (q *Queue) checkIdle() {
	if q.closed && q.outstanding == 0 {
		select {
		case <-q.idle:
		default:
			close(q.idle)
		}
	}
}

// CloseInput refuses further pushes. Batches already queued stay queued.
func (q *Queue) CloseInput() {
	q.mu.Lock()
	q.closed = true
	q.checkIdle()
	q.mu.Unlock()
}

// Idle is closed once input is closed and every batch has been reported Done
// or discarded.
func (q *Queue) Idle() <-chan struct{} { return q.idle }

// Discard removes every waiting batch, counts its lines as dropped and
// returns how many lines that was. It is for a shutdown whose deadline has
// passed; batches held by workers are not touched (they requeue them first).
func (q *Queue) Discard() uint64 {
	var lines uint64
	for {
		b := q.popAny()
		if b == nil {
			return lines
		}
		lines += uint64(b.Lines)
		q.linesDropped.Add(uint64(b.Lines))
		q.ledger.Dropped(DropShutdown, uint64(b.Lines))
		q.finish(b)
	}
}

// HandOver removes every waiting batch and passes it to give, which takes
// it (nil) or refuses it (the batch's lines are then dropped and counted
// as Discard counts them). It returns the lines given and dropped; those
// given leave this queue neither delivered nor dropped, and give must
// count them (in this queue's ledger and the next one's). For a listener
// a reload replaced, whose deadline passed, to hand what it holds to its
// replacement.
func (q *Queue) HandOver(give func(*framer.Batch) error) (given, dropped uint64) {
	for {
		b := q.popAny()
		if b == nil {
			return given, dropped
		}
		lines, w := uint64(b.Lines), q.weight(b)
		if err := give(b); err != nil {
			q.linesDropped.Add(lines)
			q.ledger.Dropped(DropShutdown, lines)
			q.finish(b)
			dropped += lines
			continue
		}
		q.forget(w)
		given += lines
	}
}

// popAny takes the first waiting batch of any lane; nil when none waits.
func (q *Queue) popAny() *framer.Batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, l := range q.lanes {
		if l.items.len() > 0 {
			return l.items.popFront()
		}
	}
	return nil
}

// Abandon removes every waiting batch without counting its lines as
// dropped, passing each to fn before it is released: for a shutdown whose
// deadline passed when the lines are kept elsewhere (a spool replays them
// at the next start), fn counts those that are not.
func (q *Queue) Abandon(fn func(*framer.Batch)) {
	for {
		b := q.popAny()
		if b == nil {
			return
		}
		fn(b)
		q.finish(b)
	}
}

// Stats returns the queue's counters.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	depth := 0
	for _, l := range q.lanes {
		depth += l.items.len()
	}
	q.mu.Unlock()
	return Stats{
		LinesIn:        q.linesIn.Load(),
		LinesOut:       q.linesOut.Load(),
		LinesDropped:   q.linesDropped.Load(),
		RetriedBatches: q.retriedBatches.Load(),
		RetriedLines:   q.retriedLines.Load(),
		Bytes:          q.bytes.Load(),
		Depth:          depth,
	}
}
