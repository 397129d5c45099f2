package dispatch

import (
	"context"
	"errors"
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
)

// Config bounds the queue.
type Config struct {
	// MaxBytes is the byte budget: the summed Weight of every batch pushed
	// and not yet Done. It must be at least one batch's largest weight.
	MaxBytes int64
	// Ledger, if set, is the account the queue adds its lines to
	// (received at Push, delivered at Done, dropped at Discard).
	Ledger *Ledger
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
type Queue struct {
	budget *semaphore.Weighted
	max    int64
	ledger *Ledger
	ready  chan struct{} // holds a token while batches may be waiting

	mu          sync.Mutex
	items       deque         // guarded by mu
	outstanding int           // pushed and not Done or discarded; guarded by mu
	closed      bool          // no more pushes; guarded by mu
	idle        chan struct{} // closed when closed and outstanding is 0; guarded by mu

	linesIn, linesOut, linesDropped atomic.Uint64
	retriedBatches, retriedLines    atomic.Uint64
	bytes                           atomic.Int64
}

// New returns a queue with the given budget.
func New(cfg Config) *Queue {
	return &Queue{
		budget: semaphore.NewWeighted(cfg.MaxBytes),
		max:    cfg.MaxBytes,
		ledger: cfg.Ledger,
		ready:  make(chan struct{}, 1),
		idle:   make(chan struct{}),
	}
}

func (q *Queue) weight(b *framer.Batch) int64 { return min(int64(b.Weight()), q.max) }

// Push appends b, blocking while the budget is spent. On success the queue
// owns b until a worker reports it Done, and b's memory counts against the
// queue's budget instead of the framers' (framer.Batch.Uncharge); on error
// the caller still owns it.
func (q *Queue) Push(ctx context.Context, b *framer.Batch) error {
	w, lines := q.weight(b), uint64(b.Lines) // b may be Done as soon as it is queued
	if err := q.budget.Acquire(ctx, w); err != nil {
		return err
	}
	b.Uncharge()
	b.Enqueued = time.Now()
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		q.budget.Release(w)
		return ErrClosed
	}
	q.bytes.Add(w)
	q.items.pushBack(b)
	q.outstanding++
	q.linesIn.Add(lines)
	q.ledger.Received(lines)
	q.mu.Unlock()
	q.signal()
	return nil
}

// signal leaves a token in ready, if there is none yet.
func (q *Queue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// Ready is signalled when batches may be waiting. A worker that receives from
// it must call TryPop, which passes the signal on when batches remain.
func (q *Queue) Ready() <-chan struct{} { return q.ready }

// TryPop appends to dst up to maxBatches waiting batches, stopping before the
// total length would pass maxBytes (but taking at least one), and returns dst.
// It does not block. The worker owns the popped batches until it reports
// each of them with Done or Requeue.
func (q *Queue) TryPop(dst []*framer.Batch, maxBatches, maxBytes int) []*framer.Batch {
	q.mu.Lock()
	size := 0
	for n := 0; n < maxBatches && q.items.len() > 0; n++ {
		l := len(q.items.front().Data)
		if n > 0 && size+l > maxBytes {
			break
		}
		size += l
		dst = append(dst, q.items.popFront())
	}
	more := q.items.len() > 0
	q.mu.Unlock()
	if more {
		q.signal()
	}
	return dst
}

// Requeue puts batches whose delivery failed back at the front of the queue,
// in their original order, for another worker.
func (q *Queue) Requeue(bs []*framer.Batch) {
	if len(bs) == 0 {
		return
	}
	q.mu.Lock()
	for i := len(bs) - 1; i >= 0; i-- {
		q.retriedLines.Add(uint64(bs[i].Lines))
		q.items.pushFront(bs[i])
	}
	q.mu.Unlock()
	q.retriedBatches.Add(uint64(len(bs)))
	q.signal()
}

// Done reports b delivered: its bytes were acknowledged by a target. The
// batch is released and its budget returned.
func (q *Queue) Done(b *framer.Batch) {
	q.linesOut.Add(uint64(b.Lines))
	q.ledger.Delivered(uint64(b.Lines))
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
	q.bytes.Add(-w)
	q.budget.Release(w)
	q.mu.Lock()
	q.outstanding--
	q.checkIdle()
	q.mu.Unlock()
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
		q.mu.Lock()
		if q.items.len() == 0 {
			q.mu.Unlock()
			return lines
		}
		b := q.items.popFront()
		q.mu.Unlock()
		lines += uint64(b.Lines)
		q.linesDropped.Add(uint64(b.Lines))
		q.ledger.Dropped(DropShutdown, uint64(b.Lines))
		q.finish(b)
	}
}

// Stats returns the queue's counters.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	depth := q.items.len()
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
