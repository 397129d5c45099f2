package framer

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzFramer checks that for any input split into any read sizes, the batches
// concatenate to the input's lines minus the dropped ones, every batch ends in
// '\n', and the drops are counted.
func FuzzFramer(f *testing.F) {
	for _, tt := range tableTests {
		f.Add([]byte(tt.in), []byte{3, 1, 7}, uint16(tt.maxLine), tt.err == nil)
	}
	f.Add(bytes.Repeat([]byte("line of text\n"), 100), []byte{200, 13}, uint16(8), true)
	f.Fuzz(func(t *testing.T, in, sizes []byte, maxLine uint16, clean bool) {
		lazy := len(sizes) > 0 && sizes[0]%2 == 1 // read through a BufferReader
		cfg := Config{ReadBytes: 16, MaxLineBytes: int(maxLine%600) + 1}
		var readErr error
		if !clean {
			readErr = errors.New("reset")
		}
		ints := make([]int, len(sizes))
		for i, s := range sizes {
			ints[i] = int(s)
		}
		var r io.Reader = &chunkReader{data: in, sizes: ints, err: readErr}
		if lazy {
			r = &lazyReader{chunkReader: r.(*chunkReader), f: &Framer{}}
		}
		budget := NewBudget(1 << 20) // room for everything: no memory drops
		out, lines, drops, err := frameWith(t, r, cfg, budget)
		if st := budget.Stats(); st.Used != 0 {
			t.Fatalf("%d bytes still charged after every batch was released", st.Used)
		}
		wantOut, wantLines, wantDropped := reference(in, cfg.MaxLineBytes, clean)
		if !bytes.Equal(out, wantOut) {
			t.Fatalf("output %q, want %q", out, wantOut)
		}
		if lines != wantLines || len(drops) != wantDropped {
			t.Fatalf("%d lines %d drops, want %d and %d", lines, len(drops), wantLines, wantDropped)
		}
		if clean && !errors.Is(err, io.EOF) || !clean && !errors.Is(err, readErr) {
			t.Fatalf("err = %v", err)
		}
	})
}
