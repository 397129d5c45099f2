package pool

import (
	"cmp"
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/ksuid"
	"golang.org/x/sys/unix"

	"github.com/ndlb/ndlb/upstream"
)

// Every upstream connection of the default dialer has TCP_USER_TIMEOUT and
// keepalive set, so a black-holed target is found in seconds.
func TestUpstreamSocketOptions(t *testing.T) {
	cfg := testConfig()
	cfg.UserTimeout = 7 * time.Second
	cfg.KeepAlive = 11 * time.Second
	w := newWorld(t, 1, cfg)
	c, err := w.p.dialConn(context.Background(), &upstream.Target{Addr: w.sinks[0].Addr()}, "home", ksuid.New(), w.p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	var ut, ka, idle int
	var serr error
	err = c.raw.Control(func(fd uintptr) {
		if ut, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT); serr != nil {
			return
		}
		if ka, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE); serr != nil {
			return
		}
		idle, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
	})
	if err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	if ut != 7000 || ka != 1 || idle != 11 {
		t.Fatalf("TCP_USER_TIMEOUT %d ms, SO_KEEPALIVE %d, TCP_KEEPIDLE %d s; want 7000, 1, 11", ut, ka, idle)
	}
}

// A write the hard stop cuts inside a batch leaves a fragment at the
// target. When the target then reads on and acknowledges every byte that
// was written, before the worker gives up waiting, the connection must
// still end with a reset: a clean end after the fragment would tear a line.
func TestHardStopCutInsideABatchResetsEvenWhenAcknowledged(t *testing.T) {
	cfg := testConfig()
	cfg.Connections = 1
	// A small send buffer: the write blocks inside a batch early, while
	// the paused sink's kernel holds far less than what is queued.
	cfg.Dialer = &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 16<<10) })
		return cmp.Or(err, serr)
	}}
	w := newWorld(t, 1, cfg)
	w.sinks[0].Pause()
	w.start()
	w.push(1, 0, 20000, 1000)
	waitFor(t, func() bool { return w.set.Targets()[0].Stats().Conns == 1 })
	w.waitStalled(20)
	w.cancel()
	w.sinks[0].Resume() // within the acknowledgement grace: what was written is acknowledged
	<-w.done
	delivered, dropped := w.q.Stats().LinesOut, w.q.Discard()
	if !w.sinks[0].WaitDrained(10 * time.Second) {
		t.Fatal("the sink did not finish")
	}
	r := w.ledger.Check(map[uint32]uint32{1: 20000})
	t.Logf("delivered %d, dropped %d; %s", delivered, dropped, r)
	if delivered+dropped != 20000 || r.Received != delivered || r.Duplicated != 0 || r.Torn != 0 {
		t.Fatalf("delivered %d + dropped %d; the target got %d: every acknowledged line and no other", delivered, dropped, r.Received)
	}
	if w.sinks[0].TornEOF() != 0 || w.p.Stats().Resets != 1 {
		t.Fatalf("torn EOFs %d, resets %d: the connection must end with a reset", w.sinks[0].TornEOF(), w.p.Stats().Resets)
	}
}
