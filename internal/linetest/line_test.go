package linetest

import (
	"bytes"
	"testing"
)

func TestLineRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		c, s uint32
	}{
		{name: "zero", c: 0, s: 0},
		{name: "big", c: 4000000000, s: 123456},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line := AppendLine(nil, tt.c, tt.s)
			c, s, ok := ParseLine(line[:len(line)-1])
			if !ok || c != tt.c || s != tt.s {
				t.Fatalf("parse %q = %d %d %v", line, c, s, ok)
			}
		})
	}
}

func TestLedgerFindsTornLostAndDuplicated(t *testing.T) {
	l := NewLedger()
	a, b := AppendLine(nil, 1, 0), AppendLine(nil, 1, 1)
	merged := append(bytes.Clone(a[:len(a)-5]), b...) // a fragment merged into a line
	l.Add(a)
	l.Add(a)
	l.Add(merged)
	r := l.Check(map[uint32]uint32{1: 3})
	if r.Lost != 2 || r.Duplicated != 1 || r.Torn != 1 || r.Unique != 1 {
		t.Fatalf("report %s", r)
	}
}
