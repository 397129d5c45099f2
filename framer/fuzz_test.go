package framer

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// Modes of FuzzFramer, bits of its mode argument.
const (
	fuzzLazy     = 1 << iota // read through a BufferReader (the idle reader's path)
	fuzzDefaults             // the default limits, not tiny ones
	fuzzZeros                // reads of (0, nil) where a size is 0
	fuzzWithErr              // the last data comes with the end: (n > 0, err)
	fuzzHold                 // keep every batch until the end (a buffer reused while held shows)
	fuzzTight                // a budget so small that long lines are dropped for memory
)

// refDrop is a drop the reference expects: its reason, and for a fragment
// its length.
type refDrop struct {
	reason Reason
	bytes  int
}

// referenceDrops is reference with the drops it expects, in order.
func referenceDrops(in []byte, maxLine int, cleanEOF bool) (out []byte, lines int, drops []refDrop) {
	for len(in) > 0 {
		i := bytes.IndexByte(in, '\n')
		var line []byte
		if i < 0 {
			line, in = in, nil
			if !cleanEOF {
				if len(line) > maxLine {
					drops = append(drops, refDrop{reason: ReasonOversize})
				} else {
					drops = append(drops, refDrop{reason: ReasonIncomplete, bytes: len(line)})
				}
				break
			}
		} else {
			line, in = in[:i], in[i+1:]
		}
		if len(line) > maxLine {
			drops = append(drops, refDrop{reason: ReasonOversize})
			continue
		}
		out = append(append(out, line...), '\n')
		lines++
	}
	return out, lines, drops
}

// FuzzFramer checks that for any input, split into any reads (also empty
// ones, and data that comes with the end), read directly or through a
// BufferReader, the batches concatenate to the input's lines minus the
// dropped ones, every batch ends in '\n', each drop has the reference's
// reason (and a fragment its length), a batch's bytes do not change while
// it is held, the framer's memory stays within its bound, and every byte
// charged to the budget comes back.
func FuzzFramer(f *testing.F) {
	for _, tt := range tableTests {
		for _, mode := range []byte{0, fuzzLazy, fuzzZeros | fuzzWithErr, fuzzHold, fuzzTight | fuzzLazy, fuzzDefaults} {
			f.Add([]byte(tt.in), []byte{3, 1, 0, 7}, uint16(tt.maxLine), tt.err == nil, mode)
		}
	}
	f.Add(bytes.Repeat([]byte("line of text\n"), 100), []byte{200, 13}, uint16(8), true, byte(0))
	f.Add(bytes.Repeat([]byte("a long line without its end "), 40), []byte{9, 0, 250}, uint16(100), false, byte(fuzzTight))
	f.Fuzz(func(t *testing.T, in, sizes []byte, maxLine uint16, clean bool, mode byte) {
		cfg := Config{ReadBytes: 16, MaxLineBytes: int(maxLine%600) + 1, MemoryWait: 0}
		if mode&fuzzDefaults != 0 {
			cfg = DefaultConfig()
		}
		var readErr error
		if !clean {
			readErr = errors.New("reset")
		}
		ints := make([]int, len(sizes))
		for i, s := range sizes {
			ints[i] = int(s)
		}
		cr := &chunkReader{data: in, sizes: ints, err: readErr, zeros: mode&fuzzZeros != 0, withErr: mode&fuzzWithErr != 0}
		var r io.Reader = cr
		if mode&fuzzLazy != 0 {
			r = &lazyReader{chunkReader: cr}
		}
		budget := NewBudget(1 << 30)
		if mode&fuzzTight != 0 {
			budget = NewBudget(int64(2 * cfg.MaxBatchBytes()))
		}
		fr := New(r, cfg, NewPool())
		fr.Budget = budget
		if lr, ok := r.(*lazyReader); ok {
			lr.f = fr
		}
		var drops []Drop
		fr.OnDrop = func(d Drop) { drops = append(drops, d) }
		var out []byte
		var held []*Batch
		var heldCopy [][]byte
		lines := 0
		var err error
		for {
			var b *Batch
			if b, err = fr.Next(); err != nil {
				break
			}
			if len(b.Data) == 0 || b.Data[len(b.Data)-1] != '\n' || bytes.Count(b.Data, nl) != b.Lines {
				t.Fatalf("batch %q: %d lines, or no final newline", b.Data, b.Lines)
			}
			if fr.held() > cfg.MaxBatchBytes() {
				t.Fatalf("the framer holds %d bytes, over its bound %d", fr.held(), cfg.MaxBatchBytes())
			}
			out = append(out, b.Data...)
			lines += b.Lines
			if mode&fuzzHold != 0 {
				b.Uncharge() // as a queue does when it takes the batch
				held, heldCopy = append(held, b), append(heldCopy, bytes.Clone(b.Data))
			} else {
				b.Release()
			}
		}
		for i, b := range held {
			if !bytes.Equal(b.Data, heldCopy[i]) {
				t.Fatalf("batch %d changed while it was held: %q, was %q", i, b.Data, heldCopy[i])
			}
			b.Release()
		}
		st := budget.Stats()
		if st.Used != 0 {
			t.Fatalf("%d bytes still charged after every batch was released", st.Used)
		}
		if mode&fuzzHold == 0 && st.Peak > 2*int64(cfg.MaxBatchBytes())+int64(classSize(cfg.MaxLineBytes+1)) {
			t.Fatalf("peak charge %d over the bound of one framer", st.Peak)
		}
		if clean && !errors.Is(err, io.EOF) || !clean && !errors.Is(err, readErr) {
			t.Fatalf("err = %v", err)
		}
		wantOut, wantLines, wantDrops := referenceDrops(in, cfg.MaxLineBytes, clean)
		if mode&fuzzTight != 0 {
			// Lines may also be dropped for memory: the output is the
			// reference less whole lines, and every drop is counted.
			if !isSubsequenceOfLines(out, wantOut) || lines+len(drops) < wantLines {
				t.Fatalf("output %q is not the reference %q less counted lines (%d drops)", out, wantOut, len(drops))
			}
			return
		}
		if !bytes.Equal(out, wantOut) || lines != wantLines {
			t.Fatalf("output %q (%d lines), want %q (%d)", out, lines, wantOut, wantLines)
		}
		if len(drops) != len(wantDrops) {
			t.Fatalf("drops %+v, want %+v", drops, wantDrops)
		}
		for i, d := range drops {
			w := wantDrops[i]
			switch {
			case d.Reason != w.reason:
				t.Fatalf("drop %d: %s, want %s", i, d.Reason, w.reason)
			case d.Reason == ReasonIncomplete && d.Bytes != w.bytes:
				t.Fatalf("fragment dropped with %d bytes, want %d", d.Bytes, w.bytes)
			case d.Reason == ReasonOversize && d.Bytes <= cfg.MaxLineBytes:
				t.Fatalf("oversize drop of %d bytes, within the limit %d", d.Bytes, cfg.MaxLineBytes)
			}
		}
	})
}

// isSubsequenceOfLines reports whether the lines of got appear in want, in
// order, each whole.
func isSubsequenceOfLines(got, want []byte) bool {
	for len(got) > 0 {
		i := bytes.IndexByte(got, '\n')
		line := got[:i+1]
		got = got[i+1:]
		for {
			j := bytes.IndexByte(want, '\n')
			if j < 0 {
				return false
			}
			cand := want[:j+1]
			want = want[j+1:]
			if bytes.Equal(cand, line) {
				break
			}
		}
	}
	return true
}
