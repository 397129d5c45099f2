package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/linetest"
)

// ndlb A writes to ndlb B, which stops reading while its own target is
// paused, so A's writes time out in the middle of batches. A gives those
// connections up with a reset, never a FIN: B drops the fragments it was
// cut in as incomplete instead of turning them into lines at EOF, so the
// sink behind B sees no torn line. The only duplicates are lines A sent
// again, and there are no more of them than A's retried count.
func TestWriteTimeoutResetsNeverTearsDownstream(t *testing.T) {
	w := newWorld(t, 1)
	w.sinks[0].Pause()
	b := startNDLB(t, "--target", w.targets(), "--max-line-bytes", "64KiB", "--buffer-bytes", "1MiB",
		"--client-buffer-bytes", "1MiB", "--read-bytes", "4KiB")
	a := startNDLB(t, "--target", b.addr, "--max-line-bytes", "64KiB", "--write-timeout", "1s",
		"--connections", "2", "--backoff-max", "200ms", "--log-level", "debug")
	resumed := make(chan error, 1)
	go func() {
		// Resume once A has given up at least one connection mid-write.
		_, err := a.awaitLog("upstream connection failed", 30*time.Second)
		w.sinks[0].Resume()
		resumed <- err
	}()
	sent, err := clients(4, 60000, func(c uint32) error {
		conn, err := net.DialTimeout("tcp", a.addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = linetest.Send(conn, c, 0, 60000, 32<<10)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-resumed; err != nil {
		t.Fatal(err)
	}
	a.stopOK()
	b.stopOK()
	r := w.check(sent)
	retried := a.summary("retried_lines")
	if r.Lost != 0 || r.Torn != 0 || r.Duplicated > retried {
		t.Fatalf("%s; A retried %d lines", r, retried)
	}
	if a.summary("resets") == 0 {
		t.Fatal("A gave up no connection with a reset: the write timeout never cut a batch")
	}
	resetSeen := false
	for _, l := range b.findLogs("client connection failed") {
		if e, _ := l["err"].(string); strings.Contains(e, "reset") {
			resetSeen = true
		}
	}
	if !resetSeen {
		t.Fatal("B saw no reset from A: A's connections ended some other way")
	}
	gb := b.ledger("default")
	if gb.byReason["incomplete"] == 0 {
		// A's reset cut a batch, but B's last read before it stopped
		// reading may have ended at a line's end (about one time in a
		// hundred): then B held no fragment to drop. What the sink
		// received is checked above either way.
		t.Logf("B counted no fragment: its reads stopped at a line's end when A reset (ledger %+v)", gb)
	}
	w.checkLedger(b, true)
	ga := a.ledger("default")
	t.Logf("A: %d retried lines, %d resets, ledger %+v; B ledger %+v; %s", retried, a.summary("resets"), ga, gb, r)
	if ga.received != r.Sent || ga.dropped != 0 {
		t.Fatalf("A's ledger %+v, sent %d", ga, r.Sent)
	}
}

// A target that reads slowly is drained through the admin API: the workers
// leave it once what they wrote is acknowledged, and close with a FIN only
// when nothing is left unacknowledged; the target never sees a fragment
// followed by a clean end of stream, and no line is lost.
func TestDrainOfSlowTargetNeverTears(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--target", w.targets(), "--admin", "127.0.0.1:0", "--write-timeout", "1s")
	api := newAdminAPI(t, p, "")
	slow := w.sinks[1]
	slow.Pause()
	done := make(chan error, 1)
	go func() {
		time.Sleep(500 * time.Millisecond)
		code := api.call("POST", "/api/v1/targets/"+slow.Addr()+"/drain", nil)
		time.Sleep(500 * time.Millisecond)
		slow.Resume()
		if code != 200 {
			done <- fmt.Errorf("drain: status %d", code)
			return
		}
		done <- nil
	}()
	sent, err := clients(4, 40000, func(c uint32) error {
		conn, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		return linetest.SendPaced(conn, c, 0, 40000, 2*time.Second)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	p.stopOK()
	r := w.check(sent)
	if r.Lost != 0 || r.Torn != 0 || r.Duplicated > p.summary("retried_lines") {
		t.Fatalf("%s; retried %d", r, p.summary("retried_lines"))
	}
	w.checkLedger(p, r.Duplicated == 0)
}

// outq returns the bytes written on c and not acknowledged by its peer's
// kernel (SIOCOUTQ): what the sender still holds. It stays readable after
// the peer reset the connection.
func outq(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ierr error
	if err := rc.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return n
}

// fillClient writes lines of client id to c until a write blocks for
// 300 ms (ndlb stopped reading: its queue and buffers are full), and returns
// every byte it handed to the socket.
func fillClient(c *net.TCPConn, id uint32) []byte {
	var stream []byte
	for s := uint32(0); ; s++ {
		line := linetest.AppendLine(nil, id, s)
		_ = c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Write(line)
		stream = append(stream, line[:n]...)
		if err != nil {
			return stream
		}
	}
}

// SIGTERM with a short drain while clients hold a full queue and full
// socket buffers: at the deadline ndlb reads what its kernel holds, and
// the account is exact. Lines the sink received + lines ndlb dropped =
// lines the clients wrote less what was still unsent in each client's own
// socket when ndlb closed it (SIOCOUTQ on the client side).
func TestDrainDeadlineReadsWhatTheKernelHolds(t *testing.T) {
	const clients = 4
	w := newWorld(t, 1)
	w.sinks[0].Pause()
	p := startNDLB(t, "--target", w.targets(), "--buffer-bytes", "2MiB", "--client-buffer-bytes", "2MiB",
		"--max-line-bytes", "64KiB", "--drain-timeout", "1s", "--deliver-timeout", "1s")
	conns := make([]*net.TCPConn, clients)
	streams := make([][]byte, clients)
	var wg sync.WaitGroup
	for i := range conns {
		conns[i] = dial(t, p.addr).(*net.TCPConn) // on the test's goroutine
		wg.Go(func() { streams[i] = fillClient(conns[i], uint32(i)) })
	}
	wg.Wait()
	code := p.stop(syscall.SIGTERM, 30*time.Second)
	var wantLines uint64
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("client %d: ndlb did not close the connection: %v", i, err)
		}
		unsent := outq(t, c)
		accepted := streams[i][:len(streams[i])-unsent]
		lines := uint64(bytes.Count(accepted, []byte{'\n'}))
		if len(accepted) > 0 && accepted[len(accepted)-1] != '\n' {
			lines++ // a fragment: ndlb must count it too
		}
		t.Logf("client %d wrote %d bytes, %d unsent at the close: %d lines ndlb's kernel took", i, len(streams[i]), unsent, lines)
		wantLines += lines
	}
	if code != 1 {
		t.Fatalf("exit code %d, want 1 (lines were dropped at shutdown)", code)
	}
	w.sinks[0].Resume()
	w.drained()
	sent := map[uint32]uint32{}
	for i, st := range streams {
		sent[uint32(i)] = uint32(bytes.Count(st, []byte{'\n'}))
	}
	r := w.ledger.Check(sent)
	t.Log(r)
	g := w.checkLedger(p, true)
	t.Logf("ledger %+v; the sink got %d lines", g, r.Received)
	if g.received != wantLines {
		t.Fatalf("ndlb received %d lines (delivered %d + dropped %d), the clients' sockets handed over %d",
			g.received, g.delivered, g.dropped, wantLines)
	}
	if g.byReason["shutdown"] == 0 {
		t.Fatal("nothing was dropped at shutdown: the queue was not full")
	}
}

// A reload that replaces a listener (a setting that needs a new one) while
// clients connect hundreds of times a second: no connection is refused or
// reset, every line arrives once, and the listener's ledger closes across
// the replaced instances.
func TestReloadReplacesListenerWithoutResets(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, 1)
	conf := func(maxLine string) string {
		return fmt.Sprintf("log-format = \"json\"\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\nmax-line-bytes = %q\ntarget = [%q]\n",
			maxLine, w.sinks[0].Addr())
	}
	path := writeConfig(t, dir, conf("1MiB"))
	p := startCmd(t, command(bin, "--config", path))
	addr := listening(t, p, 1)["logs"]
	stop := make(chan struct{})
	var failures atomic.Uint64
	var firstErr atomic.Value
	var sent atomic.Uint32
	var wg sync.WaitGroup
	for c := range uint32(4) {
		wg.Go(func() {
			for s := uint32(0); ; s++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := oneShot(addr, c, s); err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
				}
				sent.Add(1)
				time.Sleep(2 * time.Millisecond)
			}
		})
	}
	for i, size := range []string{"512KiB", "256KiB", "1MiB"} {
		time.Sleep(300 * time.Millisecond)
		os.WriteFile(path, []byte(conf(size)), 0o600)
		_ = p.cmd.Process.Signal(syscall.SIGHUP)
		deadline := time.Now().Add(10 * time.Second)
		for len(p.findLogs("listener replaced; the old one drains")) <= i && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	replaced := len(p.findLogs("listener replaced; the old one drains"))
	p.stopOK()
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d connections failed across %d replacements; first: %v", n, sent.Load(), replaced, firstErr.Load())
	}
	if replaced < 2 {
		t.Fatalf("the listener was replaced %d times, want at least 2", replaced)
	}
	w.drained()
	g := p.ledger("logs")
	r := w.ledger.Check(map[uint32]uint32{})
	t.Logf("%d connections over %d replacements; ledger %+v", sent.Load(), replaced, g)
	if g.received != uint64(sent.Load()) || g.delivered != r.Received || r.Torn != 0 {
		t.Fatalf("ledger %+v; sent %d; sink %s", g, sent.Load(), r)
	}
}

// oneShot connects, sends one line, half-closes and waits for ndlb to close
// its side: a refused dial or a reset is an error.
func oneShot(addr string, c, s uint32) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write(linetest.AppendLine(nil, c, s)); err != nil {
		return err
	}
	_ = conn.(*net.TCPConn).CloseWrite()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, io.EOF) {
		return fmt.Errorf("after sending, read %d bytes, %v; want EOF", n, err)
	}
	return nil
}

// A target removed by a reload and added back within a second gets its
// workers, its lines and its health checks again.
func TestTargetRemovedAndAddedBackServesAgain(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, 2)
	s0, s1 := w.sinks[0].Addr(), w.sinks[1].Addr()
	conf := func(targets ...string) string {
		return fmt.Sprintf("log-format = \"json\"\nadmin = \"127.0.0.1:0\"\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\n"+
			"check = \"tcp\"\ncheck-interval = \"300ms\"\ncheck-timeout = \"250ms\"\ntarget = %s\n", tomlList(targets))
	}
	path := writeConfig(t, dir, conf(s0, s1))
	p := startCmd(t, command(bin, "--config", path))
	addr := listening(t, p, 1)["logs"]
	api := newAdminAPI(t, p, "")
	api.waitTarget(s1, "a health check", func(a apiTarget) bool { return a.LastCheck != nil })

	send := func(c, lines uint32) {
		t.Helper()
		conn := dial(t, addr)
		if _, err := linetest.Send(conn, c, 0, lines, 16<<10); err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	send(1, 20000)
	os.WriteFile(path, []byte(conf(s0)), 0o600)
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog("target removed; draining", 10*time.Second)
	api.waitTarget(s1, "removed", func(a apiTarget) bool { return a.Removed })
	os.WriteFile(path, []byte(conf(s0, s1)), 0o600)
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	api.waitTarget(s1, "added back", func(a apiTarget) bool { return !a.Removed && a.State == "up" })
	back := time.Now()
	before := w.sinks[1].Lines()
	deadline := time.Now().Add(20 * time.Second)
	for c := uint32(2); w.sinks[1].Lines() == before; c++ {
		if time.Now().After(deadline) {
			t.Fatal("the target added back got no lines")
		}
		send(c, 5000)
	}
	api.waitTarget(s1, "a health check after it came back", func(a apiTarget) bool {
		return a.LastCheck != nil && a.LastCheck.At.After(back)
	})
	p.stopOK()
	w.drained()
	g := p.ledger("logs")
	r := w.ledger.Check(map[uint32]uint32{})
	if g.dropped != 0 || g.delivered != r.Received || r.Torn != 0 {
		t.Fatalf("ledger %+v; sinks %s", g, r)
	}
}
