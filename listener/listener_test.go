package listener

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/internal/certtest"
	"github.com/ndlb/ndlb/tlsutil"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newLocalListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// readAll is a handler that reads each connection to its end and records
// what it read and how the read ended.
type readAll struct {
	mu   sync.Mutex
	data []string
	errs []error
}

func (h *readAll) ServeConn(c *Conn) {
	b, err := io.ReadAll(c)
	h.mu.Lock()
	h.data = append(h.data, string(b))
	h.errs = append(h.errs, err)
	h.mu.Unlock()
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func start(t *testing.T, h Handler, cfg Config) *Listener {
	t.Helper()
	cfg.Logger = quiet()
	l := New(newLocalListener(t), h, cfg)
	go l.Serve()
	return l
}

// Connections that were complete in the kernel's backlog when Shutdown
// began are served, not reset.
func TestShutdownServesBacklog(t *testing.T) {
	h := &readAll{}
	l := start(t, h, Config{})
	for range 20 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("hello"))
		c.Close()
	}
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(h.data) != 20 {
		t.Fatalf("served %d of 20 connections", len(h.data))
	}
	if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		t.Fatal("still accepting after Shutdown")
	}
}

// When the deadline passes, reads on open connections fail, so handlers
// return and Shutdown does too.
func TestShutdownDeadlineInterruptsReads(t *testing.T) {
	h := &readAll{}
	l := start(t, h, Config{})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("partial"))
	for l.Stats().Active == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	if len(h.errs) != 1 || h.errs[0] == nil || h.data[0] != "partial" {
		t.Fatalf("handler saw %q, %v", h.data, h.errs)
	}
}

func TestTLSHandshakeFailureCounted(t *testing.T) {
	dir := t.TempDir()
	ca, _ := certtest.NewCA("ca")
	pair, _ := ca.Issue("localhost")
	cert, key, _ := pair.Write(dir, "srv")
	srv, err := tlsutil.Server(tlsutil.ServerOptions{CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	h := &readAll{}
	l := start(t, h, Config{TLS: srv, HandshakeTimeout: time.Second})
	// A client that does not trust the server's CA fails the handshake.
	_, err = tls.Dial("tcp", l.Addr().String(), &tls.Config{ServerName: "localhost"})
	if err == nil {
		t.Fatal("handshake with an untrusted certificate succeeded")
	}
	// A client that trusts it gets through.
	tc, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	tc.Write([]byte("over tls"))
	tc.Close()
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.HandshakeFailed != 1 || st.Accepted != 2 {
		t.Fatalf("stats %+v", st)
	}
	if len(h.data) != 1 || h.data[0] != "over tls" {
		t.Fatalf("handler saw %q", h.data)
	}
}
