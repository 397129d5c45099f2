package ndjson

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/internal/linetest"
	"github.com/ndlb/ndlb/internal/mono"
	"github.com/ndlb/ndlb/spool"
)

// startSpoolServer starts a server to sink with a spool in dir (1 MiB
// segments), a 4 MiB queue, quick dial retries and deliver as its
// DeliverTimeout.
func startSpoolServer(t *testing.T, sink *linetest.Sink, dir string, deliver time.Duration) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Targets = []string{sink.Addr()}
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.Queue.MaxBytes = 4 << 20
	cfg.Pool.BackoffInitial, cfg.Pool.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	cfg.DrainTimeout, cfg.DeliverTimeout = 5*time.Second, deliver
	sc := spool.DefaultConfig(dir)
	sc.SegmentBytes = 1 << 20
	cfg.Spool = &sc
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(newLocalListener(t))
	return srv
}

// With a spool, every target down: clients send far more than the queue's
// buffer and are not slowed (it all goes to disk); when the target comes,
// every line is delivered once, whole. A restart on the same spool after a
// shutdown that could not deliver replays what was left.
func TestSpoolTargetsDown(t *testing.T) {
	ledger := linetest.NewLedger()
	sink := linetest.StartSink(t, ledger)
	sink.Kill(false) // down: nothing listens on its address
	dir := t.TempDir()
	newServer := func(deliver time.Duration) *Server { return startSpoolServer(t, sink, dir, deliver) }
	srv := newServer(200 * time.Millisecond)
	const clients, perClient = 4, 40000 // about 20 MiB, 5 times the queue
	sent := map[uint32]uint32{}
	for c := range uint32(clients) {
		sent[c+1] = perClient
	}
	start := time.Now()
	if err := linetest.SendClients(srv.Addr().String(), clients, 0, perClient, 64<<10); err != nil {
		t.Fatal(err)
	}
	t.Logf("clients sent %d lines to a dead target in %s", clients*perClient, time.Since(start).Round(time.Millisecond))
	// Shutdown cannot deliver: what is left stays in the spool, and the
	// ledger counts nothing as dropped.
	sum := srv.Shutdown()
	if sum.DroppedShutdown != 0 || sum.Ledger.DroppedTotal() != 0 || sum.Ledger.Received != clients*perClient || sum.Spool.Records == 0 {
		t.Fatalf("summary %+v", sum)
	}
	// The target comes back; a new server on the same spool delivers it all.
	if err := sink.Restart(); err != nil {
		t.Fatal(err)
	}
	book := dispatch.NewBook() // as a reload keeps the two instances' ledgers
	book.Add("logs", srv.ledger)
	srv = newServer(30 * time.Second)
	book.Add("logs", srv.ledger)
	sum = srv.Shutdown()
	if !sum.Clean || sum.Spool.Records != 0 || sum.Spool.Replayed == 0 {
		t.Fatalf("summary after the restart %+v", sum)
	}
	sink.WaitDrained(10 * time.Second)
	if r := ledger.Check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	// Over the process, the listener received what clients sent, once;
	// nothing is left in the spool, and nothing came from an earlier
	// process: what the first instance left, the second replayed.
	if l := book.Net("logs"); l.Received != clients*perClient || l.Delivered != clients*perClient ||
		l.Spooled != 0 || l.Replayed != 0 || !l.Closed() {
		t.Fatalf("the listener's ledger over both instances %+v", l)
	}
}

// A client waiting for room in a full spool (every target down) does not
// hold the shutdown past its deadline, and the ledger closes: lines
// spooled, the rest read and dropped at the deadline.
func TestSpoolFullShutdown(t *testing.T) {
	sink := linetest.StartSink(t, nil)
	sink.Kill(false)
	cfg := DefaultConfig()
	cfg.Targets = []string{sink.Addr()}
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.Queue.MaxBytes = 4 << 20
	cfg.DrainTimeout, cfg.DeliverTimeout = 200*time.Millisecond, 200*time.Millisecond
	sc := spool.DefaultConfig(t.TempDir())
	sc.MaxBytes, sc.SegmentBytes = 1<<20, 256<<10
	cfg.Spool = &sc
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(newLocalListener(t))
	conn, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go linetest.Send(conn, 1, 0, 100000, 64<<10) // about 13 MiB: it fills the spool and waits
	waitFor(t, func() bool { return srv.Stats().Spool.Bytes > 512<<10 }, "the spool fills")
	done := make(chan Summary, 1)
	go func() { done <- srv.Shutdown() }()
	select {
	case sum := <-done:
		if !sum.Ledger.Closed() || sum.Ledger.Spooled == 0 || sum.Ledger.InFlight != 0 {
			t.Fatalf("ledger %+v", sum.Ledger)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown hangs on a client waiting for room in a full spool")
	}
}

// With the target up, spooled batches go to the queue from memory while
// the feeder has caught up, and are read back from the disk while it has
// not (the target paused, the queue full): both happen, every line
// arrives once and whole, the ledger closes and the spool ends empty.
func TestSpoolHandOffAndReadBack(t *testing.T) {
	ledger := linetest.NewLedger()
	sink := linetest.StartSink(t, ledger)
	cfg := DefaultConfig()
	cfg.Targets = []string{sink.Addr()}
	cfg.Logger = slog.New(slog.DiscardHandler)
	cfg.Queue.MaxBytes = 4 << 20
	cfg.DrainTimeout, cfg.DeliverTimeout = 10*time.Second, 30*time.Second
	sc := spool.DefaultConfig(t.TempDir())
	sc.SegmentBytes = 1 << 20
	cfg.Spool = &sc
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(newLocalListener(t))
	const clients, perClient = 4, 30000
	sent := map[uint32]uint32{}
	send := func(from, to uint32) {
		if err := linetest.SendClients(srv.Addr().String(), clients, from, to, 16<<10); err != nil {
			t.Fatal(err)
		}
	}
	for c := range uint32(clients) {
		sent[c+1] = perClient
	}
	send(0, perClient/3) // the target keeps up
	waitFor(t, func() bool { return srv.Stats().Spool.HandedOff > 0 }, "a batch handed off")
	sink.Pause() // the queue fills; the spool holds the rest
	send(perClient/3, 2*perClient/3)
	sink.Resume()
	send(2*perClient/3, perClient)
	sum := srv.Shutdown()
	st := sum.Spool
	if !sum.Clean || !sum.Ledger.Closed() || st.Records != 0 || st.HandedOff == 0 || st.HandedOff == st.Appends {
		t.Fatalf("summary %+v", sum)
	}
	t.Logf("%d of %d batches handed off, the rest read back", st.HandedOff, st.Appends)
	sink.WaitDrained(10 * time.Second)
	if r := ledger.Check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
}

// A spooled segment damaged on disk while ndlb runs (every target down): the
// feeder skips the records it cannot read back and goes on, the lines
// after the damage and those sent later are delivered, and the lines lost
// are counted (spool_lost), so the ledger closes against the sink.
func TestSpoolDamagedWhileRunning(t *testing.T) {
	ledger := linetest.NewLedger()
	sink := linetest.StartSink(t, ledger)
	sink.Kill(false)
	dir := t.TempDir()
	srv := startSpoolServer(t, sink, dir, 30*time.Second)
	const clients, perClient = 4, 60000 // about 30 MiB: 30 segments
	if err := linetest.SendClients(srv.Addr().String(), clients, 0, perClient, 64<<10); err != nil {
		t.Fatal(err)
	}
	segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil || len(segs) < 4 {
		t.Fatalf("segments %v, %v", segs, err)
	}
	slices.Sort(segs)
	// A sealed segment the feeder has not reached: a byte in its middle.
	f, err := os.OpenFile(segs[len(segs)-2], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{0xfe}, 512<<10)
	f.Close()
	if err := sink.Restart(); err != nil {
		t.Fatal(err)
	}
	// Lines sent after the damage are delivered too.
	if err := linetest.SendClients(srv.Addr().String(), 1, perClient, perClient+1000, 64<<10); err != nil {
		t.Fatal(err)
	}
	const total = clients*perClient + 1000
	deadline := time.Now().Add(20 * time.Second)
	for sink.Lines()+srv.Stats().Ledger.Dropped[dispatch.DropSpoolLost] < total {
		if time.Now().After(deadline) {
			t.Fatalf("%d delivered, %d lost, of %d", sink.Lines(), srv.Stats().Ledger.Dropped[dispatch.DropSpoolLost], total)
		}
		time.Sleep(10 * time.Millisecond)
	}
	sum := srv.Shutdown()
	lost := sum.Ledger.Dropped[dispatch.DropSpoolLost]
	if !sum.Ledger.Closed() || sum.Ledger.Received != total || lost == 0 || sum.Ledger.Delivered+lost != total {
		t.Fatalf("ledger %+v", sum.Ledger)
	}
	sent := map[uint32]uint32{1: perClient + 1000, 2: perClient, 3: perClient, 4: perClient}
	sink.WaitDrained(10 * time.Second)
	if r := ledger.Check(sent); r.Lost != lost || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatalf("%v; %d counted lost", r, lost)
	}
}

// Spool files removed while ndlb runs (rm -rf of the directory, say) are
// not reported as kept for the next start at shutdown: their lines are
// counted dropped, and the ledger closes with nothing spooled.
func TestSpoolRemovedBeforeShutdown(t *testing.T) {
	ledger := linetest.NewLedger()
	sink := linetest.StartSink(t, ledger)
	sink.Kill(false) // down: everything waits in the spool
	dir := t.TempDir()
	srv := startSpoolServer(t, sink, dir, 200*time.Millisecond)
	const clients, perClient = 2, 20000
	if err := linetest.SendClients(srv.Addr().String(), clients, 0, perClient, 64<<10); err != nil {
		t.Fatal(err)
	}
	const total = clients * perClient
	waitUntil(t, "every line read", func() bool { return srv.Stats().Ledger.Received == total })
	segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil || len(segs) < 2 {
		t.Fatalf("segments %v, %v", segs, err)
	}
	for _, p := range segs {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	sum := srv.Shutdown()
	l := sum.Ledger
	dropped := l.Dropped[dispatch.DropSpoolLost] + l.Dropped[dispatch.DropShutdown]
	if !l.Closed() || l.Received != total || l.Spooled != 0 || l.Delivered != 0 || dropped != total || l.Dropped[dispatch.DropSpoolLost] == 0 {
		t.Fatalf("ledger %+v", l)
	}
	if sum.Clean {
		t.Fatal("a shutdown that lost lines is reported clean")
	}
	sp, err := spool.Open(spool.DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	if st := sp.Stats(); st.Records != 0 {
		t.Fatalf("the next start finds %d records", st.Records)
	}
}

// startFullDiskServer starts a spooled server on a 1 MiB tmpfs (skipping
// the test without root) whose only target, sink, is down; the tmpfs is
// unmounted when the test ends.
func startFullDiskServer(t *testing.T) (*Server, *linetest.Sink, *linetest.Ledger) {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a small tmpfs (%v): needs root", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	ledger := linetest.NewLedger()
	sink := linetest.StartSink(t, ledger)
	sink.Kill(false)
	return startSpoolServer(t, sink, dir, 10*time.Second), sink, ledger
}

// A disk that fills below --spool-max-bytes: appends fail, the lines go
// to the queue in memory (counted, the spool shown failing, which takes
// the listener out of /readyz's count) and are delivered once a target
// comes; a later append that works clears the failing state.
func TestSpoolDiskFull(t *testing.T) {
	srv, sink, ledger := startFullDiskServer(t)
	const perClient = 10000
	if err := linetest.SendClients(srv.Addr().String(), 2, 0, perClient, 64<<10); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "every line read", func() bool { return srv.Stats().Ledger.Received == 2*perClient })
	if st := srv.Stats(); st.SpoolErrors == 0 || !st.SpoolFailing || st.SpoolLastError == "" {
		t.Fatalf("a full disk: %d failed appends, failing %v, last error %q", st.SpoolErrors, st.SpoolFailing, st.SpoolLastError)
	}
	if err := sink.Restart(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the lines delivered", func() bool { return sink.Lines() == 2*perClient })
	if err := linetest.SendClients(srv.Addr().String(), 1, perClient, perClient+100, 64<<10); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the last lines delivered", func() bool { return sink.Lines() == 2*perClient+100 })
	// The failing state ends by itself once no append failed for a
	// while (10 s; shortened here).
	srv.failingFor.Store(int64(time.Millisecond))
	waitUntil(t, "the spool no longer shown failing", func() bool { return !srv.Stats().SpoolFailing })
	sum := srv.Shutdown()
	if l := sum.Ledger; !l.Closed() || l.Delivered != 2*perClient+100 || l.DroppedTotal() != 0 {
		t.Fatalf("ledger %+v", l)
	}
	sink.WaitDrained(10 * time.Second)
	if r := ledger.Check(map[uint32]uint32{1: perClient + 100, 2: perClient}); r.Lost != 0 || r.Torn != 0 {
		t.Fatalf("%v", r)
	}
}

// A full disk while every target is down and clients send more than the
// queue in memory holds: the clients are held back, and the spool counts
// as failing for as long as they are, not only for 10 s after the last
// failed append (none comes while they wait): /readyz stays 503.
func TestSpoolDiskFullHoldsClientsBack(t *testing.T) {
	srv, sink, ledger := startFullDiskServer(t)
	srv.failingFor.Store(int64(time.Millisecond)) // a failure alone ages out at once
	const perClient = 60000                       // 2 × about 8 MiB: more than the disk and the queue hold
	sent := make(chan error, 1)
	go func() { sent <- linetest.SendClients(srv.Addr().String(), 2, 0, perClient, 64<<10) }()
	waitUntil(t, "a client held back, past the failure's 1 ms", func() bool {
		return srv.Stats().SpoolHeldBack > 0 && mono.Now()-srv.spoolFailedAt.Load() > int64(10*time.Millisecond)
	})
	if st := srv.Stats(); !st.SpoolFailing || st.SpoolErrors == 0 {
		t.Fatalf("clients held back by a full disk, yet the spool is not failing: %+v", st)
	}
	if err := sink.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the lines delivered", func() bool { return sink.Lines() == 2*perClient })
	waitUntil(t, "no client held back", func() bool { st := srv.Stats(); return st.SpoolHeldBack == 0 && !st.SpoolFailing })
	if sum := srv.Shutdown(); !sum.Ledger.Closed() || sum.Ledger.Delivered != 2*perClient {
		t.Fatalf("ledger %+v", sum.Ledger)
	}
	sink.WaitDrained(10 * time.Second)
	if r := ledger.Check(map[uint32]uint32{1: perClient, 2: perClient}); r.Lost != 0 || r.Torn != 0 {
		t.Fatalf("%v", r)
	}
}

// A second listener on a spool directory another one holds (two processes
// on one volume, say) waits for it, and counts the lines it queues
// meanwhile without the spool's protection; once the directory is free it
// spools again.
func TestSpoolHeldElsewhereCountsUnspooledLines(t *testing.T) {
	ledger := linetest.NewLedger()
	sink := linetest.StartSink(t, ledger)
	dir := t.TempDir()
	holder, err := spool.Open(spool.DefaultConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Targets = []string{sink.Addr()}
	cfg.Logger = slog.New(slog.DiscardHandler)
	sc := spool.DefaultConfig(dir)
	cfg.Spool = &sc
	srv, err := New(cfg)
	if err != nil {
		holder.Close()
		t.Fatal(err)
	}
	srv.Start(newLocalListener(t))
	if err := linetest.SendClients(srv.Addr().String(), 1, 0, 1000, 8<<10); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the lines delivered", func() bool { return sink.Lines() == 1000 })
	if st := srv.Stats(); st.SpoolOpen || st.Unspooled != 1000 {
		t.Fatalf("spool open %v, %d lines unspooled; want 1000", st.SpoolOpen, st.Unspooled)
	}
	holder.Close()
	waitUntil(t, "the spool opened", func() bool { return srv.Stats().SpoolOpen })
	if err := linetest.SendClients(srv.Addr().String(), 1, 1000, 2000, 8<<10); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the lines delivered", func() bool { return sink.Lines() == 2000 })
	sum := srv.Shutdown()
	if sum.Unspooled != 1000 || sum.Spool.Appends == 0 || !sum.Ledger.Closed() {
		t.Fatalf("summary %+v", sum)
	}
}

// A server that could not open its spool yet (another instance held it,
// as during a reload) queues in memory; a client held back once that
// queue is full (every target down) goes on to the spool as soon as it
// opens: it is not held until the targets return.
func TestHeldBackClientMovesToTheSpoolWhenItOpens(t *testing.T) {
	ledger := linetest.NewLedger()
	sink := linetest.StartSink(t, ledger)
	sink.Kill(false)
	dir := t.TempDir()
	first := startSpoolServer(t, sink, dir, 100*time.Millisecond) // holds the spool
	second := startSpoolServer(t, sink, dir, 100*time.Millisecond)
	const perClient = 200000 // about 26 MiB: more than the 4 MiB queue and the sockets hold
	sent := make(chan error, 1)
	go func() { sent <- linetest.SendClients(second.Addr().String(), 1, 0, perClient, 64<<10) }()
	waitUntil(t, "the client held back by the queue in memory", func() bool {
		return second.Stats().Queue.Bytes > 3<<20
	})
	first.Shutdown() // lets the spool go
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the client is still held back after the spool opened")
	}
	if err := sink.Restart(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "every line delivered", func() bool { return sink.Lines() == perClient })
	sum := second.Shutdown()
	if !sum.Clean || sum.Ledger.Received != perClient || !sum.Ledger.Closed() {
		t.Fatalf("clean %v, ledger %+v", sum.Clean, sum.Ledger)
	}
	if r := ledger.Check(map[uint32]uint32{1: perClient}); r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// The clients of a spool listener that a reload took out of service are
// not asked to leave as its drain starts (TestDrainAsksClientsToLeave):
// they keep its spool's protection, which its replacement takes only
// once its drain ends; they are read until they close or the deadline.
func TestRetiredSpoolListenerKeepsItsClients(t *testing.T) {
	sink, err := linetest.NewSink("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sink.Close)
	srv := startSpoolServer(t, sink, t.TempDir(), time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv.Retire(ctx, func() *Server { return nil })
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(linetest.AppendLine(nil, 1, 0))
	waitUntil(t, "the first line delivered", func() bool { return sink.Lines() == 1 })
	done := make(chan Summary, 1)
	go func() { done <- srv.Shutdown() }()
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the client read %v: a retired spool listener asked it to leave", err)
	}
	c.Write(linetest.AppendLine(nil, 1, 1))
	c.Close()
	if sum := <-done; sink.Lines() != 2 || sum.Ledger.Delivered != 2 {
		t.Fatalf("sink %d lines; ledger %+v", sink.Lines(), sum.Ledger)
	}
}
