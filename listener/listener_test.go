package listener

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/ksuid"
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
	mu          sync.Mutex
	data        []string
	errs        []error
	interrupted []bool
	first       chan string // if set, told what the first read returned
}

func (h *readAll) ServeConn(c *Conn) {
	if err := c.Materialize(); err != nil { // accepted raw
		panic(err)
	}
	var first []byte
	if h.first != nil { // one read first, reported
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		first = buf[:n]
		h.first <- string(first)
	}
	b, err := io.ReadAll(c)
	b = append(first, b...)
	h.mu.Lock()
	h.data = append(h.data, string(b))
	h.errs = append(h.errs, err)
	h.interrupted = append(h.interrupted, c.Interrupted())
	h.mu.Unlock()
}

// tlsServer is a server TLS config with a certificate for localhost from a
// fresh CA.
func tlsServer(t *testing.T) *tls.Config {
	t.Helper()
	dir := t.TempDir()
	ca, _ := certtest.NewCA("ca")
	pair, _ := ca.Issue("localhost")
	cert, key, _ := pair.Write(dir, "srv")
	srv, err := tlsutil.Server(tlsutil.ServerOptions{CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	return srv
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
	for _, raw := range []bool{false, true} {
		t.Run(fmt.Sprintf("raw=%v", raw), func(t *testing.T) {
			h := &readAll{}
			l := start(t, h, Config{Inline: raw, RawAccept: raw})
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
			// Raw accepts wait on a duplicate of the socket: it is
			// closed too.
			if _, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
				t.Fatal("still accepting after Shutdown")
			}
		})
	}
}

// When the deadline passes, reads on open connections fail, so handlers
// return and Shutdown does too.
func TestShutdownDeadlineInterruptsReads(t *testing.T) {
	h := &readAll{first: make(chan string, 1)}
	l := start(t, h, Config{})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("partial"))
	if got := <-h.first; got != "partial" { // the handler holds it, and reads on
		t.Fatalf("first read %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	// The read ends with the deadline's error, or with an end of stream
	// when it began just before the socket was shut: either way the
	// connection says it was interrupted, which is how a handler tells
	// that end from the client's (ndjson's reader does).
	if len(h.errs) != 1 || !h.interrupted[0] || h.data[0] != "partial" {
		t.Fatalf("handler saw %q, %v, interrupted %v", h.data, h.errs, h.interrupted)
	}
}

func TestTLSHandshakeFailureCounted(t *testing.T) {
	srv := tlsServer(t)
	h := &readAll{}
	l := start(t, h, Config{TLS: srv, HandshakeTimeout: time.Second})
	// A client that does not trust the server's CA fails the handshake.
	_, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{ServerName: "localhost"})
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

// Handover stops one listener and lets a successor accept on the same open
// socket: connections made before, during and after (also those queued in
// the backlog meanwhile) are all served, none refused or reset, and
// Shutdown of the old listener leaves the socket to the successor.
// The same with connections accepted raw (Config.RawAccept) on the old
// listener.
func TestHandoverServesEveryConnection(t *testing.T) {
	for _, raw := range []bool{false, true} {
		t.Run(fmt.Sprintf("raw=%v", raw), func(t *testing.T) { testHandover(t, raw) })
	}
}

func testHandover(t *testing.T, raw bool) {
	h1, h2 := &readAll{}, &readAll{}
	ln := newLocalListener(t)
	l1 := New(ln, h1, Config{Logger: quiet(), Inline: raw, RawAccept: raw})
	go l1.Serve()
	addr := ln.Addr().String()
	send := func(i int) error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			return err
		}
		return c.(*net.TCPConn).CloseWrite()
	}
	for i := range 20 {
		if err := send(i); err != nil {
			t.Fatal(err)
		}
	}
	got := l1.Handover()
	if got != ln {
		t.Fatalf("Handover returned %v, want the listening socket", got)
	}
	for i := 20; i < 40; i++ { // queued in the backlog: nobody accepts yet
		if err := send(i); err != nil {
			t.Fatal(err)
		}
	}
	l2 := New(got, h2, Config{Logger: quiet()})
	go l2.Serve()
	for i := 40; i < 60; i++ {
		if err := send(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := l1.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := send(60); err != nil {
		t.Fatalf("after the old listener's Shutdown: %v", err)
	}
	if err := l2.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	h1.mu.Lock()
	h2.mu.Lock()
	defer h1.mu.Unlock()
	defer h2.mu.Unlock()
	if n := len(h1.data) + len(h2.data); n != 61 {
		t.Fatalf("served %d+%d connections, want 61", len(h1.data), len(h2.data))
	}
	for _, err := range append(h1.errs, h2.errs...) {
		if err != nil {
			t.Fatalf("a connection failed: %v", err)
		}
	}
	if len(h2.data) < 41 {
		t.Fatalf("the successor served %d connections, want the 41 made after the hand-over", len(h2.data))
	}
}

// At the shutdown deadline a connection's socket is shut both ways: the
// handler reads what the kernel holds with FinalRead, which then reports
// ErrDrained (the client never ended its stream), not a clean EOF.
func TestInterruptedConnectionReadsWhatTheKernelHolds(t *testing.T) {
	h := &interruptedHandler{got: make(chan []byte, 1), errs: make(chan error, 1)}
	l := start(t, h, Config{})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	payload := bytes.Repeat([]byte("x"), 100000)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the deadline has passed at once
	_ = l.Shutdown(ctx)
	if b, err := <-h.got, <-h.errs; !bytes.Equal(b, payload) || !errors.Is(err, ErrDrained) {
		t.Fatalf("read %d bytes after the deadline, want %d; then %v, want ErrDrained", len(b), len(payload), err)
	}
}

type handlerFunc func(*Conn)

func (f handlerFunc) ServeConn(c *Conn) { f(c) }

// Zero timeouts and a nil logger take the defaults: a TLS handshake and a
// PROXY header are read (a zero timeout would fail both at once), and the
// count of active connections comes back to zero.
func TestZeroConfigTakesDefaults(t *testing.T) {
	srv := tlsServer(t)
	h := &readAll{}
	l := New(newLocalListener(t), h, Config{TLS: srv, AcceptProxy: true}) // no timeouts, no logger
	go l.Serve()
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	raw.Write([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1000 2000\r\n"))
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true})
	if _, err := tc.Write([]byte("fine")); err != nil {
		t.Fatalf("with default timeouts: %v", err)
	}
	tc.Close()
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Active != 0 || st.Accepted != 1 || st.HandshakeFailed != 0 || st.ProxyRejected != 0 {
		t.Fatalf("stats %+v", st)
	}
	if len(h.data) != 1 || h.data[0] != "fine" {
		t.Fatalf("handler saw %q", h.data)
	}
}

// interruptedHandler waits until its connection is interrupted, then reads
// what the kernel holds with FinalRead and reports it with the final error.
type interruptedHandler struct {
	got  chan []byte
	errs chan error
	hold chan struct{} // if set, the handler keeps the connection until it closes
}

func (h *interruptedHandler) ServeConn(c *Conn) {
	tc, _, _ := c.Raw()
	rc, _ := tc.SyscallConn()
	for !c.Interrupted() {
		time.Sleep(time.Millisecond)
	}
	var all []byte
	buf := make([]byte, 4096)
	for {
		n, err := FinalRead(rc, buf)
		all = append(all, buf[:n]...)
		if err != nil {
			h.got <- all
			h.errs <- err
			if h.hold != nil {
				<-h.hold
			}
			return
		}
	}
}

// A client that had ended its stream (FIN) before the deadline: what it
// sent is read, then a clean EOF, not ErrDrained.
func TestFinalReadSeesTheClientsEnd(t *testing.T) {
	h := &interruptedHandler{got: make(chan []byte, 1), errs: make(chan error, 1)}
	l := start(t, h, Config{})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("all I had"))
	c.(*net.TCPConn).CloseWrite()
	time.Sleep(50 * time.Millisecond) // the FIN reaches the server's kernel
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = l.Shutdown(ctx)
	if b, err := <-h.got, <-h.errs; string(b) != "all I had" || !errors.Is(err, io.EOF) {
		t.Fatalf("read %q, then %v; want the data and io.EOF", b, err)
	}
}

// After the deadline's shutdown the kernel acknowledges nothing more from
// the client: its later writes fail instead of vanishing into a socket
// nobody reads.
func TestInterruptStopsAcknowledging(t *testing.T) {
	hold := make(chan struct{})
	h := &interruptedHandler{got: make(chan []byte, 1), errs: make(chan error, 1), hold: hold}
	l := start(t, h, Config{})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("before"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() { _ = l.Shutdown(ctx); close(done) }()
	if b, err := <-h.got, <-h.errs; string(b) != "before" || !errors.Is(err, ErrDrained) {
		t.Fatalf("read %q, then %v; want the data and ErrDrained", b, err)
	}
	// The handler still holds the connection open: only the shutdown can
	// make the kernel refuse what the client sends now.
	defer func() { close(hold); <-done }()
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	for i := range 100 {
		if _, err := c.Write([]byte("after")); err != nil {
			return // reset: the server's kernel refused the data
		}
		if i == 99 {
			t.Fatal("writes after the shutdown kept succeeding")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A TLS client's records in the kernel at the deadline are still read and
// decrypted; then the read ends with the drain error.
func TestTLSReadsWhatTheKernelHoldsAtTheDeadline(t *testing.T) {
	srv := tlsServer(t)
	got := make(chan []byte, 1)
	errc := make(chan error, 1)
	sent := make(chan struct{})
	h := handlerFunc(func(c *Conn) {
		<-sent
		for !c.Interrupted() {
			time.Sleep(time.Millisecond)
		}
		b, err := io.ReadAll(c)
		got <- b
		errc <- err
	})
	l := start(t, h, Config{TLS: srv})
	tc, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	payload := bytes.Repeat([]byte("secret "), 5000)
	if _, err := tc.Write(payload); err != nil {
		t.Fatal(err)
	}
	close(sent)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = l.Shutdown(ctx)
	if b, err := <-got, <-errc; !bytes.Equal(b, payload) || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d of %d bytes, then %v", len(b), len(payload), err)
	}
}

// New fills in the documented defaults for zero and negative timeouts, and
// keeps a timeout that is set. A zero PROXY header timeout left in place
// would let a client that never sends its header hold a connection forever.
func TestTimeoutDefaults(t *testing.T) {
	ln := newLocalListener(t)
	for _, d := range []time.Duration{0, -time.Second} {
		l := New(ln, &readAll{}, Config{HandshakeTimeout: d, ProxyHeaderTimeout: d})
		if l.cfg.HandshakeTimeout != 10*time.Second || l.cfg.ProxyHeaderTimeout != 5*time.Second {
			t.Errorf("timeouts %v: handshake %v, PROXY header %v; want 10s and 5s", d,
				l.cfg.HandshakeTimeout, l.cfg.ProxyHeaderTimeout)
		}
	}
	l := New(ln, &readAll{}, Config{HandshakeTimeout: time.Millisecond, ProxyHeaderTimeout: 2 * time.Millisecond})
	if l.cfg.HandshakeTimeout != time.Millisecond || l.cfg.ProxyHeaderTimeout != 2*time.Millisecond {
		t.Errorf("set timeouts replaced: %+v", l.cfg)
	}
}

// failingListener fails its first accepts with an error that is not
// net.ErrClosed (as running out of file descriptors does), then accepts
// from the real listener.
type failingListener struct {
	net.Listener
	fails int
}

func (f *failingListener) Accept() (net.Conn, error) {
	if f.fails > 0 {
		f.fails--
		return nil, syscall.EMFILE
	}
	return f.Listener.Accept()
}

// An accept error other than a closed listener is retried after a delay
// that doubles from 5ms, and the listener then serves as before.
func TestAcceptErrorsBackOff(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil))
	got := make(chan string, 1)
	h := handlerFunc(func(c *Conn) {
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	l := New(&failingListener{Listener: newLocalListener(t), fails: 4}, h, Config{Logger: log})
	served := make(chan error, 1)
	go func() { served <- l.Serve() }()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("after the errors"))
	c.Close()
	select {
	case s := <-got:
		if s != "after the errors" {
			t.Fatalf("handler read %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the connection after the accept errors was not served")
	}
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	var delays []string
	for _, line := range strings.Split(logs.String(), "\n") {
		if _, d, ok := strings.Cut(line, "delay="); ok {
			d, _, _ = strings.Cut(d, " ")
			delays = append(delays, d)
		}
	}
	// Four failures; the first three are logged, the rest once every
	// 10 s at most.
	if want := []string{"5ms", "10ms", "20ms"}; !slices.Equal(delays, want) || l.holds.Load() != 4 || l.holdDelay.Load() != int64(40*time.Millisecond) {
		t.Fatalf("retry delays %q, want %q; %d failures, last delay %v\n%s", delays, want, l.holds.Load(), time.Duration(l.holdDelay.Load()), logs.String())
	}
}

// lockedWriter serialises writes to a buffer read by the test.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// An adopted connection is served with the bytes read before it moved
// first, keeps its id and client address, takes a free place under
// MaxConns, and a listener that shuts down adopts nothing.
func TestAdopt(t *testing.T) {
	got := make(chan string, 4)
	h := handlerFunc(func(c *Conn) {
		b, _ := io.ReadAll(c)
		got <- c.ID.String() + " " + c.Client.String() + " " + string(b)
	})
	// Two places: the accept loop holds one for its next client, the
	// adopted connection takes the other.
	l := start(t, h, Config{MaxConns: 2})
	peer, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	client, err := net.Dial("tcp", peer.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	nc, err := peer.Accept()
	if err != nil {
		t.Fatal(err)
	}
	id := ksuid.New()
	from := &net.TCPAddr{IP: net.ParseIP("192.0.2.9"), Port: 99}
	if !l.Adopt(nc, id, from, nc.LocalAddr(), []byte("before ")) {
		t.Fatal("a running listener refused to adopt")
	}
	// A new client takes the other place; with both held, the accept loop
	// finds none free for the next one.
	waiting, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	waiting.Write([]byte("second"))
	deadline := time.Now().Add(10 * time.Second)
	for l.Stats().LimitReached == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the adopted connection took no place under MaxConns")
		}
		time.Sleep(time.Millisecond)
	}
	waiting.Close()
	client.Write([]byte("after"))
	client.Close()
	seen := map[string]bool{<-got: true, <-got: true}
	if !seen[id.String()+" 192.0.2.9:99 before after"] {
		t.Fatalf("the adopted connection was not read as it should: %v", seen)
	}
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Adopted != 1 || st.Active != 0 {
		t.Fatalf("stats %+v", st)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if l.Adopt(a, ksuid.New(), from, from, nil) {
		t.Fatal("a listener that shut down adopted a connection")
	}
}
