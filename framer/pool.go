package framer

import (
	"math/bits"
	"sync"
	"time"
)

const (
	minClassShift = 9  // smallest buffer: 512 bytes
	maxClassShift = 31 // largest buffer: 2 GiB, beyond any valid MaxLineBytes
)

// Pool hands out Batches whose buffers come in power-of-two size classes.
// It is safe for concurrent use; one Pool is normally shared by every Framer
// of a process.
type Pool struct {
	classes [maxClassShift - minClassShift + 1]sync.Pool
}

// NewPool returns an empty Pool.
func NewPool() *Pool { return &Pool{} }

// classOf returns the index of the smallest class holding n bytes.
func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// classSize is the size of the buffers of n's class.
func classSize(n int) int { return 1 << (classOf(n) + minClassShift) }

// Get returns an empty Batch whose buffer holds at least n bytes.
func (p *Pool) Get(n int) *Batch {
	c := classOf(n)
	if c >= len(p.classes) {
		panic("framer: buffer request beyond the largest size class")
	}
	if b, ok := p.classes[c].Get().(*Batch); ok {
		return b
	}
	return &Batch{buf: make([]byte, 1<<(c+minClassShift)), pool: p, class: c}
}

func (p *Pool) put(b *Batch) {
	b.Uncharge()
	b.Data, b.Lines, b.Lane, b.Spool = nil, 0, 0, SpoolRef{}
	p.classes[b.class].Put(b)
}

// Batch is one or more whole lines, each ending in '\n'.
//
// A Batch belongs to whoever received it from Framer.Next; that owner must
// call Release exactly once when the bytes are no longer needed, and must not
// touch Data afterwards.
type Batch struct {
	// Data holds the lines. It aliases the pooled buffer.
	Data []byte
	// Lines is the number of lines in Data.
	Lines int
	// Enqueued is when the batch was first queued (dispatch sets it), for
	// the delivery latency.
	Enqueued time.Time
	// Lane is the dispatch lane the batch waits in (dispatch sets it; 0,
	// the shared lane, unless routing by key put it in a target's).
	Lane int
	// Spool names the spool record the batch was read from (Set false
	// without a spool): it is acknowledged there once the batch is
	// delivered.
	Spool SpoolRef

	buf    []byte
	pool   *Pool
	class  int
	budget *Budget // what charge is owed to, until Uncharge
	charge int64
}

// SpoolRef is a spool record's ID, as package spool gives it.
type SpoolRef struct {
	Seg   uint64
	Off   int64
	Lines int // the record's lines (the batch's may be cut by a partial delivery)
	Set   bool
}

// Uncharge returns the batch's memory charge to the framers' Budget: the
// batch's memory is now counted elsewhere (the queue's byte budget). It is
// safe to call more than once; Release calls it.
func (b *Batch) Uncharge() {
	if b.budget != nil {
		b.budget.release(b.charge)
		b.budget, b.charge = nil, 0
	}
}

// Weight is the memory the batch holds, in bytes: the capacity of its buffer.
// Queues that bound memory count this, not len(Data).
func (b *Batch) Weight() int { return len(b.buf) }

// Release returns the batch and its buffer to the pool.
func (b *Batch) Release() { b.pool.put(b) }

// GetEmpty is Get with Data empty and room for n bytes: append whole lines
// to it, at most n bytes, without it reallocating.
func (p *Pool) GetEmpty(n int) *Batch {
	b := p.Get(n)
	b.Data = b.buf[:0]
	return b
}

// NewBatch copies data (whole lines, each ending in '\n') into a pooled
// Batch. It is for producers other than a Framer, such as tests and the demo.
func (p *Pool) NewBatch(data []byte, lines int) *Batch {
	b := p.Get(len(data))
	b.Data = b.buf[:copy(b.buf, data)]
	b.Lines = lines
	return b
}
