package tlsutil

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/internal/certtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type pki struct {
	dir             string
	ca              *certtest.CA
	caFile          string
	srvCert, srvKey string
	cliCert, cliKey string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	var err error
	if p.ca, err = certtest.NewCA("test ca"); err != nil {
		t.Fatal(err)
	}
	if p.caFile, err = p.ca.WriteCA(p.dir, "ca"); err != nil {
		t.Fatal(err)
	}
	p.srvCert, p.srvKey = p.issue(t, "server", "localhost", "127.0.0.1")
	p.cliCert, p.cliKey = p.issue(t, "client", "client")
	return p
}

func (p *pki) issue(t *testing.T, name string, names ...string) (string, string) {
	t.Helper()
	pair, err := p.ca.Issue(names...)
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := pair.Write(p.dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func newLocalListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// handshake runs one TLS exchange over loopback and returns the serial of
// the server certificate the client saw, or the client's error.
func handshake(t *testing.T, srv *tls.Config, cli *tls.Config) (string, error) {
	t.Helper()
	ln := newLocalListener(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if tc.Handshake() == nil {
			io.Copy(tc, tc) // echo until the client closes
		}
	}()
	defer func() { <-done }()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), cli)
	if err != nil {
		return "", err
	}
	defer c.Close()
	// TLS 1.3 reports a rejected client certificate on the first read.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		return "", err
	}
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		return "", err
	}
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

func TestServerAndClient(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name    string
		srv     ServerOptions
		cli     ClientOptions
		wantErr bool
	}{
		{name: "verified", srv: ServerOptions{CertFile: p.srvCert, KeyFile: p.srvKey},
			cli: ClientOptions{CAFile: p.caFile, ServerName: "localhost"}},
		{name: "skip verify", srv: ServerOptions{CertFile: p.srvCert, KeyFile: p.srvKey},
			cli: ClientOptions{SkipVerify: true}},
		{name: "wrong name", srv: ServerOptions{CertFile: p.srvCert, KeyFile: p.srvKey},
			cli: ClientOptions{CAFile: p.caFile, ServerName: "other.example"}, wantErr: true},
		{name: "mutual", srv: ServerOptions{CertFile: p.srvCert, KeyFile: p.srvKey, ClientCAFile: p.caFile},
			cli: ClientOptions{CAFile: p.caFile, ServerName: "localhost", CertFile: p.cliCert, KeyFile: p.cliKey}},
		{name: "mutual without client cert", srv: ServerOptions{CertFile: p.srvCert, KeyFile: p.srvKey, ClientCAFile: p.caFile},
			cli: ClientOptions{CAFile: p.caFile, ServerName: "localhost"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, err := Server(tt.srv)
			if err != nil {
				t.Fatal(err)
			}
			get, err := Client(tt.cli)
			if err != nil {
				t.Fatal(err)
			}
			cli, err := get()
			if err != nil {
				t.Fatal(err)
			}
			if cli.MinVersion != tls.VersionTLS12 {
				t.Fatal("client allows TLS below 1.2")
			}
			_, err = handshake(t, srv, cli)
			if (err != nil) != tt.wantErr {
				t.Fatalf("handshake err = %v, want error: %v", err, tt.wantErr)
			}
		})
	}
}

// Replacing the certificate on disk changes what the next handshake
// presents; a broken rotation keeps the last good certificate.
func TestServerRotation(t *testing.T) {
	p := newPKI(t)
	var reloadErrs []error
	srv, err := Server(ServerOptions{CertFile: p.srvCert, KeyFile: p.srvKey, OnReloadError: func(err error) { reloadErrs = append(reloadErrs, err) }})
	if err != nil {
		t.Fatal(err)
	}
	get, _ := Client(ClientOptions{CAFile: p.caFile, ServerName: "localhost"})
	cli, _ := get()
	first, err := handshake(t, srv, cli)
	if err != nil {
		t.Fatal(err)
	}
	p.issue(t, "server", "localhost") // rotate both files
	second, err := handshake(t, srv, cli)
	if err != nil || second == first {
		t.Fatalf("after rotation: serial %s (was %s), err %v", second, first, err)
	}
	if err := os.WriteFile(p.srvKey, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	third, err := handshake(t, srv, cli)
	if err != nil || third != second || len(reloadErrs) != 1 {
		t.Fatalf("broken rotation: serial %s (want %s), err %v, reload errors %v", third, second, err, reloadErrs)
	}
}

func TestBadInput(t *testing.T) {
	p := newPKI(t)
	garbage := filepath.Join(p.dir, "garbage.pem")
	os.WriteFile(garbage, []byte("hello"), 0o600)
	missing := filepath.Join(p.dir, "missing.pem")
	tests := []struct {
		name string
		run  func() error
		is   error
	}{
		{name: "server without key", run: func() error { _, err := Server(ServerOptions{CertFile: p.srvCert}); return err }, is: ErrConfig},
		{name: "server missing cert", run: func() error { _, err := Server(ServerOptions{CertFile: missing, KeyFile: p.srvKey}); return err }, is: os.ErrNotExist},
		{name: "server mismatched key", run: func() error { _, err := Server(ServerOptions{CertFile: p.srvCert, KeyFile: p.cliKey}); return err }},
		{name: "client CA without certs", run: func() error { _, err := Client(ClientOptions{CAFile: garbage}); return err }, is: ErrNoCerts},
		{name: "client cert without key", run: func() error { _, err := Client(ClientOptions{CertFile: p.cliCert}); return err }, is: ErrConfig},
		{name: "client CA missing", run: func() error { _, err := Client(ClientOptions{CAFile: missing}); return err }, is: os.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.run()
			if err == nil || (tt.is != nil && !errors.Is(err, tt.is)) {
				t.Fatalf("err = %v, want %v", err, tt.is)
			}
		})
	}
}

// Files that failed to load are not parsed again (on every handshake,
// under the reloader's lock) until one of them changes on disk.
func TestFailedFilesNotParsedAgain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cert.pem")
	if err := os.WriteFile(path, []byte("v1"), 0o600); err != nil {
		t.Fatal(err)
	}
	loads, good := 0, false
	var reported []error
	r := &reloader{files: []string{path, ""}, onErr: func(err error) { reported = append(reported, err) }, load: func() (*tls.Config, error) {
		loads++
		if good {
			return &tls.Config{}, nil
		}
		return nil, errors.New("bad PEM")
	}}
	for range 100 {
		if _, err := r.current(); err == nil {
			t.Fatal("a config from files that fail to load")
		}
	}
	if loads != 1 {
		t.Fatalf("%d loads of unchanged bad files, want 1", loads)
	}
	good = true
	rewrite := func(content string) {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		future := time.Now().Add(time.Duration(loads) * time.Second) // a new mtime even on a coarse clock
		os.Chtimes(path, future, future)
	}
	rewrite("v2")
	if cfg, err := r.current(); err != nil || cfg == nil || loads != 2 {
		t.Fatalf("after a fix: %v %v, %d loads", cfg, err, loads)
	}
	good = false
	rewrite("v3 broken")
	for range 100 {
		if cfg, err := r.current(); err != nil || cfg == nil {
			t.Fatalf("a broken rotation dropped the good config: %v", err)
		}
	}
	if loads != 3 || len(reported) != 1 {
		t.Fatalf("%d loads, %d reports; want 3 and 1", loads, len(reported))
	}
}
