package listener

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/ndlb/ndlb/internal/logtest"
)

// recordConn is a handler that records each connection's addresses and
// what Raw and a read to the end return.
type recordConn struct {
	mu     sync.Mutex
	client []string
	data   []string
}

func (h *recordConn) ServeConn(c *Conn) {
	tc, pending, ok := c.Raw()
	var data []byte
	if ok {
		rest, _ := io.ReadAll(tc)
		data = append(pending, rest...)
	} else {
		data, _ = io.ReadAll(c)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.client = append(h.client, c.Client.String())
	h.data = append(h.data, string(data))
}

func TestAcceptProxy(t *testing.T) {
	src := &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 41000}
	dst := &net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 443}
	v6 := &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 5}
	v6dst := &net.TCPAddr{IP: net.ParseIP("2001:db8::2"), Port: 6}
	header := func(v byte, s, d net.Addr) []byte {
		b, err := proxyproto.HeaderProxyFromAddrs(v, s, d).Format()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	local := header(2, src, dst)
	local[12] = 0x20 // v2 LOCAL: a health check of the front balancer
	tests := []struct {
		name       string
		send       []byte
		wantClient string // "" means the peer's own address
		wantData   string
		rejected   bool
	}{
		{name: "v1 then data in the same write", send: append(header(1, src, dst), "hello\n"...), wantClient: src.String(), wantData: "hello\n"},
		{name: "v2", send: append(header(2, src, dst), "hi\n"...), wantClient: src.String(), wantData: "hi\n"},
		{name: "v2 IPv6", send: header(2, v6, v6dst), wantClient: v6.String()},
		{name: "v2 LOCAL keeps the peer address", send: append(local, "x"...), wantData: "x"},
		{name: "no header", send: []byte("GET / HTTP/1.1\r\n\r\n"), rejected: true},
		{name: "malformed v1", send: []byte("PROXY TCP4 1.2.3.4 nonsense\r\nhello\n"), rejected: true},
		{name: "truncated v2", send: header(2, src, dst)[:20], rejected: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &recordConn{}
			l := start(t, h, Config{AcceptProxy: true, ProxyHeaderTimeout: 300 * time.Millisecond})
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c) // until the listener closes it
			c.Close()
			if err := l.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			st := l.Stats()
			if tt.rejected {
				if st.ProxyRejected != 1 || len(h.data) != 0 {
					t.Fatalf("rejected %d, served %d; want the connection rejected", st.ProxyRejected, len(h.data))
				}
				return
			}
			if st.ProxyRejected != 0 || len(h.data) != 1 {
				t.Fatalf("rejected %d, served %d", st.ProxyRejected, len(h.data))
			}
			want := tt.wantClient
			if want == "" {
				want = c.LocalAddr().String()
			}
			if h.client[0] != want || h.data[0] != tt.wantData {
				t.Fatalf("client %s data %q, want %s %q", h.client[0], h.data[0], want, tt.wantData)
			}
		})
	}
}

// A client that sends nothing is closed after the header timeout.
func TestProxyHeaderTimeout(t *testing.T) {
	l := start(t, &recordConn{}, Config{AcceptProxy: true, ProxyHeaderTimeout: 100 * time.Millisecond})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %v, want EOF once the header timeout closed the connection", err)
	}
	l.Shutdown(context.Background())
	if l.Stats().ProxyRejected != 1 {
		t.Fatal("not counted")
	}
}

// holdConn holds each connection until released.
type holdConn struct {
	served  chan struct{}
	release chan struct{}
}

func (h *holdConn) ServeConn(c *Conn) {
	h.served <- struct{}{}
	<-h.release
}

// Beyond MaxConns, clients wait in the backlog and are served as slots
// free up.
func TestMaxConns(t *testing.T) {
	h := &holdConn{served: make(chan struct{}, 10), release: make(chan struct{})}
	l := start(t, h, Config{MaxConns: 2})
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", l.Addr().String()) // the kernel completes it
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	<-h.served
	<-h.served
	select {
	case <-h.served:
		t.Fatal("a third connection was served beyond MaxConns 2")
	case <-time.After(100 * time.Millisecond):
	}
	// The accept loop counts the limit when it gets to it.
	for deadline := time.Now().Add(10 * time.Second); l.Stats().LimitReached == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if l.Stats().Active != 2 || l.Stats().LimitReached == 0 {
		t.Fatalf("stats %+v", l.Stats())
	}
	h.release <- struct{}{} // one finishes: the third is served
	select {
	case <-h.served:
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting client was not served when a slot freed")
	}
	close(h.release)
	if err := l.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// Shutdown ends a Serve that waits for a slot.
func TestShutdownWhileAtMaxConns(t *testing.T) {
	h := &holdConn{served: make(chan struct{}, 10), release: make(chan struct{})}
	l := start(t, h, Config{MaxConns: 1})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-h.served
	shutdownReleasing(t, l, h.release)
}

// shutdownReleasing shuts l down, closing release (which lets the
// handlers finish) once Shutdown is under way, and fails the test if it
// does not return within 10 s.
func shutdownReleasing(t *testing.T, l *Listener, release chan struct{}) {
	t.Helper()
	done := make(chan struct{})
	go func() { l.Shutdown(context.Background()); close(done) }()
	close(release)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown hung")
	}
}

// Rejected connections are logged at warn level once every 10 s at most,
// the rest at debug level, and all counted: anyone who can connect could
// otherwise fill the log.
func TestRejectionsLoggedSparingly(t *testing.T) {
	var logs logtest.Buffer
	l := New(newLocalListener(t), &recordConn{}, Config{AcceptProxy: true,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	go l.Serve()
	const n = 5
	for range n {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, c) // until the listener closes it
		c.Close()
	}
	l.Shutdown(context.Background())
	got := logs.String()
	warn := strings.Count(got, "level=WARN msg=\"connection rejected")
	debug := strings.Count(got, "level=DEBUG msg=\"connection rejected")
	if l.Stats().ProxyRejected != n || warn != 1 || debug != n-1 || !strings.Contains(got, "rejected_so_far=5") {
		t.Fatalf("%d rejected, %d at warn, %d at debug: %s", l.Stats().ProxyRejected, warn, debug, got)
	}
}

// The log says why a connection had no PROXY header: other bytes came, the
// client closed at once, or nothing came within the timeout.
func TestProxyRejectionSaysWhy(t *testing.T) {
	for _, tc := range []struct {
		name    string
		send    []byte
		timeout time.Duration
		want    string
	}{
		{"other bytes", []byte("GET / HTTP/1.1\r\n\r\n"), time.Hour, "starts with other bytes"},
		{"closed at once", nil, time.Hour, "closed the connection before sending one"},
		{"nothing in time", nil, 50 * time.Millisecond, "no PROXY protocol header within 50ms"},
		{"a v2 header cut short", []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11"), 50 * time.Millisecond,
			"no PROXY protocol header within 50ms: a header began and did not end"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logtest.Buffer
			l := New(newLocalListener(t), &recordConn{}, Config{AcceptProxy: true, ProxyHeaderTimeout: tc.timeout,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
			go l.Serve()
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.Write(tc.send)
			if tc.timeout == time.Hour {
				c.(*net.TCPConn).CloseWrite()
			}
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.Copy(io.Discard, c) // until the listener closes it
			c.Close()
			l.Shutdown(context.Background())
			if got := logs.String(); l.Stats().ProxyRejected != 1 || !strings.Contains(got, tc.want) {
				t.Fatalf("rejected %d, log %q; want one rejection saying %q", l.Stats().ProxyRejected, got, tc.want)
			}
		})
	}
}

// A version 1 header that arrives in pieces is waited for, up to the
// header timeout, as the protocol recommends (go-proxyproto alone takes
// one only when a single read brings all of it). net.Pipe hands each
// write to one read, so every piece arrives on its own.
func TestProxyV1HeaderInPieces(t *testing.T) {
	const header = "PROXY TCP4 203.0.113.7 198.51.100.1 41000 443\r\n"
	var bytewise []string
	for i := range header {
		bytewise = append(bytewise, header[i:i+1])
	}
	for _, tc := range []struct {
		name    string
		pieces  []string
		wantErr string // "": the header is taken
	}{
		{"byte by byte", append(bytewise, "hello"), ""},
		{"in two, data after", []string{header[:20], header[20:] + "hello"}, ""},
		{"CR and LF apart", []string{header[:len(header)-1], "\nhello"}, ""},
		{"cut short", []string{header[:20]}, `within 100ms: only "PROXY TCP4 203.0.113"`},
		{"not v1 after all", []string{"PROXY", "junk and more junk\r\n"}, "version 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			defer client.Close()
			done, release := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(done)
				for _, p := range tc.pieces {
					if _, err := client.Write([]byte(p)); err != nil {
						return
					}
				}
				<-release // (a pipe takes no deadline once its other end closed)
				client.Close()
			}()
			l := &Listener{cfg: Config{ProxyHeaderTimeout: 100 * time.Millisecond}}
			c := &Conn{Conn: server}
			err := l.readProxyHeader(c)
			if tc.wantErr != "" {
				server.Close()
				close(release)
				<-done
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			close(release)
			rest, _ := io.ReadAll(c.Conn)
			<-done
			if c.Client.String() != "203.0.113.7:41000" || string(rest) != "hello" {
				t.Fatalf("client %v, then %q; want 203.0.113.7:41000, then \"hello\"", c.Client, rest)
			}
		})
	}
}

// A connection still in its PROXY header or TLS handshake, each with a
// long timeout of its own, does not hold Shutdown past its deadline.
func TestShutdownDeadlineCutsHeaderAndHandshake(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		send string
	}{
		{"PROXY header begun", Config{AcceptProxy: true, ProxyHeaderTimeout: time.Hour}, "PROXY TCP4"},
		{"PROXY header not begun", Config{AcceptProxy: true, ProxyHeaderTimeout: time.Hour}, ""},
		{"TLS handshake", Config{TLS: tlsServer(t), HandshakeTimeout: time.Hour}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := start(t, &recordConn{}, tc.cfg)
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte(tc.send))
			for deadline := time.Now().Add(10 * time.Second); l.Stats().Accepted == 0 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- l.Shutdown(ctx) }()
			select {
			case err := <-done:
				if err != context.DeadlineExceeded {
					t.Fatalf("Shutdown: %v, want the deadline's error", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Shutdown waited for the header or handshake timeout, not its deadline")
			}
		})
	}
}
