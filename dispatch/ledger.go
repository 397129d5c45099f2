package dispatch

import (
	"slices"
	"sync"
	"sync/atomic"
)

// Reasons a line is dropped, as the ledger counts them.
const (
	// DropOversize: longer than --max-line-bytes.
	DropOversize = "oversize"
	// DropIncomplete: a fragment the client never finished (it reset,
	// went quiet past --line-timeout, or was cut at the drain deadline).
	DropIncomplete = "incomplete"
	// DropMemory: a long line that found no room in the client memory
	// budget.
	DropMemory = "memory"
	// DropShutdown: read but not delivered when the shutdown deadline
	// passed.
	DropShutdown = "shutdown"
	// DropBinary: a UDP datagram holding a NUL byte, which no line of
	// text does (a compressed GELF datagram, a stray probe), dropped
	// whole.
	DropBinary = "binary"
	// DropUnrouted: routing by key found no target group for the line
	// (no group takes its key's value, and there is no default group).
	DropUnrouted = "unrouted"
	// DropSpoolFull: the spool was full and its policy (--spool-full
	// drop-oldest) deleted the oldest lines not yet queued.
	DropSpoolFull = "spool_full"
	// DropSpoolLost: spooled lines that could not be read back: their
	// records were damaged on disk, or their segment file removed, while
	// ndlb ran.
	DropSpoolLost = "spool_lost"
)

// DropReasons lists every reason, in the order reports show them.
var DropReasons = []string{DropOversize, DropIncomplete, DropMemory, DropShutdown, DropBinary, DropUnrouted, DropSpoolFull, DropSpoolLost}

// Ledger is the account of one listener's lines: every line read from a
// client (or replayed from a spool) is received, and ends delivered,
// dropped with a reason, or spooled (left in a spool at the stop); until
// then it is in flight. Several queues may share one ledger (a listener
// replaced by a reload keeps its account). Its methods are safe for
// concurrent use; a nil *Ledger counts nothing.
type Ledger struct {
	received, delivered                    atomic.Uint64
	oversize, incomplete, memory, shutdown atomic.Uint64
	binary, unrouted, spoolFull, spoolLost atomic.Uint64
	spooled, replayed                      atomic.Uint64
	inherited                              atomic.Uint64 // of replayed, left by an earlier instance in this process
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{} }

// LedgerStats is a ledger at one moment.
type LedgerStats struct {
	Received  uint64 `json:"received"`
	Delivered uint64 `json:"delivered"`
	InFlight  uint64 `json:"in_flight"`
	// Spooled counts lines left in a spool when its listener stopped, or
	// handed to its replacement's queue by a reload (Queue.HandOver):
	// neither delivered nor lost, they are delivered by the next
	// instance or process (which counts them as received again).
	Spooled uint64 `json:"spooled,omitempty"`
	// Replayed counts the lines found in the spool at open, which an
	// earlier instance or process left there (its Spooled): they are
	// part of Received, so Received - Replayed is what clients sent this
	// instance, and over the instances and processes that share a spool,
	// the sum of Received - Replayed is what the clients sent.
	Replayed uint64            `json:"replayed,omitempty"`
	Dropped  map[string]uint64 `json:"dropped"`
	// Inherited is the part of Replayed that an earlier instance of the
	// same listener in this process left (its Spooled): a reload that
	// replaced the listener handed the spool on. Book.Net takes it out
	// of Received, Replayed and Spooled, so that a listener's account
	// over the process says what clients sent, what is left in the spool
	// at exit, and what an earlier process left.
	Inherited uint64 `json:"-"`
}

// DroppedTotal adds up the drops.
func (s LedgerStats) DroppedTotal() uint64 {
	var n uint64
	for _, v := range s.Dropped {
		n += v
	}
	return n
}

// Closed reports whether received = delivered + dropped + in flight, which
// holds by construction; tests and the exit summary assert it anyway.
func (s LedgerStats) Closed() bool {
	return s.Received == s.Delivered+s.DroppedTotal()+s.Spooled+s.InFlight
}

func (l *Ledger) counter(reason string) *atomic.Uint64 {
	switch reason {
	case DropOversize:
		return &l.oversize
	case DropIncomplete:
		return &l.incomplete
	case DropMemory:
		return &l.memory
	case DropBinary:
		return &l.binary
	case DropUnrouted:
		return &l.unrouted
	case DropSpoolFull:
		return &l.spoolFull
	case DropSpoolLost:
		return &l.spoolLost
	default:
		return &l.shutdown
	}
}

// Received counts lines read and queued.
func (l *Ledger) Received(lines uint64) {
	if l != nil {
		l.received.Add(lines)
	}
}

// Delivered counts lines a target acknowledged.
func (l *Ledger) Delivered(lines uint64) {
	if l != nil {
		l.delivered.Add(lines)
	}
}

// DropRead counts lines that were read and dropped before they reached a
// queue: they are received and dropped at once.
func (l *Ledger) DropRead(reason string, lines uint64) {
	if l != nil && lines > 0 {
		l.counter(reason).Add(lines)
		l.received.Add(lines)
	}
}

// Dropped counts lines already received (queued) and then dropped.
func (l *Ledger) Dropped(reason string, lines uint64) {
	if l != nil && lines > 0 {
		l.counter(reason).Add(lines)
	}
}

// Spooled counts lines left in a spool at a listener's stop (see
// LedgerStats.Spooled).
func (l *Ledger) Spooled(lines uint64) {
	if l != nil {
		l.spooled.Add(lines)
	}
}

// Replayed counts lines found in a spool at open, left by an earlier
// instance or process: received again (see LedgerStats.Replayed).
func (l *Ledger) Replayed(lines uint64) {
	if l != nil {
		l.received.Add(lines) // first: Stats reads replayed before received
		l.replayed.Add(lines)
	}
}

// Inherited marks lines of those Replayed counted as left by an earlier
// instance in this process (LedgerStats.Inherited).
func (l *Ledger) Inherited(lines uint64) {
	if l != nil {
		l.inherited.Add(lines)
	}
}

// Stats returns the account now. Delivered and dropped are read before
// received, so in flight is never negative.
func (l *Ledger) Stats() LedgerStats {
	if l == nil {
		return LedgerStats{Dropped: map[string]uint64{}}
	}
	st := LedgerStats{Delivered: l.delivered.Load(), Dropped: make(map[string]uint64, len(DropReasons))}
	var dropped uint64
	for _, r := range DropReasons {
		v := l.counter(r).Load()
		st.Dropped[r] = v
		dropped += v
	}
	st.Inherited = l.inherited.Load() // before replayed, which counts it first: never more
	st.Replayed = l.replayed.Load()   // before received, which counts it first: never more
	st.Received = l.received.Load()
	st.Spooled = l.spooled.Load()
	st.InFlight = st.Received - min(st.Received, st.Delivered+dropped+st.Spooled)
	return st
}

// Book keeps the ledgers of listeners by name, including those of instances
// a reload replaced or removed, so a listener's account survives them. Its
// methods are safe for concurrent use.
type Book struct {
	mu     sync.Mutex
	names  []string             // in the order first added; guarded by mu
	byName map[string][]*Ledger // guarded by mu
}

// NewBook returns an empty book.
func NewBook() *Book { return &Book{byName: make(map[string][]*Ledger)} }

// Add files l under name.
func (b *Book) Add(name string, l *Ledger) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.byName[name]; !ok {
		b.names = append(b.names, name)
	}
	b.byName[name] = append(b.byName[name], l)
}

// Names returns the names in the order they were first added.
func (b *Book) Names() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.names)
}

// Stats returns the sum of name's ledgers.
func (b *Book) Stats(name string) LedgerStats {
	b.mu.Lock()
	ls := slices.Clone(b.byName[name])
	b.mu.Unlock()
	sum := LedgerStats{Dropped: make(map[string]uint64, len(DropReasons))}
	for _, l := range ls {
		st := l.Stats()
		sum.Received += st.Received
		sum.Delivered += st.Delivered
		sum.InFlight += st.InFlight
		sum.Spooled += st.Spooled
		sum.Replayed += st.Replayed
		sum.Inherited += st.Inherited
		for r, v := range st.Dropped {
			sum.Dropped[r] += v
		}
	}
	return sum
}

// Net is Stats with the lines handed on within the process taken out
// (LedgerStats.Inherited): they were received once, and are not left in
// the spool. So Received is what clients sent (and earlier processes left),
// Spooled what is left in the spool now, and Replayed what earlier
// processes left: the account of the exit's ledger line. Stats keeps them
// in, so that its counters only grow.
func (b *Book) Net(name string) LedgerStats {
	sum := b.Stats(name)
	// An instance still replaying may have counted them before its
	// predecessor's Spooled is read: never take out more than is there.
	in := min(sum.Inherited, sum.Spooled, sum.Replayed)
	sum.Received -= in
	sum.Replayed -= in
	sum.Spooled -= in
	sum.Inherited = 0
	return sum
}
