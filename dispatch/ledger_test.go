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
