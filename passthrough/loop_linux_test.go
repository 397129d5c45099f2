package passthrough

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/nettest"
)

// A refused target is passed over within the connection, by the loop's
// own connect, and skipped after MaxFails refusals.
func TestLoopFailoverAndPassiveHealth(t *testing.T) {
	dead := deadAddr(t)
	live := newBackend(t, nil, echo)
	cfg := testConfig(dead, live.addr())
	cfg.Balance = "first"
	clock := clockwork.NewFakeClock()
	cfg.Clock = clock
	s := start(t, cfg)
	for i := range 10 {
		if err := echoOnce(t, s.Addr().String()); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	if st := s.Stats(); st.DialFailures != uint64(cfg.MaxFails) || st.Proxied != 10 || st.EventLoop != 10 {
		t.Fatalf("stats %+v: want %d failed attempts (then skipped), 10 proxied by the loops", st, cfg.MaxFails)
	}
	clock.Advance(cfg.FailTimeout)
	if err := echoOnce(t, s.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.DialFailures != uint64(cfg.MaxFails)+1 {
		t.Fatalf("stats %+v: the dead target was not tried again after the fail timeout", st)
	}
}

// A target that accepts, reads a little and resets while the client is
// still sending costs at most MaxFails clients: the write to it that fails
// is its doing, not the client's, whichever direction notices first.
func TestResettingTargetCostsAtMostMaxFails(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		bad := newBackend(t, nil, func(c net.Conn) {
			io.ReadFull(c, make([]byte, 10))
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		})
		good := newBackend(t, nil, func(c net.Conn) {
			io.Copy(io.Discard, c)
			c.Write([]byte("ok"))
		})
		cfg := testConfig(bad.addr(), good.addr())
		cfg.Balance = "first"
		cfg.Clock = clockwork.NewFakeClock() // the fail timeout does not pass
		s := start(t, cfg)
		upload := make([]byte, 1<<20)
		lost := 0
		for range 10 {
			c := dialTest(t, s.Addr().String())
			_, err := c.Write(upload)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			var got []byte
			if err == nil {
				got, err = io.ReadAll(c)
			}
			if err != nil || string(got) != "ok" {
				lost++
			}
			c.Close()
		}
		if lost > cfg.MaxFails {
			t.Fatalf("%d of 10 clients lost to a target that resets; want at most %d (stats %+v)", lost, cfg.MaxFails, s.Stats())
		}
	})
}

// With every target down, the loop retries ConnectRetries more rounds
// with backoff, then closes the client; the ledger closes.
func TestLoopAllTargetsDown(t *testing.T) {
	cfg := testConfig(deadAddr(t), deadAddr(t))
	cfg.ConnectRetries = 2
	s := start(t, cfg)
	c := dialTest(t, s.Addr().String())
	wantEOF(t, c)
	waitFor(t, "the failure counted", func() bool { return s.Stats().Failed == 1 })
	st := s.Stats()
	if st.DialFailures != 6 || st.Proxied != 0 || st.Listener.Accepted != st.Proxied+st.Failed {
		t.Fatalf("stats %+v: want 3 rounds over 2 targets and the client failed", st)
	}
}

// A target that never answers the SYN is given up after ConnectTimeout,
// and the next one serves the connection.
func TestLoopConnectTimeout(t *testing.T) {
	hole := nettest.SYNHole(t)
	live := newBackend(t, nil, echo)
	cfg := testConfig(hole, live.addr())
	cfg.Balance = "first"
	cfg.MaxFails = 0
	cfg.ConnectTimeout = 50 * time.Millisecond
	s := start(t, cfg)
	for range 3 {
		if err := echoOnce(t, s.Addr().String()); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.DialFailures != 3 || st.Proxied != 3 || st.EventLoop != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// A connection still connecting when the drain timeout passes is given
// up, so that Shutdown returns.
func TestLoopShutdownAbandonsConnects(t *testing.T) {
	cfg := testConfig(nettest.SYNHole(t))
	cfg.ConnectTimeout = time.Minute
	cfg.DrainTimeout = 50 * time.Millisecond
	s := start(t, cfg)
	c := dialTest(t, s.Addr().String())
	waitFor(t, "the connection accepted", func() bool { return s.Stats().EventLoop == 1 })
	done := make(chan Summary, 1)
	go func() { done <- s.Shutdown() }()
	select {
	case sum := <-done:
		if sum.Failed != 1 || sum.Proxied != 0 {
			t.Fatalf("summary %+v", sum)
		}
		// The dial given up is not the target's failure.
		if sum.DialFailures != 0 || s.Set().Targets()[0].Skipped(time.Now()) {
			t.Fatalf("the abandoned dial counted against the target: %+v", sum)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown waits for a connect that never ends")
	}
	wantEOF(t, c)
}

// settled waits until n() has not changed for 100 ms: the loop waits for
// a full socket.
func settled(t *testing.T, what string, n func() uint64) {
	t.Helper()
	last, same := n(), 0
	waitFor(t, what, func() bool {
		time.Sleep(5 * time.Millisecond)
		v := n()
		if v != last || v == 0 {
			last, same = v, 0
			return false
		}
		same++
		return same >= 20
	})
}

// A target that does not read makes the loop wait with bytes in hand
// (its socket full), and a client that does not read does the same the
// other way; every byte arrives once they read.
func TestLoopBackPressure(t *testing.T) {
	payload := make([]byte, 32<<20)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	release := make(chan struct{})
	type received struct {
		sum [32]byte
		n   int64
		err error
	}
	got := make(chan received, 1)
	b := newBackend(t, nil, func(c net.Conn) {
		<-release
		h := sha256.New()
		n, err := io.Copy(h, c)
		got <- received{[32]byte(h.Sum(nil)), n, err}
		c.Write(payload) // to a client that reads late
	})
	s := start(t, testConfig(b.addr()))
	c := dialTest(t, s.Addr().String())
	c.SetDeadline(time.Now().Add(60 * time.Second))
	wrote := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
		wrote <- err
	}()
	settled(t, "the target's socket full", func() uint64 { return s.Stats().BytesFromClient })
	if n := s.Stats().BytesFromClient; n >= uint64(len(payload)) {
		t.Fatalf("%d bytes went through a target that reads nothing", n)
	}
	close(release)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.sum != want {
		t.Fatalf("the target received other bytes than the client sent: %d of %d bytes, %v; server %+v",
			r.n, len(payload), r.err, s.Stats())
	}
	settled(t, "the client's socket full", func() uint64 { return s.Stats().BytesFromTarget })
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		t.Fatal(err)
	}
	if [32]byte(h.Sum(nil)) != want {
		t.Fatal("the client received other bytes than the target sent")
	}
}

// A target's reset reaches the client as a reset, not as a clean end of
// what it sent, and the other way round.
func TestLoopResetsReachTheOtherSide(t *testing.T) {
	b := newBackend(t, nil, func(c net.Conn) {
		io.ReadFull(c, make([]byte, 1))
		c.Write([]byte("partial"))
		c.(*net.TCPConn).SetLinger(0)
	})
	s := start(t, testConfig(b.addr()))
	c := dialTest(t, s.Addr().String())
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("x"))
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %v, want a reset", err)
	}

	resetSeen := make(chan error, 1)
	b2 := newBackend(t, nil, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(c)
		resetSeen <- err
	})
	s2 := start(t, testConfig(b2.addr()))
	c2 := dialTest(t, s2.Addr().String())
	c2.Write([]byte("partial"))
	waitFor(t, "bytes through", func() bool { return s2.Stats().BytesFromClient == 7 })
	c2.(*net.TCPConn).SetLinger(0)
	c2.Close()
	if err := <-resetSeen; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("target read %v, want a reset", err)
	}
}

// Connections go to goroutines when the loop cannot serve them: a target
// given by name, TLS on either side.
func TestLoopFallbacks(t *testing.T) {
	live := newBackend(t, nil, echo)
	_, port, _ := net.SplitHostPort(live.addr())
	s := start(t, testConfig("localhost:"+port))
	if err := echoOnce(t, s.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Proxied != 1 || st.EventLoop != 0 {
		t.Fatalf("stats %+v: want the named target's connection served by goroutines", st)
	}
	w := newTLSWorld(t)
	cfg := testConfig(live.addr())
	cfg.Listener.TLS = w.server
	if s := start(t, cfg); s.loops != nil {
		t.Fatal("event loops started for TLS termination")
	}
}

// Urgent (out-of-band) data in the middle of a bulk stream neither stalls
// the copy nor ends it early: the bytes after it arrive, and then the
// end. (A splice stops at the urgent mark: the kernel answers EAGAIN with
// bytes still queued, and 0 once the FIN is in.) The urgent byte itself
// is dropped, as a read that is not SO_OOBINLINE drops it.
func TestUrgentDataInBulk(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		got := make(chan int64, 1)
		b := newBackend(t, nil, func(c net.Conn) {
			n, _ := io.Copy(io.Discard, c)
			got <- n
		})
		s := start(t, testConfig(b.addr()))
		c := dialTest(t, s.Addr().String())
		chunk := bytes.Repeat([]byte("x"), 256<<10)
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the first bytes through", func() bool { return s.Stats().BytesFromClient == uint64(len(chunk)) })
		rc, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		rc.Write(func(fd uintptr) bool { serr = unix.Send(int(fd), []byte("!"), unix.MSG_OOB); return true })
		if serr != nil {
			t.Fatal(serr)
		}
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if testEventLoop {
			// The loop does not wait for the end to take what is
			// queued behind the urgent byte. (Streams do: their splice
			// waits for the next edge, the end at the latest.)
			waitFor(t, "the bytes after the urgent one", func() bool {
				return s.Stats().BytesFromClient == uint64(2*len(chunk))
			})
		}
		c.(*net.TCPConn).CloseWrite()
		select {
		case n := <-got:
			if n != int64(2*len(chunk)) {
				t.Fatalf("the target received %d bytes, want %d", n, 2*len(chunk))
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("stalled after the urgent byte: %d bytes through", s.Stats().BytesFromClient)
		}
	})
}

// Urgent data between small writes, both ways: the urgent byte is dropped
// (the sockets do not keep it inline), and the bytes queued behind it
// follow at once. A read stops short at the urgent mark with bytes still
// queued, and epoll raises no new edge for them.
func TestUrgentDataInSmallWrites(t *testing.T) {
	bothEngines(t, func(t *testing.T) {
		b := newBackend(t, nil, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(testDeadline))
			buf := make([]byte, 8)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "AAAACCCC" {
				c.Write([]byte(fmt.Sprintf("%q %v", buf, err)))
				return
			}
			sendUrgentBetween(c, "aaaa", "cccc")
			io.Copy(io.Discard, c)
		})
		s := start(t, testConfig(b.addr()))
		for i := range 10 { // the mark is met only when the bytes behind it came with it
			c := dialTest(t, s.Addr().String())
			sendUrgentBetween(c, "AAAA", "CCCC")
			buf := make([]byte, 8)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "aaaacccc" {
				t.Fatalf("connection %d: got %q, %v; want \"aaaacccc\"", i, buf, err)
			}
			c.Close()
		}
	})
}

// sendUrgentBetween writes before, one urgent byte and after, in three
// system calls.
func sendUrgentBetween(c net.Conn, before, after string) {
	c.Write([]byte(before))
	if rc, err := c.(*net.TCPConn).SyscallConn(); err == nil {
		rc.Write(func(fd uintptr) bool { _ = unix.Send(int(fd), []byte("!"), unix.MSG_OOB); return true })
	}
	c.Write([]byte(after))
}

// A burst of connections, most of them accepted raw from the backlog
// (listener.Config.RawAccept): each is served, in the loop when its target
// is an IP address, by goroutines (the socket made ordinary) when it is a
// name.
func TestLoopBurstOfConnections(t *testing.T) {
	live := newBackend(t, nil, echo)
	_, port, _ := net.SplitHostPort(live.addr())
	for _, target := range []string{live.addr(), "localhost:" + port} {
		s := start(t, testConfig(target))
		const n = 64
		errs := make(chan error, n)
		for range n {
			go func() { errs <- echoOnce(t, s.Addr().String()) }()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatalf("target %s: %v", target, err)
			}
		}
		waitFor(t, "every connection closed", func() bool { return s.Stats().Listener.Active == 0 })
		st := s.Stats()
		if st.Proxied != n || st.Failed != 0 {
			t.Fatalf("target %s: stats %+v", target, st)
		}
		if loop := st.EventLoop == n; loop != (target == live.addr()) {
			t.Fatalf("target %s: %d connections in the loop", target, st.EventLoop)
		}
	}
}

// waitingClient connects to ln before anything accepts and sends payload;
// with end, it also half-closes. The kernel completes the connection and
// queues the bytes (and the FIN) for the server's accept to find. payload
// must fit in a fresh loopback connection's buffers (32 KiB does).
func waitingClient(t *testing.T, ln net.Listener, payload []byte, end bool) *net.TCPConn {
	t.Helper()
	c := dialTest(t, ln.Addr().String()).(*net.TCPConn)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	if end {
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// waitingBytes is what a test has a client send before its connection is
// accepted.
const waitingBytes = 32 << 10

// Bytes a client sent before its connection was accepted reach the target
// first and whole, less or more than the accepting goroutine forwards,
// with or without the client's end behind them, and followed by more
// bytes sent after the accept; the counters and the echo agree.
func TestLoopFirstBytesWaiting(t *testing.T) {
	live := newBackend(t, nil, echo)
	for _, size := range []int{16, earlyBytes, waitingBytes, 256 << 10} {
		for _, end := range []bool{false, true} {
			payload := make([]byte, size)
			rand.Read(payload)
			first := payload[:min(size, waitingBytes)]
			ln := newLocalListener(t)
			c := waitingClient(t, ln, first, end && len(first) == size)
			s := startWith(t, testConfig(live.addr()), ln)
			wrote := make(chan error, 1)
			go func() {
				var err error
				if len(first) < size {
					_, err = c.Write(payload[len(first):])
					if err == nil && end {
						err = c.CloseWrite()
					}
				}
				wrote <- err
			}()
			got := make([]byte, size)
			if _, err := io.ReadFull(c, got); err != nil {
				t.Fatalf("%d bytes, end %v: %v", size, end, err)
			}
			if err := receive(t, "the rest written", wrote); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("%d bytes, end %v: the echo differs", size, end)
			}
			if !end {
				c.CloseWrite()
			}
			wantEOF(t, c)
			waitFor(t, "the connection closed", func() bool { return s.Stats().Listener.Active == 0 })
			if st := s.Stats(); st.EventLoop != 1 || st.Proxied != 1 || st.BytesFromClient != uint64(size) || st.BytesFromTarget != uint64(size) {
				t.Fatalf("%d bytes, end %v: stats %+v", size, end, st)
			}
		}
	}
}

// receive waits for a test server's report, failing the test after
// testWait.
func receive[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testWait):
		t.Fatalf("no %s after %s", what, testWait)
		panic("unreachable")
	}
}

// testWait bounds a test's wait for a report from its own servers.
const testWait = 10 * time.Second

// Bytes waiting at the accept are kept for the next candidate when the
// first refuses (the accepting goroutine's write finds the refusal) or
// never answers (its write would block, and the connect times out): the
// target that serves the connection gets them, once.
func TestLoopFirstBytesFailover(t *testing.T) {
	live := newBackend(t, nil, echo)
	for name, first := range map[string]string{"refused": deadAddr(t), "silent": nettest.SYNHole(t)} {
		cfg := testConfig(first, live.addr())
		cfg.Balance = "first"
		cfg.ConnectTimeout = 50 * time.Millisecond
		ln := newLocalListener(t)
		c := waitingClient(t, ln, []byte("first bytes"), true)
		s := startWith(t, cfg, ln)
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "first bytes" {
			t.Fatalf("%s: echo %q, %v", name, got, err)
		}
		waitFor(t, "the connection closed", func() bool { return s.Stats().Listener.Active == 0 })
		if st := s.Stats(); st.DialFailures != 1 || st.Proxied != 1 || st.BytesFromClient != 11 {
			t.Fatalf("%s: stats %+v", name, st)
		}
	}
}

// With SendProxy, bytes waiting at the accept still follow the header.
func TestLoopFirstBytesAfterProxyHeader(t *testing.T) {
	got := make(chan string, 1)
	b := newBackend(t, nil, func(c net.Conn) {
		r := bufio.NewReader(c)
		if _, err := proxyproto.Read(r); err != nil {
			t.Error(err)
		}
		rest, _ := io.ReadAll(r)
		got <- string(rest)
	})
	cfg := testConfig(b.addr())
	cfg.SendProxy = 2
	ln := newLocalListener(t)
	c := waitingClient(t, ln, []byte("after the header"), true)
	startWith(t, cfg, ln)
	if g := receive(t, "target read", got); g != "after the header" {
		t.Fatalf("target read %q after the header", g)
	}
	c.Close()
}

// A client that resets before its connection is accepted (the accepting
// goroutine's read takes the reset) resets its target's connection too,
// as a reset later in the connection would: the target does not see a
// clean end.
func TestLoopResetBeforeAccept(t *testing.T) {
	for _, sent := range []string{"", "x"} {
		ends := make(chan error, 1)
		b := newBackend(t, nil, func(c net.Conn) {
			_, err := io.ReadAll(c)
			ends <- err
		})
		ln := newLocalListener(t)
		c := waitingClient(t, ln, []byte(sent), false)
		c.SetLinger(0)
		c.Close()
		s := startWith(t, testConfig(b.addr()), ln)
		if err := receive(t, "target's end", ends); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("sent %q: the target's read ended with %v, want a reset", sent, err)
		}
		waitFor(t, "the connection closed", func() bool { return s.Stats().Listener.Active == 0 })
		if st := s.Stats(); st.Proxied != 1 || st.EventLoop != 1 || st.BytesFromClient != uint64(len(sent)) {
			t.Fatalf("sent %q: stats %+v", sent, st)
		}
	}
}

// Bytes that came behind an accepted PROXY header go first, then what the
// client sent after it, to the target, once.
func TestLoopFirstBytesAfterAcceptedHeader(t *testing.T) {
	live := newBackend(t, nil, echo)
	cfg := testConfig(live.addr())
	cfg.Listener.AcceptProxy = true
	cfg.Listener.ProxyFrom = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	ln := newLocalListener(t)
	h := proxyproto.HeaderProxyFromAddrs(1, &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 4000}, &net.TCPAddr{IP: net.IPv4(10, 9, 9, 9), Port: 80})
	hb, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	c := waitingClient(t, ln, append(hb, "behind the header, "...), false)
	s := startWith(t, cfg, ln)
	waitFor(t, "the connection served", func() bool { return s.Stats().Proxied == 1 })
	if _, err := c.Write([]byte("then more")); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "behind the header, then more" {
		t.Fatalf("echo %q, %v", got, err)
	}
	waitFor(t, "the connection closed", func() bool { return s.Stats().Listener.Active == 0 })
	if st := s.Stats(); st.EventLoop != 1 || st.BytesFromClient != uint64(len(got)) {
		t.Fatalf("stats %+v", st)
	}
}

// A connection whose first bytes went through but which its loop cannot
// take (epoll_ctl fails: out of watches) ends with a reset both ways,
// counted as proxied and closed, the target's count of open connections
// back to zero; the server goes on.
func TestLoopAddFailsAfterFirstBytes(t *testing.T) {
	ends := make(chan error, 1)
	b := newBackend(t, nil, func(c net.Conn) {
		_, err := io.ReadAll(c)
		ends <- err
	})
	ln := newLocalListener(t)
	c := waitingClient(t, ln, []byte("hello"), false)
	full := func(epfd, op, fd int, ev *unix.EpollEvent) error { return unix.ENOSPC }
	epollCtlFault.Store(&full)
	defer epollCtlFault.Store(nil)
	s := startWith(t, testConfig(b.addr()), ln)
	if err := receive(t, "target's end", ends); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the target's read ended with %v, want a reset", err)
	}
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client's read ended with %v, want a reset", err)
	}
	waitFor(t, "the connection closed", func() bool { return s.Stats().Listener.Active == 0 })
	st := s.Stats()
	if st.Proxied != 1 || st.Failed != 0 || st.BytesFromClient != 5 {
		t.Fatalf("stats %+v", st)
	}
	if n := s.Set().Targets()[0].Active(); n != 0 {
		t.Fatalf("target counts %d open connections", n)
	}
	epollCtlFault.Store(nil)
	c2 := dialTest(t, s.Addr().String()).(*net.TCPConn)
	c2.Write([]byte("x"))
	c2.CloseWrite()
	if err := receive(t, "target's end", ends); err != nil {
		t.Fatalf("the next connection's target read %v", err)
	}
}

// EventLoops sets how many loops serve the connections (0: one per
// processor); every loop serves its share.
func TestLoopCount(t *testing.T) {
	live := newBackend(t, nil, echo)
	for _, n := range []int{1, 3} {
		cfg := testConfig(live.addr())
		cfg.EventLoops = n
		s := start(t, cfg)
		if len(s.loops) != n {
			t.Fatalf("EventLoops %d: %d loops", n, len(s.loops))
		}
		for range 2 * n {
			if err := echoOnce(t, s.Addr().String()); err != nil {
				t.Fatal(err)
			}
		}
		if st := s.Stats(); st.EventLoop != uint64(2*n) || st.Proxied != uint64(2*n) {
			t.Fatalf("EventLoops %d: stats %+v", n, st)
		}
	}
}

// inKernel counts s's loops that wait in the kernel.
func inKernel(s *Server) int {
	n := 0
	for _, l := range s.loops {
		if l.kernel.Load() {
			n++
		}
	}
	return n
}

// Loops that wait in the kernel (EventLoopThreads) each hold a processor,
// which GOMAXPROCS gains while they run and loses when they stop, for
// twice as many loops in the process as it had processors (a listener
// and its replacement while a reload drains it): a third server's loops
// wait in the runtime's poller, and move to the kernel, in order, as
// others stop. A garbage collection, which must stop every goroutine,
// ends while they wait in the kernel.
func TestLoopThreadsHoldProcessors(t *testing.T) {
	base := runtime.GOMAXPROCS(0)
	if base > runtime.NumCPU() {
		t.Skipf("GOMAXPROCS %d is over the %d CPUs, which bound the loops in the kernel", base, runtime.NumCPU())
	}
	live := newBackend(t, nil, echo)
	cfg := testConfig(live.addr())
	cfg.EventLoopThreads = true // cfg.EventLoops 0: one per core
	a := start(t, cfg)
	if len(a.loops) != base || inKernel(a) != base {
		t.Fatalf("%d loops, %d in the kernel; want %d, all", len(a.loops), inKernel(a), base)
	}
	if got := runtime.GOMAXPROCS(0); got != 2*base {
		t.Fatalf("GOMAXPROCS %d with %d loops in the kernel, want %d", got, base, 2*base)
	}
	b := start(t, cfg) // a reload's replacement
	if inKernel(b) != base {
		t.Fatalf("a second server: %d loops in the kernel, want %d", inKernel(b), base)
	}
	cfg.EventLoops = base + 1
	c := start(t, cfg)
	if len(c.loops) != base+1 || inKernel(c) != 0 {
		t.Fatalf("past twice the cores: %d loops, %d in the kernel; want %d, none", len(c.loops), inKernel(c), base+1)
	}
	if got := runtime.GOMAXPROCS(0); got != 3*base {
		t.Fatalf("GOMAXPROCS %d with a third server's loops in the poller, want %d", got, 3*base)
	}
	check := func() {
		t.Helper()
		for _, s := range []*Server{a, b, c} {
			if s == nil {
				continue
			}
			before := s.Stats().EventLoop
			for range 4 {
				if err := echoOnce(t, s.Addr().String()); err != nil {
					t.Fatal(err)
				}
			}
			if st := s.Stats(); st.EventLoop != before+4 {
				t.Fatalf("stats %+v", st)
			}
		}
	}
	check()
	gcDone := make(chan struct{})
	go func() { runtime.GC(); close(gcDone) }()
	select {
	case <-gcDone:
	case <-time.After(5 * time.Second):
		t.Fatal("a garbage collection did not end while the loops waited")
	}
	a.Shutdown() // its processors go to c's loops, oldest first
	a = nil
	waitFor(t, "the third server's loops in the kernel", func() bool { return inKernel(c) == base })
	if got := runtime.GOMAXPROCS(0); got != 3*base {
		t.Fatalf("GOMAXPROCS %d once the first server's processors went to the third's loops, want %d", got, 3*base)
	}
	check()
	b.Shutdown()
	b = nil
	waitFor(t, "every loop in the kernel", func() bool { return inKernel(c) == base+1 })
	if got := runtime.GOMAXPROCS(0); got != 2*base+1 {
		t.Fatalf("GOMAXPROCS %d with %d loops in the kernel, want %d", got, base+1, 2*base+1)
	}
	check()
	c.Shutdown()
	if got := runtime.GOMAXPROCS(0); got != base {
		t.Fatalf("GOMAXPROCS %d at the end, want %d", got, base)
	}
}

// GODEBUG=asyncpreemptoff=1 keeps the loops in the runtime's poller: no
// signal would end their wait for a garbage collection's stop.
func TestAsyncPreemptOffKeepsLoopsInThePoller(t *testing.T) {
	for _, tc := range []struct {
		godebug string
		off     bool
	}{
		{"", false},
		{"asyncpreemptoff=1", true},
		{"gctrace=1, asyncpreemptoff=1", true},
		{"asyncpreemptoff=1,asyncpreemptoff=0", false},
		{"asyncpreemptoff=0", false},
	} {
		t.Setenv("GODEBUG", tc.godebug)
		if got := asyncPreemptOff(); got != tc.off {
			t.Errorf("GODEBUG=%q: asyncPreemptOff() = %v", tc.godebug, got)
		}
	}
	t.Setenv("GODEBUG", "asyncpreemptoff=1")
	cfg := testConfig(newBackend(t, nil, echo).addr())
	cfg.EventLoopThreads = true
	s := start(t, cfg)
	if len(s.loops) == 0 || inKernel(s) != 0 {
		t.Fatalf("%d loops, %d in the kernel", len(s.loops), inKernel(s))
	}
	if err := echoOnce(t, s.Addr().String()); err != nil {
		t.Fatal(err)
	}
}

// A loop keeps the connections it accepts unless another serves at least
// two fewer (then the one that serves fewest), and never hands one to a
// loop that has ended.
func TestNearestLoop(t *testing.T) {
	a, b, c := &evloop{}, &evloop{}, &evloop{}
	s := &Server{loops: []*evloop{a, b, c}}
	for _, tc := range []struct {
		conns [3]int32
		ended *evloop
		want  *evloop
	}{
		{[3]int32{3, 2, 3}, nil, a},
		{[3]int32{3, 1, 2}, nil, b},
		{[3]int32{5, 3, 1}, nil, c},
		{[3]int32{3, 0, 3}, b, a},
		{[3]int32{4, 0, 1}, b, c},
	} {
		for i, l := range s.loops {
			l.conns.Store(tc.conns[i])
			l.ended.Store(l == tc.ended)
		}
		if got := s.nearest(a); got != tc.want {
			t.Errorf("conns %v, ended %p: got %p, want %p", tc.conns, tc.ended, got, tc.want)
		}
	}
}
