package framer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
)

// chunked reads its data in the sizes given, cycling.
type chunked struct {
	data  []byte
	sizes []int
	i     int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(c.sizes) > 0 {
		n = max(c.sizes[c.i%len(c.sizes)], 1)
		c.i++
	}
	n = copy(p, c.data[:min(n, len(c.data))])
	c.data = c.data[n:]
	return n, nil
}

// chunkedBuf is chunked as a BufferReader (as the idle reader is).
type chunkedBuf struct{ *chunked }

func (c chunkedBuf) ReadBuffer(get func() []byte, put func()) (int, error) {
	p := get()
	if p == nil {
		return 0, nil
	}
	return c.Read(p)
}

func frames(msgs ...string) []byte {
	var b []byte
	for _, m := range msgs {
		b = strconv.AppendInt(b, int64(len(m)), 10)
		b = append(append(b, ' '), m...)
	}
	return b
}

// octetLines frames in through an OctetReader and a Framer and returns the
// lines, the drops and the framer's final error.
func octetLines(in io.Reader, maxBytes int, reversible bool) (out []byte, drops []Drop, oversize []int, err error) {
	o := NewOctetReader(in, 64, maxBytes, reversible)
	o.OnOversize = func(n int) { oversize = append(oversize, n) }
	cfg := DefaultConfig()
	cfg.ReadBytes, cfg.MaxLineBytes = 64, 2*maxBytes+8 // room for escapes
	f := New(o, cfg, NewPool())
	f.OnDrop = func(d Drop) { drops = append(drops, d) }
	for {
		b, err := f.Next()
		if err != nil {
			return out, drops, oversize, err
		}
		out = append(out, b.Data...)
		b.Release()
	}
}

func TestOctetReaderLines(t *testing.T) {
	in := frames("plain", "two\nlines", "ends in newline\n", "", `back\slash #012`, strings.Repeat("x", 300), "after")
	out, drops, oversize, err := octetLines(&chunked{data: in, sizes: []int{1, 7, 3}}, 100, false)
	want := "plain\ntwo#012lines\nends in newline\n\nback\\slash #012\nafter\n"
	if !errors.Is(err, io.EOF) || string(out) != want || len(drops) != 0 || len(oversize) != 1 || oversize[0] != 300 {
		t.Fatalf("out %q, drops %v, oversize %v, err %v", out, drops, oversize, err)
	}
}

// Reversible escaping and EncodeOctet give back the client's frames, byte
// for byte, whatever the messages hold and however the stream is split.
func TestOctetRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	alphabet := []byte("ab\\n\n#0 \x00\xff")
	for i := range 300 {
		var msgs []string
		for range r.IntN(20) {
			m := make([]byte, r.IntN(90))
			for k := range m {
				m[k] = alphabet[r.IntN(len(alphabet))]
			}
			msgs = append(msgs, string(m))
		}
		in := frames(msgs...)
		sizes := []int{1 + r.IntN(5), 1 + r.IntN(200)}
		out, drops, _, err := octetLines(&chunked{data: in, sizes: sizes}, 100, true)
		if !errors.Is(err, io.EOF) || len(drops) != 0 {
			t.Fatalf("%d: err %v, drops %v", i, err, drops)
		}
		if got := EncodeOctet(nil, out, true); !bytes.Equal(got, in) {
			t.Fatalf("%d: round trip\n got %q\nwant %q", i, got, in)
		}
	}
	// A client of lines, to octet-counted targets.
	if got := EncodeOctet(nil, []byte("a\nbb\n\n"), false); string(got) != "1 a2 bb0 " {
		t.Fatalf("lines to frames: %q", got)
	}
}

func TestOctetReaderBadFrames(t *testing.T) {
	for _, in := range []string{"x", "5x", "05 hello", " 5 hello", "12345678901 x", "-1 x", "5\nhello"} {
		stream := append(frames("ok"), in...)
		out, _, _, err := octetLines(bytes.NewReader(stream), 100, false)
		if !errors.Is(err, ErrBadFrame) || string(out) != "ok\n" {
			t.Errorf("%q: out %q, err %v; want the whole message, then ErrBadFrame", in, out, err)
		}
	}
}

// A stream that ends inside a message (or its prefix) ends in a fragment,
// dropped as incomplete; one that ends inside an oversize message does not.
func TestOctetReaderCutShort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		frag int // the fragment's length; 0: no drop
	}{
		{string(frames("ok")) + "10 abc", 3},
		{string(frames("ok")) + "10 ", 1}, // nothing of the message: a one-byte marker
		{string(frames("ok")) + "1", 1},
		{string(frames("ok")) + "500 abc", 0}, // oversize, skipped anyway
	} {
		out, drops, _, err := octetLines(bytes.NewReader([]byte(tc.in)), 100, false)
		if string(out) != "ok\n" {
			t.Errorf("%q: out %q", tc.in, out)
		}
		switch {
		case tc.frag == 0 && (len(drops) != 0 || !errors.Is(err, io.EOF)):
			t.Errorf("%q: drops %v, err %v; want none and EOF", tc.in, drops, err)
		case tc.frag > 0 && (len(drops) != 1 || drops[0].Reason != ReasonIncomplete || drops[0].Bytes != tc.frag):
			t.Errorf("%q: drops %v, err %v; want one incomplete of %d bytes", tc.in, drops, err, tc.frag)
		}
	}
}

// FuzzOctetReader: any input, split into any reads, gives what it gives
// read whole (the same lines, drops, skipped lengths and error kind); and
// frames of any messages come back byte for byte through EncodeOctet.
func FuzzOctetReader(f *testing.F) {
	f.Add([]byte(frames("a", "b\nc", "")), []byte{1, 2, 3}, []byte("x\\y\n"))
	f.Add([]byte("3 abc05 x"), []byte{5}, []byte{})
	f.Add([]byte("999 abc"), []byte{1}, []byte("\\\\n"))
	f.Fuzz(func(t *testing.T, in, splits, msg []byte) {
		sizes := make([]int, len(splits))
		for i, s := range splits {
			sizes[i] = int(s)
		}
		rev := len(splits) < 2 || splits[1]%2 == 0 // both escaping rules
		whole, wdrops, wover, werr := octetLines(bytes.NewReader(in), 50, rev)
		var src io.Reader = &chunked{data: in, sizes: sizes}
		if len(splits) > 0 && splits[0]%2 == 0 {
			src = chunkedBuf{&chunked{data: in, sizes: sizes}} // the framer and the reader lend buffers
		}
		split, sdrops, sover, serr := octetLines(src, 50, rev)
		if !bytes.Equal(whole, split) || fmt.Sprint(wdrops) != fmt.Sprint(sdrops) || fmt.Sprint(wover) != fmt.Sprint(sover) ||
			errors.Is(werr, ErrBadFrame) != errors.Is(serr, ErrBadFrame) {
			t.Fatalf("whole %q %v %v %v\nsplit %q %v %v %v", whole, wdrops, wover, werr, split, sdrops, sover, serr)
		}
		if len(msg) <= 50 {
			framed := frames(string(msg), "", string(msg))
			out, _, _, err := octetLines(&chunked{data: framed, sizes: sizes}, 50, true)
			if !errors.Is(err, io.EOF) || !bytes.Equal(EncodeOctet(nil, out, true), framed) {
				t.Fatalf("round trip of %q: %q, %v", msg, out, err)
			}
			// Without Reversible: one newline ending the message dropped,
			// every other written #012, nothing else changed.
			line := strings.ReplaceAll(strings.TrimSuffix(string(msg), "\n"), "\n", "#012") + "\n"
			out, _, _, err = octetLines(&chunked{data: framed, sizes: sizes}, 50, false)
			if want := line + "\n" + line; len(line) <= 51 && (!errors.Is(err, io.EOF) || string(out) != want) {
				t.Fatalf("lines of %q: %q, %v; want %q", msg, out, err, want)
			}
		}
	})
}

// A stream cut when all of the message so far is a held-back newline still
// leaves a fragment to count; reads of one byte give the same lines as
// large ones, escapes split across them; a framer reading one byte at a
// time does not stall on an escape.
func TestOctetReaderSmallReads(t *testing.T) {
	_, drops, _, _ := octetLines(bytes.NewReader([]byte("2 ok10 \n")), 100, false)
	if len(drops) != 1 || drops[0].Reason != ReasonIncomplete {
		t.Fatalf("cut after a newline: drops %v", drops)
	}
	in := frames("a\nb\\c\n", "\n\n", "x")
	for _, reversible := range []bool{false, true} {
		big, _ := io.ReadAll(NewOctetReader(bytes.NewReader(in), 64, 100, reversible))
		o := NewOctetReader(bytes.NewReader(in), 64, 100, reversible)
		var small []byte
		p := make([]byte, 1)
		for {
			n, err := o.Read(p)
			small = append(small, p[:n]...)
			if err != nil {
				break
			}
		}
		if !bytes.Equal(big, small) {
			t.Fatalf("reversible %v: one-byte reads %q, large %q", reversible, small, big)
		}
	}
	cfg := DefaultConfig()
	cfg.ReadBytes = 1
	f := New(NewOctetReader(bytes.NewReader(frames(strings.Repeat("y", 509)+"\nz")), 1, 1000, false), cfg, NewPool())
	done := make(chan []byte)
	go func() {
		var out []byte
		for {
			b, err := f.Next()
			if err != nil {
				done <- out
				return
			}
			out = append(out, b.Data...)
			b.Release()
		}
	}()
	select {
	case out := <-done:
		if want := strings.Repeat("y", 509) + "#012z\n"; string(out) != want {
			t.Fatalf("got %d bytes", len(out))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the framer stalls on an escape that does not fit its buffer")
	}
}

// suspending is a BufferReader that serves pending first, then data in
// the sizes given, and says ErrSuspend once when at has been served.
type suspending struct {
	chunked
	pending []byte
	at      int // bytes of data to serve before suspending; -1: never
}

func (s *suspending) ReadBuffer(get func() []byte, put func()) (int, error) {
	if s.at == 0 {
		s.at = -1
		return 0, ErrSuspend
	}
	p := get()
	if p == nil {
		return 0, nil
	}
	if len(s.pending) > 0 {
		n := copy(p, s.pending)
		s.pending = s.pending[n:]
		return n, nil
	}
	if s.at > 0 && len(p) > s.at {
		p = p[:s.at]
	}
	n, err := s.Read(p)
	if s.at > 0 {
		s.at -= n
	}
	return n, err
}

// A stream suspended anywhere (inside a length prefix, a message passed on
// in part, a message skipped as oversize, one the framer drops as too
// long, an escape cut by a full buffer) and rewound goes on, on the same
// reader or a fresh one, with exactly the lines and drops an uninterrupted
// one has.
func TestOctetRewindResumesTheSameStream(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	const maxBytes = 40
	for i := range 3000 {
		alphabet := []byte("ab\\n\n#0 x")
		if i%3 == 0 {
			alphabet = append(alphabet, "#0121"...) // "#012" as sent, sometimes
		}
		var msgs []string
		for range 1 + r.IntN(8) {
			m := make([]byte, r.IntN(70)) // some over maxBytes
			for k := range m {
				m[k] = alphabet[r.IntN(len(alphabet))]
			}
			if r.IntN(3) == 0 {
				// At the limit once escaped (without Reversible): its
				// newlines written "#012", the one ending it dropped.
				nl := r.IntN(4)
				m = append(bytes.Repeat([]byte("y"), maxBytes-3*nl), '\n')
				for range nl {
					m[r.IntN(len(m)-1)] = '\n'
				}
			}
			msgs = append(msgs, string(m))
		}
		in := frames(msgs...)
		c := rewindCase{in: in, max: maxBytes, reversible: i%2 == 0, fresh: i%4 < 2,
			sizes: []int{1 + r.IntN(9), 1 + r.IntN(60)}, at: r.IntN(len(in) + 1)}
		c.check(t)
	}
}

// Messages at the limit once escaped, suspended at every byte: one whose
// escaped line is the limit is delivered whole, also when it held "#012"
// as sent (rebuilt with the escapes' bytes in its prefix).
func TestOctetRewindAtTheLimit(t *testing.T) {
	for _, msg := range []string{"a\nbcdef\n", "#012\nab\n", "abcdefghij\n", "abcdefghij"} {
		in := frames(msg, "ok")
		for at := range len(in) + 1 {
			for _, fresh := range []bool{true, false} {
				c := rewindCase{in: in, max: 10, fresh: fresh, sizes: []int{1}, at: at}
				if got := c.check(t); !strings.HasPrefix(string(got), strings.TrimSuffix(strings.ReplaceAll(msg, "\n", "#012"), "#012")) {
					t.Fatalf("suspended at %d: %q not delivered: got %q", at, msg, got)
				}
			}
		}
	}
}

// A stream rewound by a reader of one rule goes on with a reader of the
// other (the targets' framing changed): the message in progress comes out
// by the new rule, as if the new reader had read it all.
func TestOctetRewindToTheOtherRule(t *testing.T) {
	for _, first := range []string{"stack:\n  at a()\n  at b()\n", "#012 as sent\nand a newline"} {
		in := frames(first, `back\slash`, "last")
		for _, reversible := range []bool{true, false} {
			for at := 1; at < len(frames(first)); at++ { // inside the first frame
				c := rewindCase{in: in, max: 100, reversible: reversible, fresh: true, other: true, sizes: []int{3}, at: at}
				if reversible || !strings.Contains(first, "#012") { // as sent and escaped: cannot be told apart
					c.check(t)
				}
			}
		}
	}
}

// rewindCase frames in through an OctetReader and a Framer, suspended
// once at byte at, rewound and resumed (on a fresh reader, or the same),
// and compares the lines and drops with an uninterrupted reading.
type rewindCase struct {
	in         []byte
	max        int
	reversible bool
	fresh      bool // resume on a fresh reader, not the same one
	other      bool // the fresh reader has the other rule: compare with one that read it all
	sizes      []int
	at         int
}

func (c rewindCase) check(t *testing.T) []byte {
	t.Helper()
	config := func(reversible bool) Config {
		cfg := DefaultConfig()
		cfg.ReadBytes, cfg.MaxLineBytes = 16, c.max
		if reversible {
			cfg.MaxLineBytes = 2 * c.max
		}
		return cfg
	}
	frame := func(o *OctetReader, f *Framer, drops *int) (out []byte, err error) {
		o.OnOversize = func(int) { *drops++ }
		f.OnDrop = func(d Drop) { *drops++ }
		for {
			b, err := f.Next()
			if err != nil {
				return out, err
			}
			out = append(out, b.Data...)
			b.Release()
		}
	}
	then := c.reversible != c.other // the rule after the resumption
	var wantDrops int
	o := NewOctetReader(chunkedBuf{&chunked{data: c.in, sizes: c.sizes}}, 16, c.max, then)
	want, err := frame(o, New(o, config(then), NewPool()), &wantDrops)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("uninterrupted: %v", err)
	}

	src := &suspending{chunked: chunked{data: c.in, sizes: c.sizes}, at: c.at}
	var drops int
	o = NewOctetReader(src, 16, c.max, c.reversible)
	f := New(o, config(c.reversible), NewPool())
	got, err := frame(o, f, &drops)
	if !errors.Is(err, ErrSuspend) {
		t.Fatalf("suspended at %d: %v", c.at, err)
	}
	partial, discarding := f.Carry()
	f.Close()
	raw, skip := o.Rewind(partial, discarding)
	if skip > 0 && len(raw) > 0 {
		t.Fatalf("rewound to %q and a skip of %d", raw, skip)
	}
	if c.fresh { // on to a fresh reader (another listener or process)
		o = NewOctetReader(chunkedBuf{&chunked{data: append(raw, src.data...), sizes: c.sizes}}, 16, c.max, then)
	} else { // the hand-over refused: the same reader reads on
		src.pending = raw
	}
	o.Skip(skip)
	f = New(o, config(then), NewPool())
	rest, err := frame(o, f, &drops)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("resumed: %v", err)
	}
	if got = append(got, rest...); !bytes.Equal(got, want) || drops != wantDrops {
		t.Fatalf("suspended at %d of %q (reversible %v, then %v), rewound to %q skip %d:\n got %q, %d drops\nwant %q, %d drops",
			c.at, c.in, c.reversible, then, raw, skip, got, drops, want, wantDrops)
	}
	return got
}

// BenchmarkOctetReader measures framing octet-counted syslog messages of
// about 200 bytes into lines, by each escaping rule.
func BenchmarkOctetReader(b *testing.B) {
	var msgs []string
	for i := range 5000 {
		msgs = append(msgs, fmt.Sprintf("<13>1 2026-12-04T10:00:00Z host app %d - - message number %d %s", i, i, strings.Repeat("x", 120)))
	}
	in := frames(msgs...)
	for _, reversible := range []bool{false, true} {
		b.Run(fmt.Sprintf("reversible=%v", reversible), func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			cfg := DefaultConfig()
			pool := NewPool()
			for b.Loop() {
				o := NewOctetReader(bytes.NewReader(in), 64<<10, 1<<20, reversible)
				f := New(o, cfg, pool)
				for {
					batch, err := f.Next()
					if err != nil {
						break
					}
					batch.Release()
				}
			}
		})
	}
}

// An octet-counted reader reads its source only into room the framer's
// budget gave: while the framer waits for memory, the reader holds no read
// buffer of its own (many clients each holding one would be memory outside
// the budget). Once room comes, every message arrives.
func TestOctetReaderReadsOnlyWithRoom(t *testing.T) {
	budget := NewBudget(1 << 20)
	if !budget.tryAcquire(1<<20, false) { // all of it held elsewhere
		t.Fatal("budget")
	}
	in := frames("hello", "world")
	o := NewOctetReader(chunkedBuf{&chunked{data: in, sizes: []int{1 << 20}}}, 64<<10, 1000, false)
	f := New(o, DefaultConfig(), NewPool())
	f.Budget = budget
	got := make(chan string, 1)
	go func() {
		var out []byte
		for {
			b, err := f.Next()
			if err != nil {
				got <- string(out)
				return
			}
			out = append(out, b.Data...)
			b.Release()
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); budget.Stats().Waits == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the framer did not wait for memory")
		}
	}
	// The reader's fields are the framer goroutine's: read them only
	// after it waits (the budget's lock orders the accesses).
	budget.mu.Lock()
	held := len(o.in)
	budget.mu.Unlock()
	if held != 0 {
		t.Errorf("the reader holds a read buffer of %d bytes while the framer waits for memory", held)
	}
	budget.release(1 << 20)
	select {
	case out := <-got:
		if out != "hello\nworld\n" {
			t.Fatalf("got %q", out)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing framed once room came")
	}
}

// So does a reader that has read before and finds the budget spent at its
// next read: the buffer of its last read goes back while the framer waits
// (a client sending flat out never waits in the kernel, where it would).
func TestOctetReaderReadsOnlyWithRoomAfterARead(t *testing.T) {
	budget := NewBudget(1 << 20)
	in := append(frames("hello"), frames("world")...)
	o := NewOctetReader(chunkedBuf{&chunked{data: in, sizes: []int{7}}}, 64<<10, 1000, false)
	f := New(o, DefaultConfig(), NewPool())
	f.Budget = budget
	b, err := f.Next()
	if err != nil || string(b.Data) != "hello\n" {
		t.Fatalf("first batch %v", err)
	}
	b.Release()
	st := budget.Stats()
	if !budget.tryAcquire(st.Max-st.Used, false) { // the rest held elsewhere
		t.Fatal("budget")
	}
	go func() {
		for {
			b, err := f.Next()
			if err != nil {
				return
			}
			b.Release()
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); budget.Stats().Waits == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the framer did not wait for memory")
		}
	}
	budget.mu.Lock()
	held, pend := len(o.in), len(o.pend)
	budget.mu.Unlock()
	if held != 0 {
		t.Errorf("the reader holds a read buffer of %d bytes (%d unparsed) while the framer waits for memory", held, pend)
	}
	budget.release(st.Max - st.Used)
}
