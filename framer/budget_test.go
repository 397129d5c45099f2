package framer

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// holdReader sends a long line without its newline, then blocks until
// release closes (the client that sits on half a line).
type holdReader struct {
	data    []byte
	release chan struct{}
}

func (r *holdReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		<-r.release
		return 0, io.EOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// Framers that each grow a long line share a budget: together they never
// charge more than the long-line share, the lines that find no room are
// dropped as ReasonMemory, and an ordinary stream still flows beside them.
func TestBudgetBoundsLongLinesAndOrdinaryClientsFlow(t *testing.T) {
	const maxLine = 64 << 10
	cfg := Config{ReadBytes: 1 << 10, MaxLineBytes: maxLine, MemoryWait: 20 * time.Millisecond}
	budget := NewBudget(512 << 10)
	pool := NewPool()
	release := make(chan struct{})
	drops := make(chan Drop, 64)
	done := make(chan error, 32)
	for range 32 {
		f := New(&holdReader{data: bytes.Repeat([]byte("x"), maxLine-100), release: release}, cfg, pool)
		f.Budget = budget
		f.OnDrop = func(d Drop) { drops <- d }
		go func() {
			for {
				b, err := f.Next()
				if err != nil {
					f.Close() // before the test looks at the budget
					done <- err
					return
				}
				b.Release()
			}
		}()
	}
	// The ordinary client: many short lines, every one delivered.
	in := bytes.Repeat([]byte("short line\n"), 20000)
	f := New(&chunkReader{data: in, sizes: []int{700}}, cfg, pool)
	f.Budget = budget
	var out []byte
	for {
		b, err := f.Next()
		if err != nil {
			break
		}
		out = append(out, b.Data...)
		b.Release()
	}
	if !bytes.Equal(out, in) {
		t.Fatalf("ordinary client got %d bytes, want %d", len(out), len(in))
	}
	memory := 0
	for memory == 0 {
		select {
		case d := <-drops:
			if d.Reason == ReasonMemory {
				memory++
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no line dropped for memory")
		}
	}
	close(release)
	for range 32 {
		<-done
	}
	st := budget.Stats()
	if st.Peak > st.Max {
		t.Fatalf("peak %d over the budget %d", st.Peak, st.Max)
	}
	if st.Used != 0 {
		t.Fatalf("%d bytes still charged after every framer finished", st.Used)
	}
	t.Logf("budget %+v", st)
}

// A framer waiting for memory returns ErrStopped when Stop closes, and gives
// back what it held.
func TestBudgetWaitStops(t *testing.T) {
	budget := NewBudget(1)
	hog := New(&chunkReader{data: []byte("abc")}, DefaultConfig(), NewPool())
	hog.Budget = budget
	if !budget.tryAcquire(1<<20, false) { // the empty budget grants one request
		t.Fatal("empty budget refused")
	}
	stop := make(chan struct{})
	f := New(&chunkReader{data: []byte("line\n")}, DefaultConfig(), NewPool())
	f.Budget, f.Stop = budget, stop
	errc := make(chan error, 1)
	go func() { _, err := f.Next(); errc <- err }()
	close(stop)
	if err := <-errc; !errors.Is(err, ErrStopped) {
		t.Fatalf("err = %v, want ErrStopped", err)
	}
	budget.release(1 << 20)
	if st := budget.Stats(); st.Used != 0 {
		t.Fatalf("used %d", st.Used)
	}
}

// With a budget, output is unchanged and every charge comes back once the
// batches are released, on both reading paths.
func TestBudgetChargesComeBack(t *testing.T) {
	for _, tt := range tableTests {
		for _, lazy := range []bool{false, true} {
			cfg := DefaultConfig()
			if tt.maxLine > 0 {
				cfg.MaxLineBytes = tt.maxLine
			}
			budget := NewBudget(1 << 30)
			var r io.Reader = &chunkReader{data: []byte(tt.in), sizes: tt.sizes, err: tt.err}
			lr := &lazyReader{chunkReader: r.(*chunkReader)}
			if lazy {
				r = lr
			}
			f := New(r, cfg, NewPool())
			lr.f, f.Budget = f, budget
			var out []byte
			var held []*Batch
			for {
				b, err := f.Next()
				if err != nil {
					break
				}
				out = append(out, b.Data...)
				held = append(held, b)
			}
			want, _, _ := reference([]byte(tt.in), cfg.MaxLineBytes, tt.err == nil)
			if !bytes.Equal(out, want) {
				t.Fatalf("%s: got %q, want %q", tt.name, out, want)
			}
			for _, b := range held {
				b.Release()
			}
			if st := budget.Stats(); st.Used != 0 {
				t.Fatalf("%s lazy=%v: %d bytes still charged", tt.name, lazy, st.Used)
			}
		}
	}
}

// barrierReader gives its first chunk only once every reader sharing the
// barrier has asked for one, then the rest of its data as asked.
type barrierReader struct {
	data    []byte
	first   int
	arrived *sync.WaitGroup
	started bool
}

func (r *barrierReader) Read(p []byte) (int, error) {
	if !r.started {
		r.started = true
		r.arrived.Done()
		r.arrived.Wait()
		return copy(p, r.data[:r.first]), r.after(r.first)
	}
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data)
	return n, r.after(n)
}

func (r *barrierReader) after(n int) error { r.data = r.data[n:]; return nil }

// Framers that each hold part of a line shorter than one read, and all
// wait for room for the rest, hold the whole budget between them: nothing
// is left to release it. The framer whose wait completes that stall drops
// its line as ReasonMemory instead of waiting, and the others go on; every
// line is delivered or dropped, and none waits forever.
func TestBudgetStalledByWaitersGivesWay(t *testing.T) {
	const (
		framers  = 4
		lines    = 3
		lineSize = 100 << 10
	)
	cfg := Config{ReadBytes: 64 << 10, MaxLineBytes: 300 << 10, MemoryWait: time.Hour}
	// Room for each framer's first read and no more: after it, each holds
	// its partial line and needs as much again.
	budget := NewBudget(framers * 128 << 10)
	pool := NewPool()
	stop := make(chan struct{})
	var arrived sync.WaitGroup
	arrived.Add(framers)
	line := append(bytes.Repeat([]byte("x"), lineSize-1), '\n')
	type result struct {
		lines, dropped int
		err            error
	}
	results := make(chan result, framers)
	for range framers {
		f := New(&barrierReader{data: bytes.Repeat(line, lines), first: 40 << 10, arrived: &arrived}, cfg, pool)
		f.Budget, f.Stop = budget, stop
		var r result
		f.OnDrop = func(d Drop) {
			if d.Reason == ReasonMemory {
				r.dropped++
			}
		}
		go func() {
			defer func() { f.Close(); results <- r }()
			for {
				b, err := f.Next()
				if err != nil {
					r.err = err
					return
				}
				r.lines += b.Lines
				b.Release()
			}
		}()
	}
	stopped := time.AfterFunc(20*time.Second, func() { close(stop) })
	defer stopped.Stop()
	var delivered, dropped int
	for range framers {
		r := <-results
		if !errors.Is(r.err, io.EOF) {
			t.Fatalf("framer ended with %v (ErrStopped: the budget stalled)", r.err)
		}
		delivered, dropped = delivered+r.lines, dropped+r.dropped
	}
	if delivered+dropped != framers*lines || dropped == 0 {
		t.Fatalf("delivered %d + dropped %d, want %d with at least one dropped", delivered, dropped, framers*lines)
	}
	if st := budget.Stats(); st.Used != 0 || st.Refused != uint64(dropped) {
		t.Fatalf("budget %+v after the framers ended (dropped %d)", st, dropped)
	}
	t.Logf("delivered %d, dropped %d", delivered, dropped)
}

// A waiter woken by a release, not yet running again, is not a stalled
// one: a framer that finds the budget full meanwhile waits, and is not
// refused (review of the stall rule: 200 of 200 refused before).
func TestBudgetWokenWaiterIsNotStalled(t *testing.T) {
	fails := 0
	for i := 0; i < 200; i++ {
		b := NewBudget(100)
		b.tryAcquire(30, false) // A's partial line
		b.tryAcquire(50, false) // C, reading
		b.tryAcquire(20, false) // B's partial line
		stop := make(chan struct{})
		done := make(chan error, 1)
		go func() { // A waits, then reads and finishes its line
			err := b.acquire(10, false, 0, 30, stop)
			if err == nil {
				b.release(40)
			}
			done <- err
		}()
		for b.Stats().Waits == 0 {
			runtime.Gosched()
		}
		time.Sleep(time.Millisecond)
		b.release(50) // C ends: room for A
		if err := b.acquire(60, false, 0, 20, stop); err == errNoRoom {
			fails++ // B dropped though A was about to run
		} else {
			b.release(60)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		close(stop)
	}
	t.Logf("false stall refusals: %d/200", fails)
	if fails > 0 {
		t.Fail()
	}
}

// A long line's waiter ends its own wait (MemoryWait): the budget it
// holds is not stalled, and an ordinary line waits for it rather than
// being dropped at once.
func TestBudgetLongLineWaiterIsNotStalled(t *testing.T) {
	b := NewBudget(100)
	b.tryAcquire(10, false) // S's partial line (S reading)
	b.tryAcquire(60, true)  // L's long line
	stop := make(chan struct{})
	defer close(stop)
	done := make(chan error, 1)
	go func() { // L: 80 > 75; it gives up, drops its line and its memory
		err := b.acquire(10, true, 200*time.Millisecond, 60, stop)
		if err != nil {
			b.release(60)
		}
		done <- err
	}()
	for b.Stats().Waits == 0 {
		runtime.Gosched()
	}
	time.Sleep(time.Millisecond)
	err := b.acquire(40, false, 0, 10, stop) // S: ordinary, would fit once L gives up
	if long := <-done; err != nil || !errors.Is(long, errNoRoom) {
		t.Fatalf("ordinary waiter: %v (want room once the long line gave up); long waiter: %v (want errNoRoom)", err, long)
	}
}

// One client's line of 200 KB, read 2 KB at a time, fits a 1 MiB budget
// whose long-line share is 768 KB: each read of a long line reserves the
// line's buffer and one read more. (It reserved the room after the line
// instead, up to the buffer's size again: 1 MiB for this line, and it was
// dropped as memory with no other client.)
func TestLongLineFitsASmallBudget(t *testing.T) {
	line := append(bytes.Repeat([]byte("x"), 200_000), '\n')
	sizes := make([]int, 0, len(line)/2048+1)
	for n := len(line); n > 0; n -= 2048 {
		sizes = append(sizes, min(n, 2048))
	}
	f := New(&chunkReader{data: bytes.Repeat(line, 4), sizes: slices.Repeat(sizes, 4)},
		Config{ReadBytes: 64 << 10, MaxLineBytes: 256 << 10, MemoryWait: 100 * time.Millisecond}, NewPool())
	f.Budget = NewBudget(1 << 20)
	dropped := 0
	f.OnDrop = func(Drop) { dropped++ }
	lines := 0
	for {
		b, err := f.Next()
		if err != nil {
			break
		}
		lines += b.Lines
		b.Release()
	}
	f.Close()
	if lines != 4 || dropped != 0 {
		t.Fatalf("%d lines, %d dropped", lines, dropped)
	}
}
