package dispatch

import (
	"context"
	"testing"
)

// The ledger closes through a queue's life: received at Push, delivered at
// Done (whole or in part), dropped by reason before the queue or at
// Discard; a book sums the ledgers of one name.
func TestLedgerCloses(t *testing.T) {
	l := NewLedger()
	q := New(Config{MaxBytes: 1 << 20, Ledger: l})
	ctx := context.Background()
	for range 3 {
		if err := q.Push(ctx, pool.NewBatch([]byte("a\nb\n"), 2)); err != nil {
			t.Fatal(err)
		}
	}
	bs := q.TryPop(nil, 1, 1<<20)
	q.DeliveredPart(1) // the target acknowledged the first line of it
	bs[0].Lines--
	q.Done(bs[0])
	l.DropRead(DropOversize, 2)
	l.DropRead(DropIncomplete, 0) // nothing to count
	q.CloseInput()
	if n := q.Discard(); n != 4 {
		t.Fatalf("discarded %d lines, want 4", n)
	}
	st := l.Stats()
	want := LedgerStats{Received: 8, Delivered: 2, InFlight: 0,
		Dropped: map[string]uint64{DropOversize: 2, DropIncomplete: 0, DropMemory: 0, DropShutdown: 4}}
	if st.Received != want.Received || st.Delivered != want.Delivered || st.InFlight != 0 || st.DroppedTotal() != 6 || !st.Closed() {
		t.Fatalf("ledger %+v, want %+v", st, want)
	}
	for r, v := range want.Dropped {
		if st.Dropped[r] != v {
			t.Fatalf("dropped %s = %d, want %d", r, st.Dropped[r], v)
		}
	}
	book := NewBook()
	book.Add("logs", l)
	other := NewLedger()
	other.DropRead(DropMemory, 3)
	book.Add("logs", other)
	book.Add("web", NewLedger())
	if got := book.Stats("logs"); got.Received != 11 || got.Dropped[DropMemory] != 3 || !got.Closed() {
		t.Fatalf("book %+v", got)
	}
	if names := book.Names(); len(names) != 2 || names[0] != "logs" || names[1] != "web" {
		t.Fatalf("names %v", names)
	}
	var none *Ledger
	none.Received(1)
	none.DropRead(DropShutdown, 1)
	if st := none.Stats(); st.Received != 0 || st.Dropped == nil {
		t.Fatalf("a nil ledger counted: %+v", st)
	}
}

// In the middle of a queue's life, in flight is what is neither delivered
// nor dropped, and the ledger still closes.
func TestLedgerInFlight(t *testing.T) {
	l := NewLedger()
	l.Received(8)
	l.Delivered(2)
	l.Dropped(DropShutdown, 2)
	st := l.Stats()
	if st.InFlight != 4 || !st.Closed() {
		t.Fatalf("%+v: want 4 in flight, closed", st)
	}
	st.InFlight = 3
	if st.Closed() {
		t.Fatal("a ledger with a line unaccounted for says it closes")
	}
}

// A spool's lines across two instances: the first leaves them spooled,
// the second replays them (received again); the book's sum of received
// minus replayed is what the clients sent.
func TestLedgerSpooledAndReplayed(t *testing.T) {
	first, second := NewLedger(), NewLedger()
	first.Received(10)
	first.Delivered(4)
	first.Spooled(6)
	second.Replayed(6)
	second.Received(5) // sent to the second instance
	second.Delivered(11)
	for i, l := range []*Ledger{first, second} {
		if st := l.Stats(); !st.Closed() || st.InFlight != 0 {
			t.Fatalf("ledger %d: %+v", i, st)
		}
	}
	book := NewBook()
	book.Add("logs", first)
	book.Add("logs", second)
	st := book.Stats("logs")
	if st.Received-st.Replayed != 15 || st.Replayed != 6 || st.Spooled != 6 || st.Delivered != 15 || !st.Closed() {
		t.Fatalf("book %+v: want received - replayed = 15 sent", st)
	}
}

// A pop that leaves batches behind passes the ready signal on, so another
// worker takes them without waiting for the next push.
func TestTryPopPassesTheSignalOn(t *testing.T) {
	q := New(Config{MaxBytes: 1 << 20})
	for range 3 {
		if err := q.Push(context.Background(), batch("x")); err != nil {
			t.Fatal(err)
		}
	}
	<-q.Ready()
	got := q.TryPop(nil, 1, 1<<20)
	select {
	case <-q.Ready():
	default:
		t.Fatal("batches remain but no signal was passed on")
	}
	got = q.TryPop(got, 2, 1<<20)
	select {
	case <-q.Ready():
		t.Fatal("a signal with nothing left to pop")
	default:
	}
	for _, b := range got {
		q.Done(b)
	}
}
