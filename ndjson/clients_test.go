package ndjson

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/internal/certtest"
	"github.com/ndlb/ndlb/internal/linetest"
)

// startTLSServer is startServer with TLS from the clients. dial connects
// a client through wrap (a fault on the client's side), when not nil, and
// completes its handshake; the connection is closed when the test ends.
func startTLSServer(t *testing.T, edit func(*Config)) (*Server, *linetest.Sink, func(wrap func(net.Conn) net.Conn) *tls.Conn) {
	t.Helper()
	serverTLS, clientTLS, err := certtest.Configs("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv, sink := startServer(t, func(c *Config) {
		c.Listener.TLS = serverTLS
		edit(c)
	})
	dial := func(wrap func(net.Conn) net.Conn) *tls.Conn {
		t.Helper()
		nc, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if wrap != nil {
			nc = wrap(nc)
		}
		c := tls.Client(nc, clientTLS)
		t.Cleanup(func() { c.Close() })
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	return srv, sink, dial
}

// splitConn writes each TLS record in two parts, so that the server
// reads records that came in part.
type splitConn struct{ net.Conn }

func (c splitConn) Write(p []byte) (int, error) {
	h := len(p) / 2
	n, err := c.Conn.Write(p[:h])
	if err != nil {
		return n, err
	}
	m, err := c.Conn.Write(p[h:])
	return n + m, err
}

// TLS clients are read as plain ones are (TestIdleClientsHoldNoBuffer): a
// quiet one holds nothing of the client memory budget, so many idle TLS
// clients cannot take it all and stop the others. Through a plain read of
// the TLS connection, each held a 16 KiB read buffer while it waited: 8
// idle clients filled this test's 256 KiB, and the next client's lines
// were not read.
func TestIdleTLSClientsHoldNoBuffer(t *testing.T) {
	srv, sink, dial := startTLSServer(t, func(c *Config) {
		c.ClientMemory, c.Framer.MaxLineBytes = 256<<10, 16<<10
	})
	var conns []*tls.Conn
	for i := range 40 {
		var wrap func(net.Conn) net.Conn
		if i%2 == 1 {
			wrap = func(nc net.Conn) net.Conn { return splitConn{nc} }
		}
		c := dial(wrap)
		conns = append(conns, c)
		if _, err := c.Write(linetest.AppendLine(nil, uint32(i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "40 lines delivered", func() bool { return sink.Lines() == 40 })
	waitUntil(t, "no memory held by idle TLS clients", func() bool { return srv.Stats().ClientMemory.Used == 0 })
	late := dial(nil) // a budget held by the idle clients would leave it unread
	late.Write(linetest.AppendLine(nil, 100, 0))
	waitUntil(t, "the late client's line", func() bool { return sink.Lines() == 41 })
	for _, c := range conns[:10] {
		c.Write([]byte("a partial line of forty bytes, no end.."))
	}
	waitUntil(t, "ten small partial lines", func() bool { return srv.Stats().ClientMemory.Used == 10*512 })
	for _, c := range conns[:10] {
		c.Write([]byte("\n"))
	}
	waitUntil(t, "the ten lines ended", func() bool { return sink.Lines() == 51 })
	for _, c := range append(conns, late) {
		c.Close()
	}
	sum := srv.Shutdown()
	if sum.Ledger.Received != 51 || sum.Ledger.Delivered != 51 || !sum.Ledger.Closed() {
		t.Fatalf("ledger %+v", sum.Ledger)
	}
}

// A client still connected when the drain deadline passes is read to what
// the kernel holds, then closed with a reset, not a FIN: a shipper held
// back by a full queue, its window shut, would otherwise wait on its write
// until its own timeout before it learns to reconnect.
func TestDrainDeadlineEndsWithReset(t *testing.T) {
	dead := newLocalListener(t)
	addr := dead.Addr().String()
	dead.Close()
	srv, _ := startServer(t, func(c *Config) {
		c.Targets = []string{addr}
		c.DrainTimeout, c.DeliverTimeout = 100*time.Millisecond, 100*time.Millisecond
	})
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	chunk := make([]byte, 0, 64<<10)
	for i := uint32(0); len(chunk) < 60<<10; i++ {
		chunk = linetest.AppendLine(chunk, 1, i)
	}
	for start := time.Now(); ; { // until the queue is full and the client held back
		c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Write(chunk); errors.Is(err, os.ErrDeadlineExceeded) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if time.Since(start) > 20*time.Second {
			t.Fatal("the client was never held back")
		}
	}
	srv.Shutdown()
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, err := c.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
				t.Fatalf("write %v, want a reset", err)
			}
			return
		}
	}
}

// So is a client whose lines read at the deadline were all taken (here:
// an idle one): it sees the reset, not only the FIN of the drain's
// shutdown, and its socket closes rather than wait in CLOSE-WAIT.
func TestDrainDeadlineResetsAnIdleClient(t *testing.T) {
	srv, sink := startServer(t, func(c *Config) { c.DrainTimeout = 50 * time.Millisecond })
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(linetest.AppendLine(nil, 1, 0))
	waitUntil(t, "the line", func() bool { return sink.Lines() == 1 })
	srv.Shutdown()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the client's socket reset (CLOSE, not CLOSE-WAIT)", func() bool {
		var state uint8
		rc.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				state = info.State
			}
		})
		return state == unix.BPF_TCP_CLOSE
	})
}

// halfConn writes only the first half of each write once cut is set: a
// TLS client whose last record never arrives whole.
type halfConn struct {
	net.Conn
	cut bool
}

func (c *halfConn) Write(p []byte) (int, error) {
	if c.cut {
		if _, err := c.Conn.Write(p[:len(p)/2]); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// A TLS client cut at the drain deadline inside a record (part of it was
// read, and cannot be decrypted) has that record counted as a fragment
// dropped, as a plain client's unfinished line is: the ledger closes
// with it. The whole records before it are delivered.
func TestTLSRecordCutAtDrainIsCounted(t *testing.T) {
	srv, sink, dial := startTLSServer(t, func(c *Config) { c.DrainTimeout = 100 * time.Millisecond })
	var hc *halfConn
	c := dial(func(nc net.Conn) net.Conn { hc = &halfConn{Conn: nc}; return hc })
	nc := hc.Conn
	if _, err := c.Write(linetest.AppendLine(linetest.AppendLine(nil, 1, 0), 1, 1)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the whole record's lines", func() bool { return sink.Lines() == 2 })
	hc.cut = true
	c.Write(linetest.AppendLine(linetest.AppendLine(nil, 1, 2), 1, 3)) // half a record arrives
	waitUntil(t, "the half record read", func() bool {
		var n int
		rc, _ := nc.(*net.TCPConn).SyscallConn()
		rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
		return n == 0
	})
	sum := srv.Shutdown()
	if sum.DroppedIncomplete != 1 || sum.CutAtDrain != 1 || sum.Ledger.Received != 3 || sum.Ledger.Delivered != 2 || !sum.Ledger.Closed() {
		t.Fatalf("incomplete %d, cut at drain %d, ledger %+v", sum.DroppedIncomplete, sum.CutAtDrain, sum.Ledger)
	}
}

// trickleConn writes each write a byte at a time, every 20 ms, once slow
// is set: a TLS record that comes in bytes and is never finished in time.
type trickleConn struct {
	net.Conn
	slow bool
}

func (c *trickleConn) Write(p []byte) (int, error) {
	if !c.slow {
		return c.Conn.Write(p)
	}
	for i := range p {
		if _, err := c.Conn.Write(p[i : i+1]); err != nil {
			return i, err
		}
		time.Sleep(20 * time.Millisecond) // the client's pace, not a wait for the server
	}
	return len(p), nil
}

// Bytes of a TLS record that never completes are no data: a TLS client
// holding a partial line is closed at --line-timeout though it trickles
// record bytes, as a plain client that sends nothing is.
func TestTLSTrickleDoesNotPutOffTheLineTimeout(t *testing.T) {
	srv, _, dial := startTLSServer(t, func(c *Config) { c.LineTimeout = 200 * time.Millisecond })
	defer srv.Shutdown()
	var tc *trickleConn
	c := dial(func(nc net.Conn) net.Conn { tc = &trickleConn{Conn: nc}; return tc })
	if _, err := c.Write([]byte(`{"half":"a li`)); err != nil {
		t.Fatal(err)
	}
	tc.slow = true
	start := time.Now()
	c.Write(bytes.Repeat([]byte("x"), 200)) // about 240 record bytes over 5 s, unless cut
	waitUntil(t, "the line timeout", func() bool { return srv.Stats().LineTimeouts == 1 })
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("closed after %s of trickling; the line timeout is 200ms", d)
	}
}

// A drain asks its clients to leave: each gets a FIN (a TLS one no
// close_notify, which a client peeking at its socket would take for data)
// at the start of the drain rather than a reset at its deadline. A shipper that watches its connection sees the end of
// stream at once, and what it sends until it closes is still read and
// delivered: nothing it wrote is cut.
func TestDrainAsksClientsToLeave(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		name := "plain"
		if tlsOn {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			edit := func(c *Config) { c.DrainTimeout = 20 * time.Second }
			var srv *Server
			var sink *linetest.Sink
			var c net.Conn
			if tlsOn {
				var dial func(func(net.Conn) net.Conn) *tls.Conn
				srv, sink, dial = startTLSServer(t, edit)
				c = dial(nil)
			} else {
				srv, sink = startServer(t, edit)
				var err error
				if c, err = net.Dial("tcp", srv.Addr().String()); err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			c.Write(linetest.AppendLine(nil, 1, 0))
			waitUntil(t, "the first line delivered", func() bool { return sink.Lines() == 1 })
			done := make(chan Summary, 1)
			go func() { done <- srv.Shutdown() }()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
				t.Fatalf("the client read %d bytes, %v: want the end of stream at the drain's start", n, err)
			}
			c.Write(linetest.AppendLine(nil, 1, 1)) // what it had in hand, sent before it closes
			c.Close()
			sum := <-done
			if sink.Lines() != 2 || sum.Ledger.Received != 2 || sum.Ledger.Delivered != 2 || !sum.Clean {
				t.Fatalf("sink %d lines; ledger %+v", sink.Lines(), sum.Ledger)
			}
		})
	}
}
