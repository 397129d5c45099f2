package integration

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
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
	// Rounds of 4 clients until both targets have lines (at most 5): on
	// a busy machine one round can end before the second target's TLS
	// handshake does.
	sent := map[uint32]uint32{}
	for round := uint32(0); round < 5 && (w.sinks[0].Lines() == 0 || w.sinks[1].Lines() == 0); round++ {
		got, err := clients(4, 20000, func(c uint32) error {
			conn, err := tls.Dial("tcp", proc.addr, clientTLS)
			if err != nil {
				return err
			}
			defer conn.Close()
			_, err = linetest.Send(conn, 4*round+c, 0, 20000, 16<<10)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		for c, n := range got {
			sent[4*round+c] = n
		}
		w.waitLines(uint64(20000 * len(sent)))
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

// Rotated files take effect without a restart, end to end: a new client CA
// admits the clients it signed, and a new client certificate toward the
// targets is presented on the next connection (the target now trusting only
// the new CA).
func TestTLSRotationOfClientCAAndTargetCertificate(t *testing.T) {
	old, next := newPKI(t), newPKI(t)
	dir := t.TempDir()
	srvCert, srvKey, _ := old.files(t, "ndlb", "127.0.0.1", "localhost")
	caFile, err := old.ca.WriteCA(dir, "client-ca")
	if err != nil {
		t.Fatal(err)
	}
	upPair, err := old.ca.Issue("ndlb")
	if err != nil {
		t.Fatal(err)
	}
	upCert, upKey, err := upPair.Write(dir, "upstream")
	if err != nil {
		t.Fatal(err)
	}
	_, _, oldShipper := old.files(t, "shipper", "shipper")
	_, _, newShipper := next.files(t, "shipper", "shipper")
	_, _, target := old.files(t, "target", "127.0.0.1")

	// The target trusts one CA at a time, as an operator rotating would.
	var trusted atomic.Pointer[x509.CertPool]
	trusted.Store(old.pool())
	targetTLS := &tls.Config{Certificates: []tls.Certificate{target}, ClientAuth: tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			cert, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = cert.Verify(x509.VerifyOptions{Roots: trusted.Load(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		}}
	w := &world{t: t, ledger: linetest.NewLedger()}
	sink, err := linetest.NewTLSSink("127.0.0.1:0", w.ledger, targetTLS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	w.sinks = []*linetest.Sink{sink}
	p := startNDLB(t, "--target", w.targets(), "--backoff-max", "200ms",
		"-tls-cert", srvCert, "-tls-key", srvKey, "--tls-client-ca", caFile,
		"-tls-target", "--tls-target-ca", old.caFile, "--tls-target-cert", upCert, "--tls-target-key", upKey)
	send := func(cert tls.Certificate, c uint32) error {
		conn, err := tls.Dial("tcp", p.addr, &tls.Config{RootCAs: old.pool(), ServerName: "localhost", Certificates: []tls.Certificate{cert}})
		if err != nil {
			return err
		}
		defer conn.Close()
		if _, err := linetest.Send(conn, c, 0, 100, 4096); err != nil {
			return err
		}
		conn.CloseWrite()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(conn) // a refused certificate shows here, with TLS 1.3
		return err
	}
	if err := send(oldShipper, 1); err != nil {
		t.Fatalf("old client before the rotation: %v", err)
	}
	if err := send(newShipper, 99); err == nil {
		t.Fatal("a client of the new CA was served before the rotation")
	}
	// Rotate the client CA: clients of the new CA get in.
	if _, err := next.ca.WriteCA(dir, "client-ca"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c := uint32(2); send(newShipper, c) != nil; c++ {
		if time.Now().After(deadline) {
			t.Fatal("the rotated client CA was not picked up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Rotate the certificate toward the target: the target now trusts only
	// the new CA, and drops ndlb's connections so it must dial again.
	newUp, err := next.ca.Issue("ndlb")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := newUp.Write(dir, "upstream"); err != nil {
		t.Fatal(err)
	}
	trusted.Store(next.pool())
	sink.Kill(true)
	if err := sink.Restart(); err != nil {
		t.Fatal(err)
	}
	before := sink.Lines()
	if err := send(newShipper, 50); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(20 * time.Second)
	for sink.Lines() < before+100 {
		if time.Now().After(deadline) {
			t.Fatalf("no line reached the target after the certificate rotation (%d)", sink.Lines()-before)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.stopOK()
}

// ndlb writes nothing to an NDJSON client over TLS, not even TLS 1.3
// session tickets: a shipper that sends and closes without reading would
// otherwise leave them unread, and its kernel would reset the connection,
// discarding what it sent that ndlb had not read yet.
func TestTLSListenerWritesClientsNothing(t *testing.T) {
	p := newPKI(t)
	srvCert, srvKey, _ := p.files(t, "ndlb", "127.0.0.1", "localhost")
	w := newWorld(t, 1)
	proc := startNDLB(t, "--target", w.targets(), "-tls-cert", srvCert, "-tls-key", srvKey)
	tickets := &ticketCount{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	c, err := tls.Dial("tcp", proc.addr, &tls.Config{RootCAs: p.pool(), ServerName: "localhost",
		MinVersion: tls.VersionTLS13, ClientSessionCache: tickets})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(linetest.AppendLine(nil, 1, 0)); err != nil {
		t.Fatal(err)
	}
	// Delivered: ndlb finished its side of the handshake long before, and
	// a ticket would be on its way. A read takes what came (a ticket goes
	// to the cache); it can only time out, as ndlb sends nothing else.
	w.waitLines(1)
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d bytes from ndlb: %v", n, err)
	}
	if n := tickets.puts.Load(); n != 0 {
		t.Fatalf("ndlb sent the client %d session tickets", n)
	}
	c.Close()
	proc.stopOK()
	if r := w.check(map[uint32]uint32{1: 1}); r.Lost != 0 {
		t.Fatal(r)
	}
}

// ticketCount counts the session tickets a client is given.
type ticketCount struct {
	tls.ClientSessionCache
	puts atomic.Int64
}

func (c *ticketCount) Put(key string, cs *tls.ClientSessionState) {
	if cs != nil {
		c.puts.Add(1)
	}
	c.ClientSessionCache.Put(key, cs)
}

// A reload that comes while a certificate and its key do not match (a
// rotation half done: a Kubernetes Secret updates apart from the
// ConfigMap that changed with it) is refused, and tried again: once the
// key matches, the change it carried (a target here) applies with no new
// SIGHUP.
func TestReloadRefusedMidRotationIsTriedAgain(t *testing.T) {
	p := newPKI(t)
	cert, key, _ := p.files(t, "ndlb", "127.0.0.1", "localhost")
	_, otherKey, _ := p.files(t, "other", "127.0.0.1")
	goodKey, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	wrongKey, err := os.ReadFile(otherKey)
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, 2)
	dir := t.TempDir()
	doc := func(target *linetest.Sink) string {
		return fmt.Sprintf("log-format = \"json\"\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\n"+
			"tls-cert = %q\ntls-key = %q\ntarget = [%q]\n", cert, key, target.Addr())
	}
	path := writeConfig(t, dir, doc(w.sinks[0]))
	proc := startCmd(t, command(bin, "--config", path))
	listening(t, proc, 1)
	if err := os.WriteFile(key, wrongKey, 0o600); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, dir, doc(w.sinks[1])) // the watcher reloads it
	proc.waitLog("the refused reload is tried again: the files it names may be changing", 10*time.Second)
	if err := os.WriteFile(key, goodKey, 0o600); err != nil {
		t.Fatal(err)
	}
	applied := proc.waitLog("config reloaded", 10*time.Second)
	if trigger, _ := applied["trigger"].(string); !strings.HasSuffix(trigger, "tried again") {
		t.Fatalf("applied by %q, want the retry", trigger)
	}
	proc.stopOK()
}
