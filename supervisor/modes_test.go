package supervisor

import (
	"testing"

	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/spool"
)

// A spool counts for /readyz only while it takes lines without waiting.
func TestSpoolAccepting(t *testing.T) {
	block := spool.DefaultConfig("/spool")
	block.MaxBytes = 1 << 30
	drop := block
	drop.Full = spool.DropOldest
	open := func(bytes int64, waiting int, failing bool) ndjson.Stats {
		return ndjson.Stats{SpoolOpen: true, SpoolFailing: failing, Spool: spool.Stats{Bytes: bytes, Waiting: waiting}}
	}
	tests := []struct {
		name string
		sc   *spool.Config
		st   ndjson.Stats
		want bool
	}{
		{"open, with room", &block, open(1<<20, 0, false), true},
		{"not open yet (a reload's predecessor holds it)", &block, ndjson.Stats{}, false},
		{"appends failing (disk full under the limit, EIO)", &block, open(1<<20, 0, true), false},
		{"full", &block, open(1<<30, 0, false), false},
		{"an append waits for room", &block, open(1<<30-100, 1, false), false},
		{"full, drop-oldest makes room", &drop, open(1<<30, 0, false), true},
		{"drop-oldest, appends failing", &drop, open(1<<20, 0, true), false},
	}
	for _, tt := range tests {
		if got := spoolAccepting(tt.sc, tt.st); got != tt.want {
			t.Errorf("%s: accepting %v, want %v", tt.name, got, tt.want)
		}
	}
}
