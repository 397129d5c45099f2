package framer

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// chunkReader returns its data in reads of the given sizes, cycling through
// them, then err (io.EOF when nil).
type chunkReader struct {
	data  []byte
	sizes []int
	i     int
	err   error
	// zeros makes a size of 0 a read of (0, nil), which a reader may
	// return and which is not an end of stream (never twice in a row: a
	// reader that never progresses is not one the framer can serve).
	zeros, wasZero bool
	// withErr returns the last chunk together with the end (n > 0, err).
	withErr bool
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	n := len(r.data)
	if len(r.sizes) > 0 {
		n = r.sizes[r.i%len(r.sizes)]
		r.i++
		if n == 0 && r.zeros && !r.wasZero {
			r.wasZero = true
			return 0, nil
		}
		r.wasZero = false
		n = max(1, n)
	}
	n = min(n, len(p), len(r.data))
	copy(p, r.data[:n])
	r.data = r.data[n:]
	if len(r.data) == 0 && r.withErr {
		if r.err != nil {
			return n, r.err
		}
		return n, io.EOF
	}
	return n, nil
}

// reference is the naive model of the framer: split into lines, drop the long
// ones, terminate a clean tail, drop a tail cut by an error.
func reference(in []byte, maxLine int, cleanEOF bool) (out []byte, lines, dropped int) {
	for len(in) > 0 {
		i := bytes.IndexByte(in, '\n')
		var line []byte
		if i < 0 {
			line, in = in, nil
			if !cleanEOF {
				dropped++
				break
			}
		} else {
			line, in = in[:i], in[i+1:]
		}
		if len(line) > maxLine {
			dropped++
			continue
		}
		out = append(append(out, line...), '\n')
		lines++
	}
	return out, lines, dropped
}

// frame runs a Framer over r and checks every batch's shape.
func frame(t testing.TB, r io.Reader, cfg Config) (out []byte, lines int, drops []Drop, err error) {
	t.Helper()
	return frameWith(t, r, cfg, nil)
}

// frameWith is frame with the framer charging budget.
func frameWith(t testing.TB, r io.Reader, cfg Config, budget *Budget) (out []byte, lines int, drops []Drop, err error) {
	t.Helper()
	f := New(r, cfg, NewPool())
	f.Budget = budget
	if lr, ok := r.(*lazyReader); ok {
		lr.f = f
	}
	f.OnDrop = func(d Drop) { drops = append(drops, d) }
	for {
		b, err := f.Next()
		if err != nil {
			return out, lines, drops, err
		}
		if len(b.Data) == 0 || b.Data[len(b.Data)-1] != '\n' {
			t.Fatalf("batch %q does not end in a newline", b.Data)
		}
		if got := bytes.Count(b.Data, nl); got != b.Lines {
			t.Fatalf("batch says %d lines, holds %d", b.Lines, got)
		}
		if b.Weight() < len(b.Data) {
			t.Fatalf("weight %d below length %d", b.Weight(), len(b.Data))
		}
		out = append(out, b.Data...)
		lines += b.Lines
		b.Release()
	}
}

var tableTests = []struct {
	name    string
	in      string
	sizes   []int
	maxLine int
	err     error // reader error after the data; nil means clean EOF
}{
	{name: "empty", in: ""},
	{name: "one line", in: "a\n"},
	{name: "unterminated tail", in: "a\nbc"},
	{name: "only a tail", in: "abc"},
	{name: "empty lines", in: "\n\n\n"},
	{name: "split across reads", in: "hello\nworld\n", sizes: []int{1, 2, 3}},
	{name: "oversize dropped", in: "ok\nthis line is too long\nok2\n", maxLine: 5},
	{name: "oversize across reads", in: "ok\nthis line is too long\nok2\n", sizes: []int{4}, maxLine: 5},
	{name: "oversize tail at eof", in: "ok\nlonglonglong", maxLine: 5},
	{name: "exactly max", in: "12345\n123456\n", maxLine: 5, sizes: []int{2}},
	{name: "binary garbage", in: "\x00\xff\xfe\n\x01\x02", sizes: []int{1}},
	{name: "reset mid line", in: "a\nfragment", err: errors.New("connection reset")},
	{name: "reset at line end", in: "a\nb\n", err: errors.New("connection reset")},
	{name: "crlf passed through", in: "a\r\nb\r\n"},
}

func TestFramerTable(t *testing.T) {
	for _, tt := range tableTests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			if tt.maxLine > 0 {
				cfg.MaxLineBytes = tt.maxLine
			}
			r := &chunkReader{data: []byte(tt.in), sizes: tt.sizes, err: tt.err}
			out, lines, drops, err := frame(t, r, cfg)
			wantOut, wantLines, wantDropped := reference([]byte(tt.in), cfg.MaxLineBytes, tt.err == nil)
			if !bytes.Equal(out, wantOut) || lines != wantLines || len(drops) != wantDropped {
				t.Fatalf("got %q (%d lines, %d dropped), want %q (%d lines, %d dropped)",
					out, lines, len(drops), wantOut, wantLines, wantDropped)
			}
			wantErr := tt.err
			if wantErr == nil {
				wantErr = io.EOF
			}
			if !errors.Is(err, wantErr) {
				t.Fatalf("err = %v, want %v", err, wantErr)
			}
		})
	}
}

func TestDropReasons(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxLineBytes = 4
	r := &chunkReader{data: []byte("toolong\nok\nfrag"), err: errors.New("reset")}
	_, _, drops, _ := frame(t, r, cfg)
	if len(drops) != 2 || drops[0].Reason != ReasonOversize || drops[1].Reason != ReasonIncomplete {
		t.Fatalf("drops = %+v, want oversize then incomplete", drops)
	}
}

// A 5 MiB line with a 1 MiB limit is dropped without the framer's buffer
// growing past the limit plus one read.
func TestHugeLineBoundedBuffer(t *testing.T) {
	cfg := DefaultConfig()
	huge := strings.Repeat("x", 5<<20)
	in := "before\n" + huge + "\nafter\n"
	f := New(&chunkReader{data: []byte(in)}, cfg, NewPool())
	var drops int
	f.OnDrop = func(Drop) { drops++ }
	var out []byte
	for {
		b, err := f.Next()
		if f.cur != nil && f.cur.Weight() > cfg.MaxBatchBytes() {
			t.Fatalf("framer buffer grew to %d, limit %d", f.cur.Weight(), cfg.MaxBatchBytes())
		}
		if err != nil {
			break
		}
		out = append(out, b.Data...)
		b.Release()
	}
	if string(out) != "before\nafter\n" || drops != 1 {
		t.Fatalf("got %q with %d drops", out, drops)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{name: "default", cfg: DefaultConfig(), ok: true},
		{name: "zero read", cfg: Config{ReadBytes: 0, MaxLineBytes: 10}},
		{name: "zero line", cfg: Config{ReadBytes: 10, MaxLineBytes: 0}},
		{name: "huge line", cfg: Config{ReadBytes: 10, MaxLineBytes: 2 << 30}},
		{name: "smallest", cfg: Config{ReadBytes: 1, MaxLineBytes: 1}, ok: true},
		{name: "largest", cfg: Config{ReadBytes: 1 << 24, MaxLineBytes: MaxMaxLineBytes, MemoryWait: time.Hour}, ok: true},
		{name: "read over 16MiB", cfg: Config{ReadBytes: 1<<24 + 1, MaxLineBytes: 10}},
		{name: "line over max", cfg: Config{ReadBytes: 10, MaxLineBytes: MaxMaxLineBytes + 1}},
		{name: "no memory wait", cfg: Config{ReadBytes: 10, MaxLineBytes: 10, MemoryWait: 0}, ok: true},
		{name: "negative memory wait", cfg: Config{ReadBytes: 10, MaxLineBytes: 10, MemoryWait: -time.Nanosecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrConfig)) {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// Steady-state framing allocates nothing per batch.
func TestNoAllocsPerBatch(t *testing.T) {
	line := []byte(strings.Repeat("y", 255) + "\n")
	data := bytes.Repeat(line, 64)
	r := &loopReader{data: data}
	f := New(r, DefaultConfig(), NewPool())
	for range 10 { // warm the pool
		b, _ := f.Next()
		b.Release()
	}
	allocs := testing.AllocsPerRun(1000, func() {
		b, err := f.Next()
		if err != nil {
			t.Fatal(err)
		}
		b.Release()
	})
	if allocs > 0 {
		t.Fatalf("%.2f allocations per batch, want 0", allocs)
	}
}

// loopReader returns data forever, in reads of whatever size is asked.
type loopReader struct {
	data []byte
	off  int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.data[r.off:])
		n += c
		r.off = (r.off + c) % len(r.data)
	}
	return n, nil
}

// lazyReader is a BufferReader over a chunkReader: every other read "would
// block" first, giving the buffer back, as a socket with no data does.
type lazyReader struct {
	*chunkReader
	f        *Framer
	calls    int
	heldIdle bool // the framer held a buffer while "blocked"
	heldBig  bool // it held a partial line shorter than a read in a bigger buffer
}

func (r *lazyReader) ReadBuffer(get func() []byte, put func()) (int, error) {
	r.calls++
	if r.calls%2 == 0 {
		get()
		put() // would block: give it back and wait
		if r.f.cur != nil && r.f.n == 0 {
			r.heldIdle = true
		}
		if r.f.n > 0 && r.f.n < r.f.cfg.ReadBytes && len(r.f.cur.buf) != classSize(r.f.n) {
			r.heldBig = true
		}
	}
	buf := get()
	if buf == nil {
		return 0, nil // no room in the budget
	}
	return r.Read(buf)
}

// An idle stream with no partial line holds no buffer while it waits, and
// the output is the same as through a plain reader.
func TestBufferReaderHoldsNoBufferWhileIdle(t *testing.T) {
	for _, tt := range tableTests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			if tt.maxLine > 0 {
				cfg.MaxLineBytes = tt.maxLine
			}
			lr := &lazyReader{chunkReader: &chunkReader{data: []byte(tt.in), sizes: tt.sizes, err: tt.err}}
			f := New(lr, cfg, NewPool())
			lr.f = f
			var out []byte
			for {
				b, err := f.Next()
				if err != nil {
					break
				}
				out = append(out, b.Data...)
				b.Release()
			}
			want, _, _ := reference([]byte(tt.in), cfg.MaxLineBytes, tt.err == nil)
			if !bytes.Equal(out, want) {
				t.Fatalf("got %q, want %q", out, want)
			}
			if lr.heldIdle {
				t.Fatal("the framer kept a buffer while waiting with no partial line")
			}
			if lr.heldBig {
				t.Fatal("the framer kept a short partial line in a buffer bigger than its size class while waiting")
			}
		})
	}
}

// suspendReader returns its data, then ErrSuspend.
type suspendReader struct{ data []byte }

func (r *suspendReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, ErrSuspend
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// A suspended stream keeps its partial line for Carry, and a framer that
// resumes it (with the partial line ahead of the rest) cuts the same lines;
// a stream suspended inside a dropped line is skipped to its newline by the
// next framer without a second drop.
func TestCarryAndResume(t *testing.T) {
	cfg := Config{ReadBytes: 64, MaxLineBytes: 16}
	collect := func(f *Framer) (out string, err error) {
		for {
			b, err := f.Next()
			if err != nil {
				return out, err
			}
			out += string(b.Data)
			b.Release()
		}
	}
	f := New(&suspendReader{data: []byte("one\ntw")}, cfg, NewPool())
	if out, err := collect(f); out != "one\n" || !errors.Is(err, ErrSuspend) {
		t.Fatalf("before: %q, %v", out, err)
	}
	partial, skipping := f.Carry()
	if string(partial) != "tw" || skipping || f.Partial() != 0 {
		t.Fatalf("carried %q, skipping %v", partial, skipping)
	}
	g := New(strings.NewReader(string(partial)+"o\nthree\n"), cfg, NewPool())
	g.Resume(skipping)
	if out, err := collect(g); out != "two\nthree\n" || err != io.EOF {
		t.Fatalf("after: %q, %v", out, err)
	}

	drops := 0
	f = New(&suspendReader{data: []byte("a very long line that is over the limit")}, cfg, NewPool())
	f.OnDrop = func(Drop) { drops++ }
	if out, err := collect(f); out != "" || !errors.Is(err, ErrSuspend) {
		t.Fatalf("before: %q, %v", out, err)
	}
	partial, skipping = f.Carry()
	if len(partial) != 0 || !skipping || drops != 1 {
		t.Fatalf("carried %q, skipping %v, drops %d", partial, skipping, drops)
	}
	g = New(strings.NewReader(" and its end\nnext\n"), cfg, NewPool())
	g.OnDrop = func(Drop) { drops++ }
	g.Resume(skipping)
	if out, err := collect(g); out != "next\n" || err != io.EOF || drops != 1 {
		t.Fatalf("after: %q, %v, drops %d", out, err, drops)
	}
}
