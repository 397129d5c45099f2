package pool

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
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

// A TLS 1.3 target that requires a client certificate ndlb does not have
// refuses it with an alert after ndlb's handshake has ended, and discards
// what ndlb wrote meanwhile, after its kernel acknowledged it. ndlb waits
// for that verdict before it writes: the lines stay queued, none counts as
// delivered, and the target is down with the alert as its error. With the
// certificate, everything arrives.
func TestTLS13TargetRefusingTheClientCertificate(t *testing.T) {
	ca, err := certtest.NewCA("refusing target CA")
	if err != nil {
		t.Fatal(err)
	}
	serverPair, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	serverCert, err := tls.X509KeyPair(serverPair.CertPEM, serverPair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	clientPair, err := ca.Issue("ndlb")
	if err != nil {
		t.Fatal(err)
	}
	clientCert, err := tls.X509KeyPair(clientPair.CertPEM, clientPair.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	sinkTLS := &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs: pool, MinVersion: tls.VersionTLS13}
	for _, withCert := range []bool{false, true} {
		cfg := testConfig()
		cfg.Connections = 1
		clientTLS := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS13}
		if withCert {
			clientTLS.Certificates = []tls.Certificate{clientCert}
		}
		cfg.TLS = func() (*tls.Config, error) { return clientTLS, nil }
		w := newWorldWith(t, 1, cfg, func(l *linetest.Ledger) (*linetest.Sink, error) {
			return linetest.NewTLSSink("127.0.0.1:0", l, sinkTLS)
		})
		w.push(1, 0, 1000, 20)
		w.start()
		if withCert {
			w.finish()
			if r := w.ledger.Check(map[uint32]uint32{1: 1000}); r.Lost != 0 || r.Duplicated != 0 {
				t.Fatal(r)
			}
			continue
		}
		target := w.set.Targets()[0]
		waitFor(t, func() bool { return w.p.Stats().DialFailures >= 3 })
		if err := target.LastErr(); err == nil || !strings.Contains(err.Error(), "certificate required") {
			t.Fatalf("target's error %v, want the alert", err)
		}
		if st := w.q.Stats(); st.LinesOut != 0 || target.Stats().Lines != 0 {
			t.Fatalf("%d lines counted out of the queue, %d delivered, to a target that refused the connection", st.LinesOut, target.Stats().Lines)
		}
		w.cancel()
		<-w.done
	}
}
