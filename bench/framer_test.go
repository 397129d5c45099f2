package bench

import (
	"bytes"
	"io"
	"testing"

	"github.com/ndlb/ndlb/framer"
)

// lines256 returns n bytes of 255-byte lines, each ending in '\n'.
func lines256(n int) []byte {
	line := append(bytes.Repeat([]byte("x"), 255), '\n')
	return bytes.Repeat(line, n/256)
}

// loopReader serves data forever, each read as large as asked.
type loopReader struct {
	data []byte
	off  int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := copy(p, r.data[r.off:])
	r.off = (r.off + n) % len(r.data)
	return n, nil
}

// BenchmarkFramer cuts 256-byte lines in 16 KiB reads: MB/s and allocs/op
// (one op is one batch).
func BenchmarkFramer(b *testing.B) {
	for _, tt := range []struct {
		name string
		cfg  framer.Config
	}{
		{name: "16KiB-reads", cfg: framer.DefaultConfig()},
		{name: "64KiB-reads", cfg: framer.Config{ReadBytes: 64 << 10, MaxLineBytes: 1 << 20}},
	} {
		b.Run(tt.name, func(b *testing.B) {
			f := framer.New(&loopReader{data: lines256(1 << 20)}, tt.cfg, framer.NewPool())
			b.ReportAllocs()
			var n int64
			for b.Loop() {
				batch, err := f.Next()
				if err != nil {
					b.Fatal(err)
				}
				n += int64(len(batch.Data))
				batch.Release()
			}
			b.SetBytes(n / int64(max(1, b.N)))
		})
	}
}

var _ io.Reader = (*loopReader)(nil)
