package ndjson

import (
	"bytes"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/internal/linetest"
	"github.com/ndlb/ndlb/listener"
)

func startUDPServer(t *testing.T, ledger *linetest.Ledger, edit func(*Config)) (*Server, *linetest.Sink, net.Addr) {
	t.Helper()
	sink, err := linetest.NewSink("127.0.0.1:0", ledger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	cfg := DefaultConfig()
	cfg.Targets, cfg.UDP = []string{sink.Addr()}, true
	cfg.Logger = slog.New(slog.DiscardHandler)
	if edit != nil {
		edit(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(listener.NewPacket(c, nil))
	return srv, sink, srv.Addr()
}

// Datagrams of one or more lines, with or without the final newline, from
// 20 client addresses arrive whole; an oversize line and a binary datagram
// are dropped and counted; the ledger closes against what the sink got.
func TestUDPLines(t *testing.T) {
	ledger := linetest.NewLedger()
	srv, sink, addr := startUDPServer(t, ledger, func(c *Config) { c.Framer.MaxLineBytes = 2000 })
	sent := map[uint32]uint32{}
	const clients, perClient = 20, 300
	for i := range uint32(clients) {
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, byte(10+i))}, addr.(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		for s := uint32(0); s < perClient; s += 3 {
			// Three lines per datagram; the last lacks its newline
			// every other time.
			b := linetest.AppendLine(nil, i+1, s)
			b = linetest.AppendLine(b, i+1, s+1)
			b = linetest.AppendLine(b, i+1, s+2)
			if s%2 == 0 {
				b = b[:len(b)-1]
			}
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
			sent[i+1] = s + 3
			if s%30 == 0 { // lockstep now and then: the socket buffer never overflows
				waitUntil(t, "lines read", func() bool { return srv.Stats().Ledger.Received >= uint64(i*perClient+s+3) })
			}
		}
		waitUntil(t, "client's lines read", func() bool { return srv.Stats().Ledger.Received == uint64((i+1)*perClient) })
		c.Close()
	}
	c, err := net.DialUDP("udp", nil, addr.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(append(bytes.Repeat([]byte("z"), 3000), '\n'))      // oversize
	c.Write([]byte("\x1f\x8b\x08\x00 compressed GELF\x00\x01")) // binary
	c.Write(nil)                                                // empty: no line
	waitUntil(t, "drops counted", func() bool { return srv.Stats().Datagrams == clients*perClient/3+3 })
	sum := srv.Shutdown()
	sink.WaitDrained(5 * time.Second)
	l := sum.Ledger
	if !sum.Clean || !l.Closed() || l.Delivered != clients*perClient || l.Dropped[dispatch.DropOversize] != 1 ||
		l.Dropped[dispatch.DropBinary] != 1 || sum.DroppedBinary != 1 || sum.Overflows != 0 {
		t.Fatalf("summary %+v", sum)
	}
	if r := ledger.Check(sent); r.Lost != 0 || r.Torn != 0 || r.Received != clients*perClient {
		t.Fatal(r)
	}
}

// Handover gives the socket to a successor that reads the next datagrams;
// at shutdown, what the kernel holds is read before the socket closes.
func TestUDPHandoverAndFinalRead(t *testing.T) {
	ledger := linetest.NewLedger()
	old, sink, addr := startUDPServer(t, ledger, nil)
	c, err := net.DialUDP("udp", nil, addr.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(linetest.AppendLine(nil, 1, 0))
	waitUntil(t, "first line", func() bool { return old.Stats().Ledger.Received == 1 })
	ln := old.Handover()
	if ln == nil {
		t.Fatal("nothing handed over")
	}
	cfg := DefaultConfig()
	cfg.Targets, cfg.UDP, cfg.Logger = []string{sink.Addr()}, true, slog.New(slog.DiscardHandler)
	next, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	next.Start(ln)
	if sum := old.Shutdown(); !sum.Clean || sum.Ledger.Delivered != 1 {
		t.Fatalf("old summary %+v", sum)
	}
	for s := uint32(1); s <= 50; s++ {
		c.Write(linetest.AppendLine(nil, 1, s))
	}
	sum := next.Shutdown() // at once: the final read takes what the kernel holds
	sink.WaitDrained(5 * time.Second)
	if !sum.Clean || sum.Ledger.Delivered != 50 {
		t.Fatalf("new summary %+v", sum)
	}
	if r := ledger.Check(map[uint32]uint32{1: 51}); r.Lost != 0 || r.Received != 51 {
		t.Fatal(r)
	}
}

// fullUDPQueue starts a UDP server whose only target is down, and sends
// it 1000-byte lines from c until its 1 MiB queue is full (the reader then
// waits for room).
func fullUDPQueue(t *testing.T) (srv *Server, c *net.UDPConn, line []byte) {
	t.Helper()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	cfg := DefaultConfig()
	cfg.Targets, cfg.UDP, cfg.Logger = []string{deadAddr}, true, slog.New(slog.DiscardHandler)
	cfg.Queue.MaxBytes, cfg.Framer.MaxLineBytes, cfg.Framer.ReadBytes = 1<<20, 4<<10, 16<<10
	cfg.DrainTimeout, cfg.DeliverTimeout = 100*time.Millisecond, 100*time.Millisecond
	srv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(listener.NewPacket(pc, nil))
	c, err = net.DialUDP("udp", nil, srv.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	line = append(bytes.Repeat([]byte("q"), 1000), '\n')
	// Up to 3 MB against a 1 MiB queue, in step with the reader (the
	// kernel drops what its socket buffer cannot hold) until the queue
	// is full.
	for i := range 3000 {
		c.Write(line)
		if srv.Stats().Queue.Bytes > 900<<10 {
			break
		}
		for deadline := time.Now().Add(5 * time.Second); i%32 == 31 && srv.Stats().Datagrams+64 < uint64(i+1) && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
	}
	waitUntil(t, "a full queue", func() bool { return srv.Stats().Queue.Bytes > 900<<10 })
	return srv, c, line
}

// A reload's handover returns at once while the reader waits for room in a
// full queue (every target down); the waiting batch is counted at the old
// server's shutdown deadline, and the ledger closes.
func TestUDPHandoverWhileQueueFull(t *testing.T) {
	old, _, _ := fullUDPQueue(t)
	handed := make(chan net.Listener)
	go func() { handed <- old.Handover() }()
	select {
	case ln := <-handed:
		if ln == nil {
			t.Fatal("nothing handed over")
		}
		defer ln.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("handover waits for the full queue")
	}
	sum := old.Shutdown()
	if l := sum.Ledger; !l.Closed() || l.Received != sum.Datagrams || l.Dropped[dispatch.DropShutdown] == 0 {
		t.Fatalf("summary %+v", sum)
	}
}

// Datagrams the kernel drops while the reader is held up (queue full,
// target down) are counted at once, not only when a datagram read after
// them carries the count (SO_RXQ_OVFL): Stats asks the socket (SO_MEMINFO).
func TestUDPKernelDropsCountedWithoutALaterDatagram(t *testing.T) {
	srv, c, line := fullUDPQueue(t)
	for range 4000 { // far more than the socket's buffer holds: the reader is held up
		c.Write(line)
	}
	waitUntil(t, "the kernel's drops counted", func() bool { return srv.Stats().Overflows > 0 })
	if sum := srv.Shutdown(); sum.Overflows == 0 {
		t.Fatalf("summary %+v", sum)
	}
}

// The socket's drop count goes on across a reload's handover (the kernel
// keeps one per socket): the replacement counts only the drops after it,
// so the two servers' counts, which the metrics add up, never count one
// drop twice.
func TestUDPKernelDropsNotCountedTwiceAcrossAHandover(t *testing.T) {
	old, c, line := fullUDPQueue(t)
	for range 4000 {
		c.Write(line)
	}
	waitUntil(t, "the kernel's drops counted", func() bool { return old.Stats().Overflows > 0 })
	ln := old.Handover()
	if ln == nil {
		t.Fatal("nothing handed over")
	}
	next, err := New(old.cfg)
	if err != nil {
		t.Fatal(err)
	}
	next.Start(ln)
	if n := next.Stats().Overflows; n != 0 {
		t.Fatalf("the replacement counts %d drops before it took the socket (the old server counted %d)", n, old.Stats().Overflows)
	}
	a := old.Shutdown()
	next.Shutdown()
	if a.Overflows == 0 {
		t.Fatalf("old summary %+v", a)
	}
}
