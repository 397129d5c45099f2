package integration

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/certtest"
	"github.com/ndlb/ndlb/internal/linetest"
)

type pki struct {
	dir    string
	ca     *certtest.CA
	caFile string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	var err error
	if p.ca, err = certtest.NewCA("ndlb test ca"); err != nil {
		t.Fatal(err)
	}
	if p.caFile, err = p.ca.WriteCA(p.dir, "ca"); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *pki) files(t *testing.T, name string, names ...string) (cert, key string, pair tls.Certificate) {
	t.Helper()
	pr, err := p.ca.Issue(names...)
	if err != nil {
		t.Fatal(err)
	}
	if cert, key, err = pr.Write(p.dir, name); err != nil {
		t.Fatal(err)
	}
	if pair, err = tls.X509KeyPair(pr.CertPEM, pr.KeyPEM); err != nil {
		t.Fatal(err)
	}
	return cert, key, pair
}

func (p *pki) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	return pool
}

// TLS on the listener and toward the targets, with client certificates on
// both hops: every line arrives once, and a client without a certificate is
// refused.
func TestTLSBothSidesWithClientCertificates(t *testing.T) {
	p := newPKI(t)
	srvCert, srvKey, _ := p.files(t, "ndlb", "127.0.0.1", "localhost")
	upCert, upKey, _ := p.files(t, "ndlb-upstream", "ndlb")
	_, _, shipper := p.files(t, "shipper", "shipper")
	_, _, target := p.files(t, "target", "127.0.0.1")

	ledger := linetest.NewLedger()
	targetTLS := &tls.Config{Certificates: []tls.Certificate{target}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool()}
	w := &world{t: t, ledger: ledger}
	for range 2 {
		s, err := linetest.NewTLSSink("127.0.0.1:0", ledger, targetTLS)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		w.sinks = append(w.sinks, s)
	}
	proc := startNDLB(t, "--target", w.targets(),
		"-tls-cert", srvCert, "-tls-key", srvKey, "--tls-client-ca", p.caFile,
		"-tls-target", "--tls-target-ca", p.caFile, "--tls-target-cert", upCert, "--tls-target-key", upKey)

	clientTLS := &tls.Config{RootCAs: p.pool(), ServerName: "localhost", Certificates: []tls.Certificate{shipper}}
	sent, err := clients(4, 20000, func(c uint32) error {
		conn, err := tls.Dial("tcp", proc.addr, clientTLS)
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = linetest.Send(conn, c, 0, 20000, 16<<10)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	// No client certificate: the handshake is refused.
	anon, err := tls.Dial("tcp", proc.addr, &tls.Config{RootCAs: p.pool(), ServerName: "localhost"})
	if err == nil {
		anon.SetDeadline(time.Now().Add(5 * time.Second))
		anon.Write(linetest.AppendLine(nil, 99, 0))
		_, err = io.ReadAll(anon)
		anon.Close()
	}
	if err == nil {
		t.Error("a client without a certificate was served")
	}
	proc.waitLog("TLS handshake failed", 5*time.Second)

	proc.stopOK()
	if r := w.check(sent); r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 || r.Unexpected != 0 {
		t.Fatal(r)
	}
	for _, s := range w.sinks {
		if s.Lines() == 0 {
			t.Errorf("TLS target %s got nothing", s.Addr())
		}
	}
}
