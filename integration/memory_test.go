package integration

import (
	"bytes"
	"errors"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// memoryBound is the README's formula for ndlb's peak RSS in NDJSON mode:
// a base, --buffer-bytes and --client-buffer-bytes each up to twice (the
// garbage collector lets the heap reach twice what is live before it
// collects), and a fixed cost per client connection.
func memoryBound(bufferBytes, clientBytes, conns uint64) uint64 {
	const base, perConn = 40 << 20, 16 << 10
	return base + 2*(bufferBytes+clientBytes) + perConn*conns
}

// Several hundred clients each send most of a --max-line-bytes line and then
// sit on it, while an ordinary client sends 30 000 lines. Peak RSS stays
// within the formula, the ordinary client's lines all arrive, and each held
// line is counted (memory or incomplete) when its client resets or goes
// quiet past --line-timeout. The static build: the race detector's shadow
// memory would blur the figure.
func TestHeldLongLinesCannotGrowMemory(t *testing.T) {
	const holders, lines = 300, 30000
	const maxLine, clientBytes, bufferBytes = 512 << 10, 16 << 20, 16 << 20
	w := newWorld(t, 1)
	p := startCmd(t, cmdStatic("--addr", "127.0.0.1", "--port", "0", "--log-format", "json",
		"--target", w.targets(), "--max-line-bytes", "512KiB", "--client-buffer-bytes", "16MiB",
		"--buffer-bytes", "16MiB", "--line-timeout", "4s"))
	held := bytes.Repeat([]byte("h"), maxLine-maxLine/16)
	conns := make([]*net.TCPConn, holders)
	var wg sync.WaitGroup
	errs := make(chan error, holders)
	for i := range conns {
		c, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.TCPConn)
		t.Cleanup(func() { c.Close() })
		wg.Go(func() {
			_ = c.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if _, err := c.Write(held); err != nil {
				errs <- err
			}
		})
	}
	// The ordinary client, while the holders fill the budget.
	conn := dial(t, p.addr)
	if _, err := linetest.Send(conn, 1, 0, lines, 16<<10); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a holder could not send: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for w.sinks[0].Lines() < lines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := w.sinks[0].Lines(); got < lines {
		t.Fatalf("the ordinary client's lines did not get through: %d of %d", got, lines)
	}
	// Half the holders give up with a reset; the rest go quiet until the
	// line timeout closes them.
	for _, c := range conns[:holders/2] {
		_ = c.SetLinger(0)
		c.Close()
	}
	for _, c := range conns[holders/2:] {
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a quiet holder was not closed by --line-timeout: %v", err)
		}
	}
	hwm := p.vmHWM()
	p.stopOK()
	r := w.check(map[uint32]uint32{1: lines})
	if r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	g := w.checkLedger(p, true)
	if g.received != lines+holders || g.byReason["memory"]+g.byReason["incomplete"] != holders {
		t.Fatalf("ledger %+v: every held line must be counted as memory or incomplete", g)
	}
	if g.byReason["memory"] == 0 {
		t.Fatal("no held line was dropped for memory: the budget never filled")
	}
	bound := memoryBound(bufferBytes, clientBytes, holders+1)
	t.Logf("peak RSS %d MiB with %d clients holding %d KiB each (%d MiB held at most without a bound); formula %d MiB; ledger %+v",
		hwm>>20, holders, len(held)>>10, holders*len(held)>>20, bound>>20, g)
	if hwm > bound {
		t.Fatalf("peak RSS %d MiB over the documented bound %d MiB", hwm>>20, bound>>20)
	}
}

// Clients stream flat out while every target is down: ndlb stops reading
// once its budgets are full, so RSS stays within the formula; at shutdown
// what it read and could not deliver is counted, and it exits 1.
func TestAllTargetsDownMemoryBounded(t *testing.T) {
	const clients, bufferBytes, clientBytes = 8, 16 << 20, 8 << 20
	w := newWorld(t, 2)
	w.sinks[0].Kill(true)
	w.sinks[1].Kill(true)
	p := startCmd(t, cmdStatic("--addr", "127.0.0.1", "--port", "0", "--log-format", "json",
		"--target", w.targets(), "--buffer-bytes", "16MiB", "--client-buffer-bytes", "8MiB",
		"--drain-timeout", "500ms", "--deliver-timeout", "500ms", "--backoff-max", "100ms"))
	var wg sync.WaitGroup
	for c := range uint32(clients) {
		conn := dial(t, p.addr)
		wg.Go(func() {
			// Flat out for 3 s: writes block once ndlb stops reading.
			_ = conn.SetWriteDeadline(time.Now().Add(3 * time.Second))
			_, _ = linetest.Send(conn, c, 0, 1<<30, 64<<10)
		})
	}
	wg.Wait()
	hwm := p.vmHWM()
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1 (lines were dropped at shutdown)", code)
	}
	g := p.ledger("default")
	bound := memoryBound(bufferBytes, clientBytes, clients)
	t.Logf("peak RSS %d MiB with every target down; formula %d MiB; ledger %+v", hwm>>20, bound>>20, g)
	if hwm > bound {
		t.Fatalf("peak RSS %d MiB over the documented bound %d MiB", hwm>>20, bound>>20)
	}
	if g.delivered != 0 || g.byReason["shutdown"] == 0 {
		t.Fatalf("ledger %+v: with every target down, what was read must be dropped at shutdown", g)
	}
}

// Many octet-counted clients send a read's worth each while every target is
// down: the budget fills, and a client whose framer waits for room holds no
// read buffer of its own, so RSS stays within the formula (2 000 such
// clients took 164 MiB, against a bound of 87, when each held one). So it
// does while ndlb stops, reading what each client's socket holds to count
// it (1 MiB reads: each took a read buffer of its own for that, 218 to 413
// MiB against a bound of 103 in an adversarial run).
func TestManyOctetClientsMemoryBounded(t *testing.T) {
	const clients, bufferBytes, clientBytes = 1500, 4 << 20, 4 << 20
	raiseFileLimit(t, 2*clients+2048)
	w := newWorld(t, 1)
	w.sinks[0].Kill(true)
	p := startCmd(t, cmdStatic("--addr", "127.0.0.1", "--port", "0", "--log-format", "json",
		"--target", w.targets(), "--framing", "octet-counted", "--max-line-bytes", "64KiB", "--read-bytes", "1MiB",
		"--buffer-bytes", "4MiB", "--client-buffer-bytes", "4MiB",
		"--drain-timeout", "500ms", "--deliver-timeout", "500ms", "--backoff-max", "100ms"))
	var frames []byte
	for i := 0; len(frames) < 64<<10; i++ {
		msg := append(strconv.AppendInt([]byte("message "), int64(i), 10), bytes.Repeat([]byte("x"), 200)...)
		frames = append(strconv.AppendInt(frames, int64(len(msg)), 10), ' ')
		frames = append(frames, msg...)
	}
	var wg sync.WaitGroup
	for range clients {
		conn, err := net.DialTimeout("tcp", p.addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		wg.Go(func() {
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, _ = conn.Write(frames) // blocks once ndlb stops reading
		})
	}
	wg.Wait()
	time.Sleep(time.Second) // the readers settle on the spent budget
	running := p.vmHWM()
	// The peak, sampled until ndlb exits (the last figure read is the
	// highest: VmHWM only grows).
	var peak atomic.Uint64
	sampled := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if v := p.vmHWM(); v > 0 {
				peak.Store(v)
			}
			select {
			case <-stopped:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	code := p.stop(syscall.SIGTERM, 30*time.Second)
	close(stopped)
	<-sampled
	if code != 1 {
		t.Fatalf("exit code %d, want 1 (lines were dropped at shutdown)", code)
	}
	bound := memoryBound(bufferBytes, clientBytes, clients)
	t.Logf("peak RSS %d MiB running, %d MiB stopping, with %d octet-counted clients and every target down; formula %d MiB",
		running>>20, peak.Load()>>20, clients, bound>>20)
	if hwm := max(running, peak.Load()); hwm > bound {
		t.Fatalf("peak RSS %d MiB over the documented bound %d MiB", hwm>>20, bound>>20)
	}
}

// raiseFileLimit makes room for n sockets in this process and in the ndlb
// it starts (which inherits the limit), raising the hard limit as root may.
func raiseFileLimit(t *testing.T, n uint64) {
	t.Helper()
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		t.Fatal(err)
	}
	if r.Cur >= n {
		return
	}
	old := r
	r.Cur, r.Max = max(n, r.Cur), max(n, r.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		t.Fatalf("this test needs %d open files (soft limit %d, hard %d) and cannot raise the limit: %v", n, old.Cur, old.Max, err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// 10 000 NDJSON clients connect, each sends a line and goes quiet: they all
// stay connected, idle, and are served again when they send once more. The
// memory each idle client costs is logged (docs/benchmarks.md records it).
func TestTenThousandIdleClients(t *testing.T) {
	const n = 10000
	raiseFileLimit(t, n+2048) // each process holds one end of each connection
	w := newWorld(t, 1)
	p := startCmd(t, cmdStatic("--addr", "127.0.0.1", "--port", "0", "--log-format", "json",
		"--target", w.targets()))
	base := p.vmRSS()
	conns := make([]net.Conn, 0, n)
	for c := range uint32(n) {
		conn, err := net.DialTimeout("tcp", p.addr, 10*time.Second)
		if err != nil {
			t.Fatalf("client %d: %v", c, err)
		}
		conns = append(conns, conn)
		if _, err := conn.Write(linetest.AppendLine(nil, c, 0)); err != nil {
			t.Fatalf("client %d: %v", c, err)
		}
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	w.waitLines(n)
	// Let the clients sit idle, then measure.
	time.Sleep(2 * time.Second)
	idle := p.vmRSS()
	perClient := (int64(idle) - int64(base)) / n
	t.Logf("RSS %d MiB before the clients, %d MiB with %d idle clients: %.1f KiB per idle client",
		base>>20, idle>>20, n, float64(perClient)/1024)
	for i, conn := range conns {
		if _, err := conn.Write(linetest.AppendLine(nil, uint32(i), 1)); err != nil {
			t.Fatalf("idle client %d was disconnected: %v", i, err)
		}
	}
	w.waitLines(2 * n)
	for _, c := range conns {
		c.Close()
	}
	p.stopOK()
	if r := w.check(map[uint32]uint32{}); r.Torn != 0 {
		t.Fatal(r)
	}
	if g := w.checkLedger(p, true); g.received != 2*n || g.dropped != 0 {
		t.Fatalf("ledger %+v", g)
	}
	// Reading through a held buffer costs about 11.6 KiB per idle client;
	// the idle reader, which gives the buffer back, about 7.
	if perClient > 10<<10 {
		t.Fatalf("%d bytes per idle client, over 10 KiB: idle clients hold read buffers", perClient)
	}
}
