package pool

import (
	"crypto/tls"
	"crypto/x509"
	"testing"

	"github.com/ndlb/ndlb/internal/certtest"
	"github.com/ndlb/ndlb/internal/linetest"
)

// Over TLS, acknowledgement is counted in bytes on the wire (records and
// handshake included). A TLS target reset mid-stream loses nothing, and
// every batch lands exactly where the counts say.
func TestTLSTargetFailover(t *testing.T) {
	ca, err := certtest.NewCA("pool test ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(pair.CertPEM, pair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)

	cfg := testConfig()
	cfg.TLS = func() (*tls.Config, error) { return &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, nil }
	sinkTLS := &tls.Config{Certificates: []tls.Certificate{cert}}
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
