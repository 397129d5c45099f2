package framer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// Exact figures of the framer's sizes and accounting, which the behaviour
// tests only bound.

func TestSizeClasses(t *testing.T) {
	tests := []struct {
		name string
		n    int
		want int
	}{
		{name: "tiny", n: 1, want: 512},
		{name: "smallest class", n: 512, want: 512},
		{name: "one over", n: 513, want: 1024},
		{name: "power of two", n: 4096, want: 4096},
		{name: "power of two plus one", n: 4097, want: 8192},
	}
	for _, tt := range tests {
		if got := NewPool().Get(tt.n).Weight(); got != tt.want || classSize(tt.n) != tt.want {
			t.Errorf("%s: Get(%d) weighs %d (classSize %d), want %d", tt.name, tt.n, got, classSize(tt.n), tt.want)
		}
	}
	// A line of the maximum, its newline and one read: 1024+1+1024 needs
	// the 4 KiB class.
	if got := (Config{ReadBytes: 1024, MaxLineBytes: 1024}).MaxBatchBytes(); got != 4096 {
		t.Errorf("MaxBatchBytes = %d, want 4096", got)
	}
}

// Reads that cut after many lines hand the read buffer itself on as the
// batch and carry the tail into a buffer of its own; small batches are
// copied into buffers of their size. Every line comes out once, in order.
func TestBigAndSmallBatches(t *testing.T) {
	var in []byte
	for i := range 100 { // distinct bytes all along: a tail lost or misplaced shows
		in = append(in, strings.Repeat(fmt.Sprintf("%03d,", i), 24)+"end\n"...)
	}
	cfg := Config{ReadBytes: 1024, MaxLineBytes: 4096}
	// Reads of 1000 bytes: 10 lines and a 0-byte tail, or 9 and a tail.
	f := New(&chunkReader{data: in, sizes: []int{1000, 950, 30}}, cfg, NewPool())
	var out []byte
	bigs, smalls := 0, 0
	for {
		b, err := f.Next()
		if err != nil {
			break
		}
		out = append(out, b.Data...)
		switch {
		case b.Weight() >= 1024:
			bigs++
		case b.Weight() > 2*len(b.Data) && len(b.Data) > 256:
			t.Fatalf("a small batch of %d bytes weighs %d", len(b.Data), b.Weight())
		default:
			smalls++
		}
		b.Release()
	}
	if !bytes.Equal(out, in) {
		t.Fatalf("output differs from input (%d vs %d bytes)", len(out), len(in))
	}
	if bigs == 0 || smalls == 0 {
		t.Fatalf("%d big and %d small batches: both paths must run", bigs, smalls)
	}
}

// A clean end of stream right when the tail fills its buffer still gets its
// newline (the buffer grows by one byte's class).
func TestTailFillingItsBufferAtEOF(t *testing.T) {
	cfg := Config{ReadBytes: 512, MaxLineBytes: 4096}
	in := bytes.Repeat([]byte("t"), 512)
	cr := &chunkReader{data: in, withErr: true} // the 512 bytes come with EOF
	f := New(cr, cfg, NewPool())
	f.Budget = NewBudget(1 << 20)
	b, err := f.Next()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Data, append(in, '\n')) {
		t.Fatalf("got %d bytes, want the 512 and a newline", len(b.Data))
	}
	b.Release()
	if _, err := f.Next(); err != io.EOF {
		t.Fatalf("then %v, want EOF", err)
	}
	if st := f.Budget.Stats(); st.Used != 0 {
		t.Fatalf("%d bytes charged", st.Used)
	}
}

// A batch of several lines where one is exactly the longest allowed and one
// is longer: only the longer one is dropped.
func TestExactMaxKeptInALongBatch(t *testing.T) {
	cfg := Config{ReadBytes: 4096, MaxLineBytes: 10}
	in := []byte("0123456789\n0123456789X\nok\n")
	f := New(&chunkReader{data: in}, cfg, NewPool())
	var out []byte
	var drops []Drop
	f.OnDrop = func(d Drop) { drops = append(drops, d) }
	for {
		b, err := f.Next()
		if err != nil {
			break
		}
		out = append(out, b.Data...)
		b.Release()
	}
	if string(out) != "0123456789\nok\n" || len(drops) != 1 || drops[0].Bytes != 11 {
		t.Fatalf("out %q drops %+v", out, drops)
	}
}

// The budget's accounting, exactly: a batch carries its weight until
// Uncharge, the framer's reservation goes when it waits between lines.
func TestBudgetChargesExactly(t *testing.T) {
	cfg := Config{ReadBytes: 1024, MaxLineBytes: 4096}
	budget := NewBudget(1 << 20)
	line := append(bytes.Repeat([]byte("y"), 899), '\n') // a big batch: the read buffer itself
	lr := &lazyReader{chunkReader: &chunkReader{data: line}}
	f := New(lr, cfg, NewPool())
	lr.f, f.Budget = f, budget
	b, err := f.Next()
	if err != nil {
		t.Fatal(err)
	}
	if b.Weight() != 1024 || b.charge != 1024 {
		t.Fatalf("batch weighs %d and carries %d, want 1024 both", b.Weight(), b.charge)
	}
	used := budget.Stats().Used
	if used < 1024 {
		t.Fatalf("used %d with a 1024-byte batch held", used)
	}
	b.Uncharge()
	if got := budget.Stats().Used; got != used-1024 {
		t.Fatalf("Uncharge left %d, want %d", got, used-1024)
	}
	b.Uncharge() // twice is harmless
	b.Release()
	if _, err := f.Next(); err != io.EOF {
		t.Fatalf("%v, want EOF", err)
	}
	if st := budget.Stats(); st.Used != 0 || st.Peak < 1024 || st.Max != 1<<20 {
		t.Fatalf("stats %+v", st)
	}
}

// An ordinary read waits for room as long as it takes (it is never dropped),
// and goes on when another framer gives memory back.
func TestOrdinaryReadWaitsForRoom(t *testing.T) {
	cfg := Config{ReadBytes: 1024, MaxLineBytes: 4096, MemoryWait: time.Millisecond}
	budget := NewBudget(8 << 10)
	if !budget.tryAcquire(8<<10, false) {
		t.Fatal("could not fill the budget")
	}
	f := New(&chunkReader{data: []byte("short\n")}, cfg, NewPool())
	f.Budget = budget
	dropped := make(chan Drop, 1)
	f.OnDrop = func(d Drop) { dropped <- d }
	got := make(chan []byte, 1)
	go func() {
		b, err := f.Next()
		if err != nil {
			got <- nil
			return
		}
		data := bytes.Clone(b.Data)
		b.Release() // before the test looks at the budget
		got <- data
	}()
	// Waiting well past MemoryWait: an ordinary read is not dropped.
	select {
	case d := <-dropped:
		t.Fatalf("dropped %+v while waiting for room", d)
	case b := <-got:
		t.Fatalf("read %q with the budget full", b)
	case <-time.After(50 * time.Millisecond):
	}
	// The reader may not have reached the budget in those 50 ms on a
	// loaded machine: it must wait once it does.
	for deadline := time.Now().Add(10 * time.Second); budget.Stats().Waits == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the read did not wait")
		}
	}
	budget.release(8 << 10)
	if b := <-got; string(b) != "short\n" {
		t.Fatalf("got %q", b)
	}
	f.Close()
	if st := budget.Stats(); st.Used != 0 {
		t.Fatalf("%d bytes charged", st.Used)
	}
}

// IdleSince is set only while the framer waits inside a line: not while it
// waits between lines, on either reading path.
func TestIdleSinceOnlyInsideALine(t *testing.T) {
	for _, lazy := range []bool{false, true} {
		block := make(chan struct{})
		br := newBlockingReader(block, "whole\n", "half")
		var r io.Reader = br
		if lazy {
			r = &blockingLazy{br}
		}
		f := New(r, Config{ReadBytes: 64, MaxLineBytes: 4096}, NewPool())
		b, err := f.Next()
		if err != nil || string(b.Data) != "whole\n" {
			t.Fatalf("lazy=%v: %q %v", lazy, b.Data, err)
		}
		b.Release()
		next := make(chan error, 1)
		go func() { _, err := f.Next(); next <- err }()
		// The framer now reads "half" and then blocks inside the line.
		br.waitBlocked()
		if f.IdleSince().IsZero() {
			t.Fatalf("lazy=%v: waiting inside a line, IdleSince is zero", lazy)
		}
		close(block)
		<-next
		if !f.IdleSince().IsZero() {
			t.Fatalf("lazy=%v: after the end, IdleSince is set", lazy)
		}
		// Between lines: a fresh framer blocked before any partial line.
		block2 := make(chan struct{})
		br2 := newBlockingReader(block2, "a\n")
		var r2 io.Reader = br2
		if lazy {
			r2 = &blockingLazy{br2}
		}
		f2 := New(r2, Config{ReadBytes: 64, MaxLineBytes: 4096}, NewPool())
		b2, _ := f2.Next()
		b2.Release()
		go func() { _, err := f2.Next(); next <- err }()
		br2.waitBlocked()
		if !f2.IdleSince().IsZero() {
			t.Fatalf("lazy=%v: waiting between lines, IdleSince is set", lazy)
		}
		close(block2)
		<-next
	}
}

// blockingReader returns its parts one per read, then blocks until block
// closes, then EOF.
type blockingReader struct {
	parts   [][]byte
	block   chan struct{}
	blocked chan struct{} // closed when a read starts to block
	once    bool
}

func newBlockingReader(block chan struct{}, parts ...string) *blockingReader {
	r := &blockingReader{block: block, blocked: make(chan struct{})}
	for _, p := range parts {
		r.parts = append(r.parts, []byte(p))
	}
	return r
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if len(r.parts) > 0 {
		n := copy(p, r.parts[0])
		r.parts = r.parts[1:]
		return n, nil
	}
	r.signal()
	<-r.block
	return 0, io.EOF
}

func (r *blockingReader) signal() {
	if !r.once {
		r.once = true
		close(r.blocked)
	}
}

// waitBlocked waits until a read blocks.
func (r *blockingReader) waitBlocked() { <-r.blocked }

// blockingLazy is blockingReader as a BufferReader that gives its buffer
// back before it blocks, as a socket would.
type blockingLazy struct{ *blockingReader }

func (r *blockingLazy) ReadBuffer(get func() []byte, put func()) (int, error) {
	if len(r.parts) == 0 {
		put()
		r.signal()
		<-r.block
		return 0, io.EOF
	}
	buf := get()
	if buf == nil {
		return 0, nil
	}
	return r.Read(buf)
}

// The small accessors and the edges of the API.
func TestAccessorsAndEdges(t *testing.T) {
	f := New(&chunkReader{data: []byte("abc\n0123456789ABCDEF")}, Config{ReadBytes: 4, MaxLineBytes: 8}, NewPool())
	b, err := f.Next()
	if err != nil || string(b.Data) != "abc\n" {
		t.Fatalf("%q %v", b.Data, err)
	}
	b.Release()
	// The rest, 16 bytes without a newline, passed the limit of 8 in the
	// same read: the framer skips it.
	if !f.Discarding() || f.Partial() != 0 {
		t.Fatalf("after a line and a long rest: partial %d, discarding %v", f.Partial(), f.Discarding())
	}
	f.Close()
	if f.Partial() != 0 {
		t.Fatalf("partial %d after Close", f.Partial())
	}
	h := New(&chunkReader{data: []byte("ok\npart")}, Config{ReadBytes: 4, MaxLineBytes: 8}, NewPool())
	if b, err := h.Next(); err != nil || string(b.Data) != "ok\n" || h.Partial() != 4 || h.Discarding() {
		t.Fatalf("after a line and a short rest: %q %v, partial %d", b.Data, err, h.Partial())
	}
	h.Close()
	g := New(&chunkReader{data: []byte("0123456789ABCDEF")}, Config{ReadBytes: 4, MaxLineBytes: 8}, NewPool())
	var drops []Drop
	g.OnDrop = func(d Drop) { drops = append(drops, d) }
	for range 3 { // three reads of 4: 12 bytes, past the limit of 8
		g.ensureRoom()
		n, _ := g.r.Read(g.cur.buf[g.n:][:4])
		g.consume(g.n, g.n+n)
	}
	if !g.Discarding() || g.Partial() != 0 || len(drops) != 1 || drops[0].Reason != ReasonOversize {
		t.Fatalf("discarding %v partial %d drops %+v", g.Discarding(), g.Partial(), drops)
	}
	g.Close()
	if (Config{ReadBytes: 1, MaxLineBytes: 1, MemoryWait: -1}).Validate() == nil {
		t.Fatal("a negative memory wait was accepted")
	}
	if !errors.Is((Config{ReadBytes: 0, MaxLineBytes: 1}).Validate(), ErrConfig) {
		t.Fatal("a zero read size was accepted")
	}
	if st := NewBudget(0).Stats(); st.Max != 1 {
		t.Fatalf("a budget of 0 bytes has max %d, want 1", st.Max)
	}
	var nilBudget *Budget
	if st := nilBudget.Stats(); st != (BudgetStats{}) || nilBudget.acquire(5, true, time.Second, 0, nil) != nil {
		t.Fatal("a nil budget must be unlimited and empty")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a buffer beyond the largest class did not panic")
		}
	}()
	NewPool().Get(1 << 40)
}
