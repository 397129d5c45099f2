package ndjson

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/internal/linetest"
	"github.com/ndlb/ndlb/invalid"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newLocalListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// A server starts, frames clients into the queue, delivers, drops an
// oversize line with a count, and stops without leaking goroutines.
func TestServeAndShutdown(t *testing.T) {
	ledger := linetest.NewLedger()
	sink, err := linetest.NewSink("127.0.0.1:0", ledger)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	cfg := DefaultConfig()
	cfg.Targets = []string{sink.Addr()}
	cfg.Framer.MaxLineBytes = 1000
	cfg.Logger = slog.New(slog.DiscardHandler)
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(newLocalListener(t))
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := linetest.AppendLine(nil, 1, 0)
	b = append(b, strings.Repeat("z", 5000)+"\n"...)
	b = linetest.AppendLine(b, 1, 1)
	c.Write(b)
	c.Close()
	sum := srv.Shutdown()
	if !sum.Clean || sum.DroppedOversize != 1 || sum.Queue.LinesOut != 2 {
		t.Fatalf("summary %+v", sum)
	}
	sink.WaitDrained(5 * time.Second)
	if r := ledger.Check(map[uint32]uint32{1: 2}); r.Lost != 0 || r.Received != 2 {
		t.Fatal(r)
	}
	if srv.Targets()[0].Lines != 2 {
		t.Fatalf("target stats %+v", srv.Targets())
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name  string
		mod   func(*Config)
		field string // what the error names, through the nested configs
	}{
		{name: "no targets", mod: func(c *Config) { c.Targets = nil }, field: "Targets"},
		{name: "zero drain", mod: func(c *Config) { c.DrainTimeout = 0 }, field: "DrainTimeout"},
		{name: "zero deliver", mod: func(c *Config) { c.DeliverTimeout = 0 }, field: "DeliverTimeout"},
		{name: "negative line timeout", mod: func(c *Config) { c.LineTimeout = -1 }, field: "LineTimeout"},
		{name: "client memory below two lines", mod: func(c *Config) { c.ClientMemory = 1 << 20 }, field: "ClientMemory"},
		{name: "bad framer", mod: func(c *Config) { c.Framer.ReadBytes = 0 }, field: "Framer.ReadBytes"},
		{name: "buffer smaller than a line", mod: func(c *Config) { c.Queue.MaxBytes = 1024 }, field: "Queue.MaxBytes"},
		{name: "bad pool", mod: func(c *Config) { c.Pool.Connections = 0 }, field: "Pool.Connections"},
		{name: "bad listener", mod: func(c *Config) { c.Listener.MaxConns = -1 }, field: "Listener.MaxConns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Targets = []string{"127.0.0.1:1"}
			tt.mod(&c)
			var ie *invalid.Error
			if err := c.Validate(); !errors.Is(err, ErrConfig) || !errors.As(err, &ie) || ie.Field != tt.field {
				t.Fatalf("Validate() = %v, want an error about %s", err, tt.field)
			}
			if _, err := New(c); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
	c := DefaultConfig()
	if err := c.Validate(); !errors.Is(err, ErrConfig) {
		t.Fatalf("no targets: %v", err)
	}
}

// startServer runs a server with one sink and returns it with the sink.
func startServer(t *testing.T, edit func(*Config)) (*Server, *linetest.Sink) {
	t.Helper()
	sink, err := linetest.NewSink("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	cfg := DefaultConfig()
	cfg.Targets = []string{sink.Addr()}
	cfg.Logger = slog.New(slog.DiscardHandler)
	if edit != nil {
		edit(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(newLocalListener(t))
	return srv, sink
}

// sendAndClose sends lines 0..n-1 of client 1 to addr on one connection
// and closes it.
func sendAndClose(t *testing.T, addr string, n uint32) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var b []byte
	for i := range n {
		b = linetest.AppendLine(b, 1, i)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// waitUntil polls cond for up to 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in 10 s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// Plain TCP clients are read through the idle reader: once a client is
// between lines and quiet, it holds nothing of the client memory budget;
// one that stops inside a line holds only that line, in a buffer of its
// size. Through a plain net.Conn read, each would hold a read buffer.
func TestIdleClientsHoldNoBuffer(t *testing.T) {
	srv, sink := startServer(t, nil)
	var conns []net.Conn
	for i := range 50 {
		c, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
		c.Write(linetest.AppendLine(nil, uint32(i), 0))
	}
	waitUntil(t, "50 lines delivered", func() bool { return sink.Lines() == 50 })
	waitUntil(t, "no memory held by idle clients", func() bool { return srv.Stats().ClientMemory.Used == 0 })
	for _, c := range conns[:10] {
		c.Write([]byte("a partial line of forty bytes, no end.."))
	}
	// Ten clients inside a line hold ten 512-byte buffers, not read buffers.
	waitUntil(t, "ten small partial lines", func() bool { return srv.Stats().ClientMemory.Used == 10*512 })
	for _, c := range conns {
		c.Close()
	}
	sum := srv.Shutdown()
	if sum.Ledger.Received != 60 || sum.Ledger.Delivered != 60 || !sum.Ledger.Closed() {
		t.Fatalf("ledger %+v", sum.Ledger)
	}
}

// A client that holds part of a line and sends nothing past the line
// timeout is closed; its fragment is counted as incomplete, and a client
// that keeps sending whole lines is not touched.
func TestLineTimeoutClosesQuietPartialLine(t *testing.T) {
	srv, sink := startServer(t, func(c *Config) { c.LineTimeout = 200 * time.Millisecond })
	quiet, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	busy, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	quiet.Write([]byte("half a li"))
	quiet.SetReadDeadline(time.Now().Add(10 * time.Second))
	closed := make(chan error, 1)
	go func() { _, err := quiet.Read(make([]byte, 1)); closed <- err }()
	sent := uint32(0)
	for done := false; !done; {
		select {
		case err := <-closed:
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("the quiet client was not closed")
			}
			done = true
		default:
			busy.Write(linetest.AppendLine(nil, 1, sent))
			sent++
			time.Sleep(20 * time.Millisecond)
		}
	}
	busy.Close()
	waitUntil(t, "busy client's lines", func() bool { return sink.Lines() == uint64(sent) })
	sum := srv.Shutdown()
	if sum.LineTimeouts != 1 || sum.DroppedIncomplete != 1 || sum.Ledger.Delivered != uint64(sent) {
		t.Fatalf("line timeouts %d, incomplete %d, ledger %+v (busy sent %d)", sum.LineTimeouts, sum.DroppedIncomplete, sum.Ledger, sent)
	}
}

// DeliverTimeout counts from the end of the drain: with every client gone
// at once and the only target dead, Shutdown gives up after DeliverTimeout,
// not after DrainTimeout + DeliverTimeout, and counts what it dropped.
func TestDeliverTimeoutCountsAfterTheDrain(t *testing.T) {
	dead := newLocalListener(t)
	addr := dead.Addr().String()
	dead.Close() // refuses from now on
	srv, _ := startServer(t, func(c *Config) {
		c.Targets = []string{addr}
		c.DrainTimeout, c.DeliverTimeout = time.Hour, 50*time.Millisecond
	})
	sendAndClose(t, srv.Addr().String(), 10)
	waitUntil(t, "lines read", func() bool { return srv.Stats().Ledger.Received == 10 })
	done := make(chan Summary, 1)
	go func() { done <- srv.Shutdown() }()
	select {
	case sum := <-done:
		if sum.Clean || sum.DroppedShutdown != 10 || !sum.Ledger.Closed() {
			t.Fatalf("summary %+v", sum)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown waited for the drain timeout although no client was left")
	}
}

// With ClientRate, a client sending flat out is read no faster than the
// rate (it waits in TCP), and none of its lines is dropped.
func TestClientRate(t *testing.T) {
	const rate = 64 << 10 // bytes per second
	srv, sink := startServer(t, func(c *Config) {
		c.ClientRate = rate
		c.Framer.ReadBytes = 4 << 10
		c.DrainTimeout = 200 * time.Millisecond // what the kernel holds is not all read at the rate
	})
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	sent := make(chan uint32, 1)
	go func() { // 4 MiB: a minute at the rate
		n, _ := linetest.Send(c, 1, 0, 40000, 4<<10)
		sent <- uint32(n)
	}()
	time.Sleep(300 * time.Millisecond)
	read := srv.Stats().Queue.LinesIn
	elapsed := time.Since(start)
	// What the rate allows in that time, plus the burst of one batch.
	allowed := float64(rate)*elapsed.Seconds() + float64(srv.cfg.Framer.MaxBatchBytes()) + rate
	if got := float64(read) * 105; got > allowed { // a line is about 105 bytes
		t.Fatalf("read %d lines (~%.0f bytes) in %s; the rate allows %.0f", read, got, elapsed, allowed)
	}
	c.Close() // the rest is never read: the client sees its connection end
	<-sent
	sum := srv.Shutdown()
	if sum.DroppedShutdown+sum.DroppedIncomplete > 1 || !sum.Ledger.Closed() { // at most the line cut by the close
		t.Fatalf("summary %+v", sum)
	}
	// Delivered is acknowledged by the sink's kernel; the sink reads it.
	waitUntil(t, "the sink has every delivered line", func() bool { return sink.Lines() == sum.Ledger.Delivered })
}

// Lines that hold a NUL byte are binary (msgpack, GELF's NUL-delimited
// frames, a TLS handshake sent to a plain port): each is dropped and
// counted as binary, and the lines of text around them, in the same
// batches, go on whole.
func TestBinaryLinesAreDropped(t *testing.T) {
	ledger := linetest.NewLedger()
	sink := linetest.StartSink(t, ledger)
	cfg := DefaultConfig()
	cfg.Targets = []string{sink.Addr()}
	cfg.Logger = slog.New(slog.DiscardHandler)
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(newLocalListener(t))
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var b []byte
	binary := 0
	for i := range uint32(300) {
		b = linetest.AppendLine(b, 1, i)
		switch i % 3 {
		case 0: // msgpack: a map with a string, then a newline byte inside a value
			b = append(b, "\x82\xa3log\xa5hello\xa4time\xce\x00\x00\x01\x02\n"...)
			binary++
		case 1: // GELF over TCP: NUL-terminated JSON, then a newline
			b = append(b, `{"version":"1.1","short_message":"x"}`+"\x00\n"...)
			binary++
		}
	}
	b = append(b, "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 a TLS client hello\n"...)
	binary++
	b = linetest.AppendLine(b, 1, 300)
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	c.Close()
	sum := srv.Shutdown()
	if !sum.Clean || sum.DroppedBinary != uint64(binary) || sum.Ledger.Dropped[dispatch.DropBinary] != uint64(binary) ||
		sum.Ledger.Received != uint64(301+binary) || !sum.Ledger.Closed() {
		t.Fatalf("summary %+v, want %d binary lines dropped", sum, binary)
	}
	sink.WaitDrained(5 * time.Second)
	if r := ledger.Check(map[uint32]uint32{1: 301}); r.Lost != 0 || r.Received != 301 || r.Unexpected != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}
