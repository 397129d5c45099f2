package framer

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ErrStopped is returned by Next when Framer.Stop closed while the framer
// waited for memory.
var ErrStopped = errors.New("framer: stopped while waiting for memory")

// Budget bounds the memory that every framer sharing it holds: read
// buffers, partial lines, and batches handed out until their charge moves
// elsewhere (Batch.Uncharge). It is global, not per connection, so the total
// is set by configuration whatever the number of clients.
//
// Two kinds of request share it:
//   - a framer that carries no line longer than one read (the ordinary case)
//     may use the whole budget, and waits while it is spent: its client is
//     then held back by TCP;
//   - a framer growing a line longer than one read may use only up to
//     LongLineShare of the budget, and waits at most Config.MemoryWait for
//     room; then that line is dropped as ReasonMemory and skipped to its
//     newline without buffering.
//
// Long lines can therefore never take the room ordinary clients need, and
// no wait is unbounded unless the whole budget is held by ordinary reads and
// batches waiting for the queue, which the queue releases as it delivers.
//
// One state would never end by itself: every byte charged is held by
// framers that wait for more (each holding a partial line, none reading,
// no batch charged), so nothing is left to release. The budget is then
// stalled, and the framer whose wait completes the stall is refused at
// once: it drops its partial line as ReasonMemory and gives its memory
// back, so the others go on. A framer that holds nothing cannot stall it.
//
// A nil *Budget is unlimited.
type Budget struct {
	max, longMax int64

	mu      sync.Mutex
	used    int64         // guarded by mu
	waiters int           // guarded by mu
	held    int64         // what the waiters since the last wake hold; guarded by mu
	gen     uint64        // wakes so far; guarded by mu
	wake    chan struct{} // closed at a release while waiters > 0; guarded by mu

	peak     atomic.Int64
	waits    atomic.Uint64
	inUse    atomic.Int64
	refusals atomic.Uint64
}

// LongLineShare is the part of a Budget that lines longer than one read may
// hold together: three quarters.
const LongLineShare = 0.75

// NewBudget returns a budget of max bytes (at least 1).
func NewBudget(max int64) *Budget {
	if max < 1 {
		max = 1
	}
	return &Budget{max: max, longMax: int64(float64(max) * LongLineShare), wake: make(chan struct{})}
}

// BudgetStats describe a Budget.
type BudgetStats struct {
	Max   int64  // the bound, in bytes
	Used  int64  // charged now
	Peak  int64  // the most charged at once
	Waits uint64 // requests that had to wait for room
	// Refused counts lines dropped for want of room: long lines that
	// found none within MemoryWait, and partial lines of a stalled budget.
	Refused uint64
}

// Stats returns the budget's figures; the zero value for a nil budget.
func (b *Budget) Stats() BudgetStats {
	if b == nil {
		return BudgetStats{}
	}
	return BudgetStats{Max: b.max, Used: b.inUse.Load(), Peak: b.peak.Load(), Waits: b.waits.Load(), Refused: b.refusals.Load()}
}

func (b *Budget) limit(long bool) int64 {
	if long {
		return b.longMax
	}
	return b.max
}

// tryAcquire charges n bytes if they fit now.
func (b *Budget) tryAcquire(n int64, long bool) bool {
	if b == nil || n <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.take(n, long)
}

// take charges n if it fits under the limit. b.mu must be held.
func (b *Budget) take(n int64, long bool) bool {
	if b.used+n > b.limit(long) && b.used > 0 {
		// An empty budget always grants one request, so a single
		// read larger than the bound cannot wait forever.
		return false
	}
	b.used += n
	b.inUse.Store(b.used)
	if b.used > b.peak.Load() {
		b.peak.Store(b.used)
	}
	return true
}

// acquire charges n bytes, waiting for room until stop closes or, when
// timeout > 0, until it passes. held is what the caller holds while it
// waits: only a caller that would wait for good (no timeout) may pass
// more than zero, since one with a timeout ends its own wait. It returns
// ErrStopped when stop closed, and errNoRoom when the timeout passed or
// when the caller holds something and its wait would stall the budget
// (see Budget).
func (b *Budget) acquire(n int64, long bool, timeout time.Duration, held int64, stop <-chan struct{}) error {
	if b == nil || n <= 0 {
		return nil
	}
	if timeout > 0 {
		held = 0 // its wait ends by itself: it cannot stall the budget
	}
	var expire <-chan time.Time
	counted := false
	for {
		b.mu.Lock()
		if b.take(n, long) {
			b.mu.Unlock()
			return nil
		}
		if held > 0 && b.used <= b.held+held {
			// Everything else charged is held by waiters: no release
			// can come. This framer gives way.
			b.mu.Unlock()
			b.refusals.Add(1)
			return errNoRoom
		}
		b.waiters++
		b.held += held
		wake, gen := b.wake, b.gen
		b.mu.Unlock()
		if !counted {
			counted = true
			b.waits.Add(1)
			if timeout > 0 {
				t := time.NewTimer(timeout)
				defer t.Stop()
				expire = t.C
			}
		}
		var err error
		select {
		case <-wake:
		case <-stop:
			err = ErrStopped
		case <-expire:
			err = errNoRoom
			b.refusals.Add(1)
		}
		b.mu.Lock()
		b.waiters--
		if b.gen == gen { // not woken: a release took every waiter out of held
			b.held -= held
		}
		b.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

var errNoRoom = errors.New("framer: no room in the memory budget")

// release returns n bytes and wakes the waiters.
func (b *Budget) release(n int64) {
	if b == nil || n <= 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	b.inUse.Store(b.used)
	if b.waiters > 0 {
		// The woken hold what they held, but wait no more until they
		// try again: a framer that finds the budget full meanwhile must
		// not count them as stalled.
		close(b.wake)
		b.wake = make(chan struct{})
		b.held = 0
		b.gen++
	}
	b.mu.Unlock()
}
