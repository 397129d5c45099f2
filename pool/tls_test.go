package pool

import (
	"crypto/tls"
	"testing"

	"github.com/ndlb/ndlb/internal/certtest"
	"github.com/ndlb/ndlb/internal/linetest"
)

// Over TLS, acknowledgement is counted in bytes on the wire (records and
// handshake included). A TLS target reset mid-stream loses nothing, and
// every batch lands exactly where the counts say.
func TestTLSTargetFailover(t *testing.T) {
	serverTLS, clientTLS, err := certtest.Configs("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}

	cfg := testConfig()
	cfg.TLS = func() (*tls.Config, error) { return clientTLS, nil }
	sinkTLS := serverTLS
	w := newWorldWith(t, 2, cfg, func(l *linetest.Ledger) (*linetest.Sink, error) {
		return linetest.NewTLSSink("127.0.0.1:0", l, sinkTLS)
	})
	if r := w.resetMidStream(); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
	var lines uint64
	for _, tg := range w.set.Targets() {
		lines += tg.Stats().Lines
	}
	if st := w.q.Stats(); st.LinesOut != 30000 || lines != 30000 {
		t.Fatalf("queue counted %d lines out, targets %d; want 30000", st.LinesOut, lines)
	}
}
