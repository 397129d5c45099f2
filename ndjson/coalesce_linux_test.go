package ndjson

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/linetest"
	"github.com/ndlb/ndlb/internal/rawio"
	"github.com/ndlb/ndlb/listener"
)

// tcpPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func tcpPair(t *testing.T) (client net.Conn, server *net.TCPConn) {
	t.Helper()
	ln := newLocalListener(t)
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, c := range []net.Conn{client, s} {
		_ = c.SetDeadline(time.Now().Add(time.Minute))
	}
	return client, s.(*net.TCPConn)
}

// rcvlowat is the socket's SO_RCVLOWAT; 0 (what some kernels report
// before it is set) means 1, any byte.
func rcvlowat(t *testing.T, rc syscall.RawConn) int {
	t.Helper()
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return max(v, 1)
}

// A client that sends faster than base per wait has its socket's mark
// raised to about three quarters of what it sends per wait, in powers of
// two from base to maxMark and within half the socket's receive buffer,
// following its pace: a few bytes then do not wake the reader, until the
// wait is over and the coalescer lowers the mark, which wakes it. A slow
// client is never coalesced, and stop leaves the socket as it was
// accepted.
func TestCoalescerRaisesAndLowersTheMark(t *testing.T) {
	if !lowatWorks() {
		t.Skip("Linux before 5.11: no coalescing")
	}
	client, server := tcpPair(t)
	rc, err := server.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	const wait = 50 * time.Millisecond
	co := newCoalescer(rc, 32<<10, wait)
	clock := time.Now()
	co.now = func() time.Time { return clock }
	// step reads n bytes (in reads of at most 16 KiB, as a wake-up with a
	// high mark does) over d, then waits.
	step := func(n int, d time.Duration) {
		for ; n > 16<<10; n -= 16 << 10 {
			co.read(16 << 10)
		}
		co.read(n)
		clock = clock.Add(d)
		co.waiting()
	}
	// within is the mark the socket's receive buffer allows for m.
	room := co.roomNow()
	within := func(m int) int { return max(min(m, room), 32<<10) }
	co.waiting() // the first wait: nothing to measure yet
	for _, s := range []struct {
		name string
		n    int
		d    time.Duration
		mark int // 1: not raised
	}{
		{"slow: 5 KiB per wait", 1 << 10, 10 * time.Millisecond, 1},
		{"just below: 3/4 of 40 KiB per wait", 4 << 10, 5 * time.Millisecond, 1},
		{"50 KiB per wait", 5 << 10, 5 * time.Millisecond, 32 << 10},
		{"100 KiB per wait, in several reads", 10 << 10, 5 * time.Millisecond, within(64 << 10)},
		{"far faster", 1 << 20, time.Millisecond, within(maxMark)},
	} {
		step(s.n, s.d)
		if got := rcvlowat(t, rc); got != s.mark || co.high.Load() != (s.mark > 1) {
			t.Fatalf("%s: SO_RCVLOWAT %d, raised %v; want %d", s.name, got, co.high.Load(), s.mark)
		}
	}
	// The receive buffer grows: the mark follows, once the coalescer asks
	// again.
	if err := server.SetReadBuffer(1 << 20); err != nil {
		t.Fatal(err)
	}
	grown := co.roomNow()
	before, after := within(maxMark), max(min(maxMark, grown), 32<<10)
	followed := false
	for i := 0; i <= recheckWaits && !followed; i++ {
		step(1<<20, time.Millisecond)
		switch got := rcvlowat(t, rc); got {
		case after:
			followed = true
		case before:
		default:
			t.Fatalf("wait %d after the buffer grew to hold %d: SO_RCVLOWAT %d, want %d or %d", i, grown, got, before, after)
		}
	}
	if !followed {
		t.Fatalf("the mark stayed %d for %d waits after the buffer grew to hold %d", before, recheckWaits+1, grown)
	}
	step(10<<10, 5*time.Millisecond)
	if got, want := rcvlowat(t, rc), max(min(64<<10, grown), 32<<10); got != want {
		t.Fatalf("slower again: SO_RCVLOWAT %d, want %d", got, want)
	}

	// The reader waits; then 100 bytes come, far below the mark.
	waiting := make(chan struct{})
	type result struct {
		n   int
		at  time.Time
		err error
	}
	done := make(chan result, 1)
	go func() {
		buf := make([]byte, 64<<10)
		var n int
		var rerr error
		once := false
		err := rc.Read(func(fd uintptr) bool {
			n, rerr = rawio.Read(fd, buf)
			if errors.Is(rerr, syscall.EAGAIN) {
				co.waiting()
				if !once {
					once = true
					close(waiting)
				}
				return false
			}
			return true
		})
		done <- result{n, time.Now(), errors.Join(err, rerr)}
	}()
	<-waiting
	sent := time.Now()
	if _, err := client.Write(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the reader was never woken: the mark was not lowered")
	}
	if r.err != nil || r.n != 100 {
		t.Fatalf("read %d bytes, %v", r.n, r.err)
	}
	if took := r.at.Sub(sent); took < wait/2 {
		t.Fatalf("100 bytes woke the reader after %s: the mark did not hold them", took)
	}
	if got := rcvlowat(t, rc); got != 1 || co.high.Load() {
		t.Fatalf("after the wait: SO_RCVLOWAT %d, raised %v", got, co.high.Load())
	}

	// Raised again, then stopped: the socket is as it came.
	step(10<<10, 5*time.Millisecond)
	if !co.high.Load() {
		t.Fatal("not raised again")
	}
	co.stop()
	if got := rcvlowat(t, rc); got != 1 || co.high.Load() {
		t.Fatalf("after stop: SO_RCVLOWAT %d, raised %v", got, co.high.Load())
	}
}

// A client streams fast enough to be coalesced, then sends a last few
// lines and stays connected: they are delivered (the coalescer lowers the
// mark after its wait), and the ledger closes.
func TestCoalescedStreamDeliversItsTail(t *testing.T) {
	if !lowatWorks() {
		t.Skip("Linux before 5.11: no coalescing")
	}
	srv, sink := startServer(t, func(c *Config) { c.ReadCoalesce = 20 * time.Millisecond })
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	lines := sendUntilCoalesced(t, c, sink)
	if _, err := linetest.Send(c, 1, lines, lines+3, 16<<10); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "every line delivered while the client stays", func() bool { return sink.Lines() == uint64(lines)+3 })
	c.Close()
	sum := srv.Shutdown()
	if sum.Ledger.Received != uint64(lines)+3 || sum.Ledger.Delivered != uint64(lines)+3 || !sum.Ledger.Closed() {
		t.Fatalf("ledger %+v", sum.Ledger)
	}
}

// sendUntilCoalesced sends lines of client 1 to c in bursts of about 1 MiB
// (16 KiB writes), each once the sink has the one before (so the server's
// reader has caught up and waits between them), until the server raised a
// mark, and returns how many it sent. A stream sent in one go may never
// let a reader on a loaded machine catch up, and so never be coalesced.
func sendUntilCoalesced(t *testing.T, c net.Conn, sink *linetest.Sink) uint32 {
	t.Helper()
	const burst, most = 10000, 400000
	raised := coalesceRaises.Load()
	var sent uint32
	for coalesceRaises.Load() == raised {
		if sent >= most {
			t.Fatalf("the stream was never coalesced in %d lines", sent)
		}
		if _, err := linetest.Send(c, 1, sent, sent+burst, 16<<10); err != nil {
			t.Fatal(err)
		}
		sent += burst
		// Once raised, the mark may hold the burst's last bytes back until
		// the coalescer's wait ends (a minute in one test).
		waitUntil(t, "the burst delivered", func() bool { return sink.Lines() == uint64(sent) || coalesceRaises.Load() != raised })
	}
	return sent
}

func TestKernelAtLeast(t *testing.T) {
	for release, want := range map[string]bool{
		"6.1.0-13-amd64":  true,
		"4.18.0-553.el8":  true,
		"4.19.0-26-amd64": true,
		"4.17.3":          false,
		"3.10.0-1160.el7": false,
		"5.4-rc1":         true,
		"4.18-rc1":        true,
		"garbage":         false,
		"":                false,
		"10.0.0":          true,
		"4.x.0":           false,
	} {
		if got := kernelAtLeast(release, 4, 18); got != want {
			t.Errorf("kernelAtLeast(%q, 4, 18) = %v, want %v", release, got, want)
		}
	}
}

// A read the memory budget gave no buffer for reads nothing, also right
// after a read that did (the count of that read must not be returned
// again: the framer would cut past its buffer).
func TestReadWithoutBufferAfterARead(t *testing.T) {
	if !lowatWorks() {
		t.Skip("Linux before 5.11: no coalescing")
	}
	client, server := tcpPair(t)
	r, ok := clientReader(&listener.Conn{Conn: server}, 64<<10, DefaultReadCoalesce).(*idleReader)
	if !ok || r.co == nil {
		t.Fatal("no coalescing idle reader for a plain TCP connection")
	}
	if _, err := client.Write(make([]byte, 300)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if n, err := r.ReadBuffer(func() []byte { return buf }, func() {}); n != 100 || err != nil {
		t.Fatalf("first read: %d, %v", n, err)
	}
	if n, err := r.ReadBuffer(func() []byte { return nil }, func() {}); n != 0 || err != nil {
		t.Fatalf("read without a buffer: %d, %v; want 0, nil", n, err)
	}
	if n, err := r.ReadBuffer(func() []byte { return buf }, func() {}); n != 100 || err != nil {
		t.Fatalf("read after it: %d, %v", n, err)
	}
}

// A connection moved to another process while its mark is raised arrives
// there with the mark lowered: the new process, which knows nothing of
// the old one's coalescing, would otherwise wait for half a read before it
// saw a slow client's next line.
func TestHandOffLowersTheMark(t *testing.T) {
	if !lowatWorks() {
		t.Skip("Linux before 5.11: no coalescing")
	}
	// A wait far longer than the test: only stop can lower the mark.
	old, sink := startServer(t, func(c *Config) { c.ReadCoalesce = time.Minute })
	cfg := old.cfg
	cfg.ReadCoalesce = 0 // the new process never touches the mark
	next, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	next.Start(newLocalListener(t))
	c, err := net.Dial("tcp", old.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	lines := sendUntilCoalesced(t, c, sink)
	if ln := old.Handover(); ln != nil {
		ln.Close()
	}
	move := moveTo(t, next)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	moved, _ := old.HandOff(ctx, func(tr Transfer) error {
		rc, err := tr.Conn.SyscallConn()
		if err != nil {
			return err
		}
		if got := rcvlowat(t, rc); got != 1 {
			t.Errorf("the socket leaves with SO_RCVLOWAT %d", got)
		}
		return move(tr)
	})
	if moved != 1 {
		t.Fatalf("moved %d connections, want 1", moved)
	}
	// One more line, far below any mark: the new process reads it now.
	if _, err := c.Write(linetest.AppendLine(nil, 1, lines)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "every line delivered", func() bool { return sink.Lines() == uint64(lines)+1 })
	c.Close()
	a, b := old.Shutdown(), next.Shutdown()
	if a.Ledger.Received+b.Ledger.Received != uint64(lines)+1 || a.Ledger.Delivered+b.Ledger.Delivered != uint64(lines)+1 {
		t.Fatalf("old %+v, new %+v", a.Ledger, b.Ledger)
	}
}
