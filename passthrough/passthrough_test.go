package passthrough

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/pires/go-proxyproto"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/internal/certtest"
	"github.com/ndlb/ndlb/internal/mono"
	"github.com/ndlb/ndlb/upstream"
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

// backend is a loopback target that runs serve on each connection.
type backend struct {
	ln    net.Listener
	wg    sync.WaitGroup
	conns atomic.Int64
}

func newBackend(t *testing.T, tlsCfg *tls.Config, serve func(net.Conn)) *backend {
	t.Helper()
	b := &backend{ln: newLocalListener(t)}
	if tlsCfg != nil {
		b.ln = tls.NewListener(b.ln, tlsCfg)
	}
	b.wg.Go(func() {
		for {
			c, err := b.ln.Accept()
			if err != nil {
				return
			}
			b.conns.Add(1)
			c.SetDeadline(time.Now().Add(testDeadline))
			b.wg.Go(func() { defer c.Close(); serve(c) })
		}
	})
	t.Cleanup(func() { b.ln.Close(); b.wg.Wait() })
	return b
}

func (b *backend) addr() string { return b.ln.Addr().String() }

// testDeadline bounds every test connection's reads and writes, so that a
// connection the server forgets fails its test instead of hanging it.
const testDeadline = time.Minute

// wantEOF reads c and fails unless the server ended it cleanly.
func wantEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %v, want EOF", err)
	}
}

// dialTest connects to addr, with testDeadline set; the test closes it.
func dialTest(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(testDeadline))
	t.Cleanup(func() { c.Close() })
	return c
}

// echo copies the connection back to itself, then half-closes it.
func echo(c net.Conn) {
	io.Copy(c, c)
	closeWrite(c)
	io.Copy(io.Discard, c)
}

// deadAddr is a loopback port nobody listens on.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// testEventLoop and testLoopThreads are testConfig's Config.EventLoop and
// EventLoopThreads; bothEngines sets them. NDLB_TEST_LOOP_THREADS=0 runs
// every other test's loops in the runtime's poller.
var (
	testEventLoop   = true
	testLoopThreads = os.Getenv("NDLB_TEST_LOOP_THREADS") != "0"
)

// bothEngines runs body three times, its servers serving plain TCP
// connections in event loops with threads of their own (the default),
// then in loops that wait in the runtime's poller, then with goroutines.
// The package's tests do not run in parallel.
func bothEngines(t *testing.T, body func(t *testing.T)) {
	for _, e := range []struct {
		name          string
		loop, threads bool
	}{{"loop", true, true}, {"loop-poller", true, false}, {"goroutines", false, false}} {
		t.Run(e.name, func(t *testing.T) {
			was := testLoopThreads
			testEventLoop, testLoopThreads = e.loop, e.threads
			defer func() { testEventLoop, testLoopThreads = true, was }()
			body(t)
		})
	}
}

func testConfig(targets ...string) Config {
	cfg := DefaultConfig()
	cfg.EventLoop, cfg.EventLoopThreads = testEventLoop, testLoopThreads
	cfg.Targets = targets
	cfg.Logger = quiet()
	cfg.BackoffInitial, cfg.BackoffMax = time.Millisecond, 5*time.Millisecond
	cfg.DrainTimeout = 5 * time.Second
	// Park idle streams almost at once, so that every test exercises
	// parking and resuming.
	cfg.ParkAfter = 2 * time.Millisecond
	return cfg
}

// startWith starts a server with cfg on ln, which the test may have
// dialled already (the server's accept then finds the client's bytes
// waiting).
func startWith(t *testing.T, cfg Config, ln net.Listener) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Start(ln)
	t.Cleanup(func() { s.Shutdown() })
	return s
}

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	return startWith(t, cfg, newLocalListener(t))
}

type tlsWorld struct {
	server *tls.Config // for a listener
	client *tls.Config // trusts server
}

func newTLSWorld(t *testing.T) tlsWorld {
	t.Helper()
	server, client, err := certtest.Configs("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return tlsWorld{server: server, client: client}
}

// roundTrip sends payload through addr, half-closes, and returns the
// SHA-256 of what came back.
func roundTrip(t *testing.T, addr string, clientTLS *tls.Config, payload []byte) [32]byte {
	t.Helper()
	var c net.Conn
	var err error
	if clientTLS != nil {
		c, err = tls.Dial("tcp", addr, clientTLS)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	go func() {
		c.Write(payload)
		closeWrite(c)
	}()
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		t.Fatalf("read back: %v", err)
	}
	return [32]byte(h.Sum(nil))
}

// One test body over plain TCP, TLS termination, TLS origination and both:
// the bytes come back unchanged, and only plain TCP on both sides splices.
func TestEchoConnTypes(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		w := newTLSWorld(t)
		payload := make([]byte, 4<<20+17)
		rand.Read(payload)
		want := sha256.Sum256(payload)
		tests := []struct {
			name                 string
			terminate, originate bool
		}{
			{name: "plain"},
			{name: "terminate TLS", terminate: true},
			{name: "originate TLS", originate: true},
			{name: "TLS both sides", terminate: true, originate: true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var backendTLS, clientTLS *tls.Config
				cfg := testConfig()
				// No parking here: every resume begins with a read that is
				// not spliced, and a loaded machine's stalls would park the
				// streams often enough to move the share measured below.
				cfg.ParkAfter = time.Minute
				if tt.originate {
					backendTLS = w.server
					cfg.TLS = func() (*tls.Config, error) { return w.client, nil }
				}
				if tt.terminate {
					cfg.Listener.TLS = w.server
					clientTLS = w.client
				}
				b := newBackend(t, backendTLS, echo)
				cfg.Targets = []string{b.addr()}
				s := start(t, cfg)
				if got := roundTrip(t, s.Addr().String(), clientTLS, payload); got != want {
					t.Fatal("payload changed on the way")
				}
				s.Shutdown()
				st := s.Stats()
				total := uint64(2 * len(payload))
				if st.BytesFromClient+st.BytesFromTarget != total {
					t.Fatalf("counted %d+%d bytes, want %d", st.BytesFromClient, st.BytesFromTarget, total)
				}
				// Plain TCP splices all but the first read of each
				// burst; TLS on either side splices nothing.
				plain := !tt.terminate && !tt.originate
				if plain && st.BytesSpliced < total*95/100 || !plain && st.BytesSpliced != 0 {
					t.Fatalf("spliced %d of %d bytes", st.BytesSpliced, total)
				}
				if looped := plain && testEventLoop; looped && st.EventLoop != 1 || !looped && st.EventLoop != 0 {
					t.Fatalf("%d connections served by the event loops", st.EventLoop)
				}
			})
		}
	})
}

// The client shuts its write side; the target replies after reading to EOF,
// and the reply arrives in full. Then the other way round: the target
// half-closes first and still receives what the client sends.
func TestHalfClose(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		reply := bytes.Repeat([]byte("reply "), 100000)
		b := newBackend(t, nil, func(c net.Conn) {
			n, _ := io.Copy(io.Discard, c)
			if n != 5 {
				return
			}
			c.Write(reply)
		})
		s := start(t, testConfig(b.addr()))
		c := dialTest(t, s.Addr().String())
		c.Write([]byte("hello"))
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, reply) {
			t.Fatalf("read %d bytes (%v), want the %d-byte reply", len(got), err, len(reply))
		}

		greeting := []byte("220 ready\r\n")
		got2 := make(chan []byte, 1)
		b2 := newBackend(t, nil, func(c net.Conn) {
			c.Write(greeting)
			c.(*net.TCPConn).CloseWrite()
			b, _ := io.ReadAll(c)
			got2 <- b
		})
		s2 := start(t, testConfig(b2.addr()))
		c2 := dialTest(t, s2.Addr().String())
		if g, err := io.ReadAll(c2); err != nil || !bytes.Equal(g, greeting) {
			t.Fatalf("greeting %q (%v)", g, err)
		}
		c2.Write([]byte("QUIT\r\n"))
		c2.(*net.TCPConn).CloseWrite()
		if g := <-got2; string(g) != "QUIT\r\n" {
			t.Fatalf("target received %q after it half-closed", g)
		}
	})
}

// countingDial counts attempts per address.
type countingDial struct {
	mu    sync.Mutex
	count map[string]int
}

func (d *countingDial) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	if d.count == nil {
		d.count = map[string]int{}
	}
	d.count[addr]++
	d.mu.Unlock()
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func (d *countingDial) n(addr string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.count[addr]
}

func echoOnce(t *testing.T, addr string) error {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	return pingPong(c, "ping")
}

// A refused target is passed over within the connection, and skipped
// after MaxFails refusals.
func TestFailoverAndPassiveHealth(t *testing.T) {
	dead := deadAddr(t)
	live := newBackend(t, nil, echo)
	d := &countingDial{}
	cfg := testConfig(dead, live.addr())
	cfg.Balance = "first"
	cfg.Dial = d.dial
	clock := clockwork.NewFakeClock()
	cfg.Clock = clock
	s := start(t, cfg)
	for i := range 10 {
		if err := echoOnce(t, s.Addr().String()); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if n := d.n(dead); n != cfg.MaxFails {
		t.Fatalf("dead target tried %d times, want %d (then skipped)", n, cfg.MaxFails)
	}
	clock.Advance(cfg.FailTimeout)
	if err := echoOnce(t, s.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if n := d.n(dead); n != cfg.MaxFails+1 {
		t.Fatalf("dead target tried %d times after the fail timeout, want %d", n, cfg.MaxFails+1)
	}
	if err := echoOnce(t, s.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if n := d.n(dead); n != cfg.MaxFails+1 {
		t.Fatalf("a failed retry did not skip the target again at once (%d attempts)", n)
	}
	if st := s.Stats(); st.Failed != 0 || st.Proxied != 12 {
		t.Fatalf("stats %+v", st)
	}
}

// sendAndDrain connects to addr, sends msg (if any) and reads until the
// server closes the connection.
func sendAndDrain(t *testing.T, addr, msg string) {
	t.Helper()
	c := dialTest(t, addr)
	if msg != "" {
		c.Write([]byte(msg))
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, c)
	c.Close()
}

// A target that closes silently on what a client sent (junk, the wrong
// protocol) is not held against it: clients cannot push targets out of
// rotation. One that closes before the client sent anything failed.
func TestClientJunkIsNotTheTargetsFault(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		picky := newBackend(t, nil, func(c net.Conn) {
			c.Read(make([]byte, 64)) // reads the junk, answers nothing, closes
		})
		rude := newBackend(t, nil, func(c net.Conn) {}) // closes at once
		cfg := testConfig(picky.addr())
		cfg.MaxFails = 2
		s := start(t, cfg)
		for range 10 {
			sendAndDrain(t, s.Addr().String(), "\x16\x03\x01 junk\n")
		}
		// A client that goes on sending after the target's FIN: the
		// write that meets the reset the target's kernel answers with
		// does not make the close a failure.
		for range 3 {
			c := dialTest(t, s.Addr().String())
			c.Write([]byte("\x16\x03\x01 junk\n"))
			wantEOF(t, c) // the target's FIN, passed on
			for range 3 {
				c.Write(bytes.Repeat([]byte("more junk\n"), 100))
			}
			io.Copy(io.Discard, c)
			c.Close()
		}
		waitFor(t, "verdicts", func() bool { return s.Stats().ClientProvoked == 13 })
		if st := s.Stats(); st.EarlyClosed != 0 || st.Failed != 0 {
			t.Fatalf("junk counted against the target: %+v", st)
		}
		if s.Set().Targets()[0].Skipped(time.Now()) {
			t.Fatal("the target is skipped because of what clients sent")
		}
		// The rude target fails on its own.
		s2 := start(t, func() Config { c := testConfig(rude.addr()); c.MaxFails = 2; return c }())
		for range 2 {
			sendAndDrain(t, s2.Addr().String(), "")
		}
		waitFor(t, "failures", func() bool { return s2.Stats().EarlyClosed == 2 })
		// A target that resets, even after the client sent, failed on its own
		// (it crashed, or nothing serves behind its port).
		resets := newBackend(t, nil, func(c net.Conn) {
			c.Read(make([]byte, 64))
			c.(*net.TCPConn).SetLinger(0)
		})
		s3 := start(t, func() Config { c := testConfig(resets.addr()); c.MaxFails = 2; return c }())
		for range 2 {
			sendAndDrain(t, s3.Addr().String(), "GET / HTTP/1.1\r\n\r\n")
		}
		waitFor(t, "failures after resets", func() bool { return s3.Stats().EarlyClosed == 2 })
		if !s3.Set().Targets()[0].Skipped(time.Now()) {
			t.Fatal("a target that resets every connection stays in rotation")
		}
	})
}

// With every target down, the client is closed after ConnectRetries more
// rounds.
func TestAllTargetsDown(t *testing.T) {
	a, b := deadAddr(t), deadAddr(t)
	d := &countingDial{}
	cfg := testConfig(a, b)
	cfg.Dial = d.dial
	cfg.ConnectRetries = 2
	s := start(t, cfg)
	c := dialTest(t, s.Addr().String())
	wantEOF(t, c)
	if d.n(a)+d.n(b) != 6 {
		t.Fatalf("%d+%d attempts, want 3 rounds over 2 targets", d.n(a), d.n(b))
	}
	if st := s.Stats(); st.Failed != 1 || st.Proxied != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// A target that never answers the SYN is given up after ConnectTimeout.
func TestConnectTimeout(t *testing.T) {
	live := newBackend(t, nil, echo)
	hole := "hole:1"
	cfg := testConfig(hole, live.addr())
	cfg.Balance = "first"
	cfg.ConnectTimeout = 50 * time.Millisecond
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == hole {
			<-ctx.Done()
			return nil, ctx.Err()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	s := start(t, cfg)
	if err := echoOnce(t, s.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.DialFailures != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A connection with no traffic for IdleTimeout is closed; traffic puts
// the deadline back. The sweeper looks on its real ticker, at the server's
// (fake) clock.
func TestIdleTimeout(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		b := newBackend(t, nil, echo)
		clock := clockwork.NewFakeClock()
		cfg := testConfig(b.addr())
		cfg.Clock = clock
		cfg.IdleTimeout = time.Minute
		s := start(t, cfg)
		c := dialTest(t, s.Addr().String())
		c.SetDeadline(time.Now().Add(10 * time.Second))
		ping := func() {
			t.Helper()
			c.Write([]byte("x"))
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			// The reply can arrive before the session records it.
			now := mono.Of(clock.Now())
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
				s.mu.Lock()
				seen := 0
				for ss := range s.sessions {
					if ss.last.Load() >= now {
						seen++
					}
				}
				s.mu.Unlock()
				if seen == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the session does not record the traffic")
				}
			}
		}
		ping()
		clock.Advance(50 * time.Second)
		ping() // traffic at 50s
		clock.Advance(30 * time.Second)
		ping() // 30s after the last traffic: still open
		// Ticks of the sweeper at 80s find 30s of quiet: nothing to close.
		time.Sleep(50 * time.Millisecond)
		ping()
		// The target's stream may record the last reply only after the next
		// Advance, which then counts as traffic: advance again until the
		// sweeper closes the connection.
		var rerr error
		for range 10 {
			clock.Advance(100 * time.Second)
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, rerr = c.Read(make([]byte, 1)); !errors.Is(rerr, os.ErrDeadlineExceeded) {
				break
			}
		}
		if rerr != io.EOF {
			t.Fatalf("read %v, want EOF after the idle timeout", rerr)
		}
		s.Shutdown()
		if s.Stats().IdleClosed != 1 {
			t.Fatalf("stats %+v", s.Stats())
		}
	})
}

// A connection one side of which has sent FIN is closed once nothing has
// moved for HalfCloseTimeout, whichever side closed first; a connection
// open both ways is left to IdleTimeout.
func TestHalfCloseTimeout(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		for _, clientFirst := range []bool{true, false} {
			clock := clockwork.NewFakeClock()
			sawEOF := make(chan struct{}, 2)
			release := make(chan struct{})
			b := newBackend(t, nil, func(c net.Conn) {
				first := make([]byte, 1) // o: the open connection; c: the one closed half-way
				if _, err := io.ReadFull(c, first); err != nil {
					return
				}
				if !clientFirst && first[0] == 'c' {
					c.Write([]byte("bye"))
					closeWrite(c) // and waits for the client, which never closes
				}
				io.Copy(io.Discard, c)
				if first[0] == 'c' {
					sawEOF <- struct{}{}
					<-release // a target that never answers
				}
			})
			t.Cleanup(func() { close(release) })
			cfg := testConfig(b.addr())
			cfg.Clock = clock
			cfg.IdleTimeout, cfg.HalfCloseTimeout = time.Hour, time.Minute
			s := start(t, cfg)

			open := dialTest(t, s.Addr().String()) // open both ways, quiet
			open.Write([]byte("o"))
			c := dialTest(t, s.Addr().String())
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("c"))
			if clientFirst {
				c.Write([]byte("request"))
				closeWrite(c)
				<-sawEOF // the FIN reached the target: the session is half-closed
			} else if got, err := io.ReadAll(c); string(got) != "bye" || err != nil {
				t.Fatalf("read %q, %v", got, err)
			}
			clock.Advance(50 * time.Second)
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if clientFirst {
				if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("read %v before the half-close timeout", err)
				}
			}
			var gone bool
			for range 10 {
				clock.Advance(100 * time.Second)
				if clientFirst {
					c.SetReadDeadline(time.Now().Add(time.Second))
					_, err := c.Read(make([]byte, 1))
					gone = err == io.EOF
				} else {
					select {
					case <-sawEOF: // the target's read ended: ndlb closed
						gone = true
					case <-time.After(time.Second):
					}
				}
				if gone {
					break
				}
			}
			if !gone {
				t.Fatal("the half-closed connection is still open after the half-close timeout")
			}
			if _, err := open.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			open.Close()
			s.Shutdown()
			if st := s.Stats(); st.HalfClosed != 1 || st.IdleClosed != 0 {
				t.Fatalf("client first %v: stats %+v", clientFirst, st)
			}
		}
	})
}

// The PROXY header reaches the target with the client's address.
func TestSendProxy(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		for _, v := range []int{1, 2} {
			headers := make(chan *proxyproto.Header, 1)
			b := newBackend(t, nil, func(c net.Conn) {
				h, err := proxyproto.Read(bufio.NewReader(c))
				if err != nil {
					t.Error(err)
				}
				headers <- h
			})
			cfg := testConfig(b.addr())
			cfg.SendProxy = v
			s := start(t, cfg)
			c := dialTest(t, s.Addr().String())
			h := <-headers
			if h.Version != byte(v) || h.SourceAddr.String() != c.LocalAddr().String() || h.DestinationAddr.String() != s.Addr().String() {
				t.Fatalf("v%d header %+v; client %s", v, h, c.LocalAddr())
			}
			c.Close()
		}
	})
}

// When the drain timeout passes, Shutdown closes open connections.
func TestShutdownDrainTimeout(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		b := newBackend(t, nil, echo)
		cfg := testConfig(b.addr())
		cfg.DrainTimeout = 50 * time.Millisecond
		s := start(t, cfg)
		c := dialTest(t, s.Addr().String())
		if err := echoOnce(t, s.Addr().String()); err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
		sum := s.Shutdown()
		if sum.ShutdownClosed != 1 {
			t.Fatalf("summary %+v", sum)
		}
		wantEOF(t, c)
	})
}

// A connection cut by the drain timeout with bytes on their way (here a
// download the client reads too slowly) ends with a reset, not a FIN, so
// the client cannot take what it got for the whole stream.
func TestShutdownCutInFlightResets(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		b := newBackend(t, nil, func(c net.Conn) {
			c.Write(make([]byte, 64<<20)) // fails once ndlb resets
			io.Copy(io.Discard, c)
		})
		cfg := testConfig(b.addr())
		cfg.DrainTimeout = 50 * time.Millisecond
		s := start(t, cfg)
		c := dialTest(t, s.Addr().String())
		if _, err := io.ReadFull(c, make([]byte, 1<<10)); err != nil {
			t.Fatal(err)
		}
		if sum := s.Shutdown(); sum.ShutdownClosed != 1 {
			t.Fatalf("summary %+v", sum)
		}
		buf := make([]byte, 64<<10)
		var err error
		for err == nil {
			_, err = c.Read(buf)
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("the client's read ended with %v, want a reset", err)
		}
	})
}

// Draining, disabled and check-failed targets get no new connections;
// existing connections to them go on.
func TestStatesSteerNewConnections(t *testing.T) {
	a, b := newBackend(t, nil, echo), newBackend(t, nil, echo)
	d := &countingDial{}
	cfg := testConfig(a.addr(), b.addr())
	cfg.Dial = d.dial
	cfg.ConnectRetries = 0
	s := start(t, cfg)
	held := dialTest(t, s.Addr().String()) // to a (round-robin starts there)
	defer held.Close()
	if err := echoOnce(t, s.Addr().String()); err != nil { // to b
		t.Fatal(err)
	}
	ta, _ := s.set.Lookup(a.addr())
	tb, _ := s.set.Lookup(b.addr())
	for _, tt := range []struct {
		name string
		out  func() bool
	}{
		{name: "draining", out: ta.Drain},
		{name: "disabled", out: ta.Disable},
		{name: "failing checks", out: func() bool {
			ta.Enable()
			return ta.SetChecked(upstream.CheckResult{Err: errors.New("503")}, false, true)
		}},
	} {
		tt.out()
		before := d.n(a.addr())
		for range 4 {
			if err := echoOnce(t, s.Addr().String()); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
		}
		if d.n(a.addr()) != before {
			t.Fatalf("%s: a new connection went to the %s target", tt.name, tt.name)
		}
	}
	// The connection opened before still works.
	held.Write([]byte("x"))
	if _, err := io.ReadFull(held, make([]byte, 1)); err != nil {
		t.Fatalf("established connection: %v", err)
	}
	// With no target accepting, the client is closed.
	tb.Drain()
	c := dialTest(t, s.Addr().String())
	wantEOF(t, c)
}

// Round-robin around a target that takes no new work spreads over the
// others evenly: the left-out target's turns do not all fall to the one
// after it in the list.
func TestRoundRobinSkipsEvenly(t *testing.T) {
	var backends []*backend
	var addrs []string
	for range 4 {
		b := newBackend(t, nil, echo)
		backends, addrs = append(backends, b), append(addrs, b.addr())
	}
	d := &countingDial{}
	cfg := testConfig(addrs...)
	cfg.Dial = d.dial
	s := start(t, cfg)
	last, _ := s.set.Lookup(addrs[3])
	last.Drain()
	const n = 30
	for range n {
		if err := echoOnce(t, s.Addr().String()); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range addrs[:3] {
		if got := d.n(a); got != n/3 {
			t.Errorf("target %s took %d of %d connections, want %d", a, got, n, n/3)
		}
	}
	if got := d.n(addrs[3]); got != 0 {
		t.Errorf("the draining target took %d connections", got)
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in 10 s", what)
		}
	}
}

// While no tracer provider is installed, a connection's span costs
// nothing: startSpan neither builds the attributes nor allocates.
func TestStartSpanOffAllocatesNothing(t *testing.T) {
	attrs := func() []attribute.KeyValue {
		t.Fatal("attributes built while tracing is off")
		return nil
	}
	if n := testing.AllocsPerRun(100, func() {
		_, span := startSpan(t.Context(), "ndlb.passthrough.connect", trace.SpanKindServer, attrs)
		span.End()
	}); n != 0 {
		t.Fatalf("%v allocations per span while tracing is off", n)
	}
}

// An attempt that failed for want of descriptors, buffers or local ports
// is not held against the target (passive health); a refusal is.
func TestLocalShortageIsNotTheTargetsFault(t *testing.T) {
	cfg := testConfig(deadAddr(t))
	s := start(t, cfg)
	target := s.set.Targets()[0]
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.EADDRNOTAVAIL, syscall.ENOSPC} {
		for range cfg.MaxFails + 1 {
			s.attemptFailed(target, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", errno)})
		}
		if target.Skipped(time.Now()) {
			t.Fatalf("%v: the target was skipped", errno)
		}
	}
	for range cfg.MaxFails {
		s.attemptFailed(target, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)})
	}
	if !target.Skipped(time.Now()) {
		t.Fatal("refusals did not skip the target")
	}
}

// pingPong writes p on c and reads it back within 10 s.
func pingPong(c net.Conn, p string) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Now().Add(testDeadline))
	if _, err := c.Write([]byte(p)); err != nil {
		return err
	}
	got := make([]byte, len(p))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if string(got) != p {
		return fmt.Errorf("read %q, want %q", got, p)
	}
	return nil
}

// Beyond --max-conns, a client waits in the backlog, its bytes unread,
// until a connection ends; then it is served (whoever accepts: an event
// loop or the listener's goroutine).
func TestMaxConnsWaitsInBacklog(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		b := newBackend(t, nil, echo)
		cfg := testConfig(b.addr())
		cfg.Listener.MaxConns = 1
		s := start(t, cfg)
		first := dialTest(t, s.Addr().String())
		if err := pingPong(first, "one"); err != nil {
			t.Fatal(err)
		}
		second := dialTest(t, s.Addr().String())
		second.Write([]byte("two"))
		second.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := second.Read(make([]byte, 3)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a client beyond --max-conns 1 was served: %d bytes, %v", n, err)
		}
		first.Close()
		second.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, 3)
		if _, err := io.ReadFull(second, got); err != nil || string(got) != "two" {
			t.Fatalf("the waiting client, once a place freed: %q %v", got, err)
		}
		if st := s.Stats(); st.Listener.LimitReached == 0 || st.Listener.Accepted != 2 {
			t.Fatalf("stats %+v", st.Listener)
		}
	})
}

// Handover gives the listening socket to a replacement server: clients
// that connect meanwhile wait in the backlog and are the replacement's,
// and the old server's connections go on until they end.
func TestHandoverKeepsBacklogAndConnections(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		b := newBackend(t, nil, echo)
		old := start(t, testConfig(b.addr()))
		held := dialTest(t, old.Addr().String())
		if err := pingPong(held, "before"); err != nil {
			t.Fatal(err)
		}
		ln := old.Handover()
		if ln == nil {
			t.Fatal("no listener handed over")
		}
		queued := dialTest(t, old.Addr().String())
		queued.Write([]byte("queued"))
		next := startWith(t, testConfig(b.addr()), ln)
		got := make([]byte, 6)
		queued.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(queued, got); err != nil || string(got) != "queued" {
			t.Fatalf("a client queued during the hand-over: %q %v", got, err)
		}
		if err := pingPong(held, "after"); err != nil {
			t.Fatalf("the old server's connection after the hand-over: %v", err)
		}
		if err := echoOnce(t, next.Addr().String()); err != nil {
			t.Fatal(err)
		}
		held.Close()
		queued.Close()
		old.Shutdown()
		if st := old.Stats(); st.Listener.Accepted != 1 {
			t.Fatalf("the old server accepted %d, want 1", st.Listener.Accepted)
		}
		if st := next.Stats(); st.Listener.Accepted != 2 {
			t.Fatalf("the replacement accepted %d, want 2", st.Listener.Accepted)
		}
	})
}
