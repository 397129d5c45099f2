package pool

import (
	"cmp"
	"context"
	"errors"
	"math"
	"net"
	"strings"
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
	cfg.Dialer = smallSendBuffer()
	w := newWorld(t, 1, cfg)
	w.sinks[0].Pause()
	// Every batch queued before the worker starts: its first write takes
	// them all, far more than the socket buffers hold, so it blocks
	// inside a batch. Batches pushed while it writes could let a short
	// first write end exactly where the buffers fill, at a batch's end,
	// and then nothing would be cut (seen on a loaded machine).
	w.push(1, 0, 20000, 1000)
	w.start()
	waitFor(t, func() bool { return w.set.Targets()[0].Stats().Conns == 1 })
	w.waitStalled(20)
	w.cancel()
	w.sinks[0].Resume() // within the acknowledgement grace: what was written is acknowledged
	<-w.done
	delivered, dropped := w.q.Stats().LinesOut, w.q.Discard()
	w.checkHardStop(delivered, dropped, 20000)
}

// A target that stops reading fails its connection at the write timeout:
// the failure is counted, the unacknowledged batches go to the other
// target, and once the stalled one reads again nothing is missing. (Its
// state is not asserted: it still accepts connections, so a redial may mark
// it up again at once.) Small send buffers make the stalled connection's
// write block after its first few batches, however the two workers share
// the queue.
func TestWriteTimeoutFailsOver(t *testing.T) {
	cfg := testConfig()
	cfg.Connections = 1
	cfg.WriteTimeout = 200 * time.Millisecond
	cfg.Dialer = smallSendBuffer()
	w, _ := stallFirstTarget(t, cfg)
	waitFor(t, func() bool { return w.p.Stats().ConnFailures > 0 })
	w.sinks[0].Resume()
	w.finish()
	if r := w.ledger.Check(map[uint32]uint32{1: stalledLines}); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// A target that reads slowly but steadily is not a stalled one: a write
// far larger than it takes in one write timeout goes on while it makes
// progress, and the connection does not fail. (The write timeout bounds a
// period without progress; see upConn.write.)
func TestSlowTargetIsNotFailed(t *testing.T) {
	cfg := testConfig()
	cfg.Connections = 1
	cfg.WriteTimeout = 200 * time.Millisecond
	cfg.Dialer = smallSendBuffer()
	w := newWorld(t, 1, cfg)
	// 1 MiB/s, after a burst of 1 MiB: the receiver opens its window a
	// segment (64 KiB on loopback) at a time, several per write timeout.
	w.sinks[0].Throttle(1 << 20)
	const lines = 16000 // about 2.2 MB: writes of the most a write takes (MaxWriteBytes), each longer than the timeout
	w.push(1, 0, lines, 1000)
	w.start()
	w.finish()
	if st := w.p.Stats(); st.ConnFailures != 0 || st.Writes == 0 {
		t.Fatalf("a slow target's connection failed %d times (writes %d)", st.ConnFailures, st.Writes)
	}
	if r := w.ledger.Check(map[uint32]uint32{1: lines}); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
}

// Linux applies TCP_USER_TIMEOUT to a receive window kept shut: a target
// that stops reading fails within it, before the write timeout, and the
// error says what the timeout means. Nothing is lost.
func TestShutWindowMeetsTheUserTimeout(t *testing.T) {
	cfg := testConfig()
	cfg.Connections = 1
	cfg.WriteTimeout = time.Minute
	cfg.UserTimeout = 300 * time.Millisecond
	small := smallSendBuffer()
	withTimeout := userTimeoutControl(cfg.UserTimeout)
	cfg.Dialer = &net.Dialer{Control: func(network, address string, rc syscall.RawConn) error {
		return cmp.Or(small.Control(network, address, rc), withTimeout(network, address, rc))
	}}
	w, stalled := stallFirstTarget(t, cfg)
	waitFor(t, func() bool { return stalled.LastErr() != nil }) // within 10 s, far less than the write timeout
	// The writer sees the reset as a broken pipe, or the user timeout
	// itself, which the log then explains.
	if err := stalled.LastErr(); errors.Is(err, syscall.ETIMEDOUT) && !strings.Contains(err.Error(), "receive window shut") {
		t.Fatalf("the stalled target failed with %v, want the user timeout explained", err)
	}
	t.Logf("the stalled target failed with %v", stalled.LastErr())
	w.sinks[0].Resume()
	w.finish()
	if r := w.ledger.Check(map[uint32]uint32{1: stalledLines}); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// stalledLines is what stallFirstTarget pushes: far more than two socket
// buffers hold.
const stalledLines = 20000

// stallFirstTarget starts a pool of cfg over two sinks, waits for a
// connection to each, pauses the first sink's reads and pushes
// stalledLines lines of client 1. The second sink is paused too until
// the queue stops draining, both workers blocked in writes: otherwise its
// worker could take nearly every batch while the first took a few, which
// its socket buffers hold, and the first would never block (seen on a
// loaded machine).
func stallFirstTarget(t *testing.T, cfg Config) (*world, *upstream.Target) {
	t.Helper()
	w := newWorld(t, 2, cfg)
	stalled := w.set.Targets()[0]
	w.start()
	waitFor(t, func() bool { return stalled.Active() == 1 && w.set.Targets()[1].Active() == 1 })
	w.sinks[0].Pause()
	w.sinks[1].Pause()
	w.push(1, 0, stalledLines, 200)
	w.waitStalled(math.MaxInt)
	w.sinks[1].Resume()
	return w, stalled
}

// smallSendBuffer is a dialer whose connections have a 16 KiB send buffer.
func smallSendBuffer() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 16<<10) })
		return cmp.Or(err, serr)
	}}
}

// A write that stopped where a batch begins or ends left the target no
// fragment: the connection need not end with a reset for it. One that
// stopped inside a batch did.
func TestAtBoundary(t *testing.T) {
	c := &upConn{unacked: []pending{{end: 100}, {end: 250}, {end: 400}}}
	for written, want := range map[int64]bool{0: true, 50: false, 100: true, 200: false, 250: true, 399: false, 400: true} {
		c.written = written
		if got := c.atBoundary(0, 3); got != want {
			t.Errorf("written %d: atBoundary %v, want %v", written, got, want)
		}
	}
	c.written = 100 // the end of a batch written by an earlier write
	if c.atBoundary(150, 1) {
		t.Error("an earlier write's batch end counted as this write's boundary")
	}
}
