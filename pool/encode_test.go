package pool

import (
	"testing"

	"github.com/ndlb/ndlb/framer"
)

// After a failure, the messages of an encoded batch that the target
// acknowledged whole are found by their encoded length: they are not sent
// again.
func TestWholeEncoded(t *testing.T) {
	c := &upConn{encode: func(dst, data []byte) []byte { return framer.EncodeOctet(dst, data, true) }}
	data := []byte("ab\nx\\ny\n\nlast\n") // "2 ab", "3 x\ny", "0 ", "4 last" on the wire
	wire := framer.EncodeOctet(nil, data, true)
	if string(wire) != "2 ab3 x\ny0 4 last" {
		t.Fatalf("wire %q", wire)
	}
	for _, tc := range []struct {
		acked      int64
		cut, lines int
	}{
		{0, 0, 0}, {3, 0, 0}, {4, 3, 1}, {8, 3, 1}, {9, 8, 2}, {11, 9, 3}, {int64(len(wire)), len(data), 4},
	} {
		cut, lines := c.wholeEncoded(data, tc.acked)
		if cut != tc.cut || lines != tc.lines {
			t.Errorf("acked %d: cut %d, %d lines; want %d, %d", tc.acked, cut, lines, tc.cut, tc.lines)
		}
	}
}
