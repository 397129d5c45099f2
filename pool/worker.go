package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jonboulle/clockwork"
	"github.com/segmentio/ksuid"

	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/upstream"
)

// worker is one upstream connection slot with a home target.
type worker struct {
	p        *Pool
	home     *upstream.Target
	log      *slog.Logger
	bo       backoff.BackOff
	lanes    Lanes // where batches come from (Config.Lanes)
	laneBuf  [2]int
	batches  []*framer.Batch // reused for every pop
	retiring sync.WaitGroup  // connections being retired after a failback
}

// run is the worker's life: connect, serve, and on failure connect again
// elsewhere, until the queue is idle or ctx is done.
func (w *worker) run(ctx context.Context) {
	defer w.retiring.Wait()
	eb := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(w.p.cfg.BackoffInitial),
		backoff.WithMaxInterval(w.p.cfg.BackoffMax),
		backoff.WithMaxElapsedTime(0), // retry forever; shutdown stops it
	)
	w.bo = backoff.WithContext(eb, ctx)
	var prev *upstream.Target
	for {
		c, watch := w.connect(ctx, prev)
		if c == nil {
			return
		}
		failed, progress := w.serve(ctx, c, watch)
		if failed == nil {
			return
		}
		prev = failed
		if progress {
			w.bo.Reset()
		} else if !w.wait(ctx) { // a target that accepts and then fails at once
			return
		}
	}
}

// wait sleeps for the next backoff interval. It returns false when the
// worker should stop instead.
func (w *worker) wait(ctx context.Context) bool {
	d := w.bo.NextBackOff()
	if d == backoff.Stop {
		return false
	}
	t := w.p.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		return true
	case <-ctx.Done():
	case <-w.p.queue.Idle():
	}
	return false
}

// connect dials targets in failover order (see upstream.Set.FailoverOrder)
// until one answers, waiting a backoff interval after each round in which
// none did. It returns nil when the worker should stop; else the
// connection and the set's Watch channel taken before the order was
// chosen, so that serve sees a change that came since (a home enabled
// while the worker dialled elsewhere) and goes back at once.
func (w *worker) connect(ctx context.Context, prev *upstream.Target) (*upConn, <-chan struct{}) {
	for {
		if w.home.Removed() {
			return nil, nil
		}
		watch := w.p.set.Watch()
		for _, t := range w.order(prev) {
			if ctx.Err() != nil || isClosed(w.p.queue.Idle()) {
				return nil, nil
			}
			reason := "home"
			if t != w.home {
				reason = "failover"
			}
			id := ksuid.New() // the connection's, or the failed attempt's
			started := time.Now()
			c, err := w.p.dialConn(ctx, t, reason, id, w.log)
			if err != nil {
				w.p.st.dialFailures.Add(1)
				if ctx.Err() == nil && t.DialFailed(err, started) {
					w.log.Warn("target down: dial failed", "conn", id.String(), "target", t.Addr, "err", err)
				}
				w.log.Debug("dial failed", "conn", id.String(), "target", t.Addr, "err", err)
				continue
			}
			w.opened(c)
			return c, watch
		}
		prev = nil
		if !w.wait(ctx) {
			return nil, nil
		}
	}
}

// order is the targets to dial, in order: the home alone for a pinned
// worker (while it takes work), else the failover order.
func (w *worker) order(prev *upstream.Target) []*upstream.Target {
	if !w.lanes.Pinned {
		return w.p.set.FailoverOrder(w.home, prev)
	}
	if w.home.Accepts() {
		return []*upstream.Target{w.home}
	}
	return nil
}

// opened records a new connection.
func (w *worker) opened(c *upConn) {
	t := c.target
	if t.MarkUp() {
		c.log.Info("target up")
	}
	t.ConnOpened()
	if t != w.home {
		w.p.st.failovers.Add(1)
		c.log.Info("failed over", "home", w.home.Addr)
	} else {
		c.log.Debug("connected")
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// failbackResult is the outcome of a dial to the home target.
type failbackResult struct {
	c   *upConn
	id  ksuid.KSUID
	err error
}

// serve writes batches on c until it fails, the queue is idle, or ctx is
// done; watch is the set's Watch channel from before c was chosen. It returns the target whose connection failed (nil when the worker
// should stop) and whether any batch was acknowledged.
func (w *worker) serve(ctx context.Context, c *upConn, watch <-chan struct{}) (failed *upstream.Target, progress bool) {
	q, cfg := w.p.queue, w.p.cfg
	ack := time.NewTimer(cfg.AckInterval)
	ack.Stop()
	var fb clockwork.Timer
	var fbC <-chan time.Time
	armFailback := func() {
		if c.target != w.home && cfg.Failback > 0 && w.home.Accepts() {
			fb = w.p.clock.NewTimer(cfg.Failback)
			fbC = fb.Chan()
		} else {
			fbC = nil
		}
	}
	armFailback()
	fbDone := make(chan failbackResult, 1)
	fbPending := false
	startFailback := func() {
		fbC, fbPending = nil, true
		go func() {
			id := ksuid.New()
			nc, err := w.p.dialConn(ctx, w.home, "failback", id, w.log)
			fbDone <- failbackResult{nc, id, err}
		}()
	}
	stopWrites := interruptWrites(ctx, c)
	defer func() {
		ack.Stop()
		if fb != nil {
			fb.Stop()
		}
		if fbPending { // do not leak a connection dialled for a failback
			if r := <-fbDone; r.c != nil {
				r.c.close()
			}
		}
		stopWrites()
	}()
	settle := func() {
		progress = c.settle(q) > 0 || progress
		if len(c.unacked) > 0 {
			// Sampled again after AckInterval without a write: while
			// writes come faster, each one samples, and the timer
			// never wakes the worker.
			ack.Reset(cfg.AckInterval)
		}
	}
	// write writes the popped batches on c. leave is true when serve
	// must return, with failed as its result.
	write := func() (leave bool, failed *upstream.Target) {
		err := c.write(ctx, w.batches, cfg.WriteTimeout)
		w.p.st.writes.Add(1)
		w.p.st.batchesWritten.Add(uint64(len(w.batches)))
		clear(w.batches)
		if err != nil && ctx.Err() != nil {
			// Cut by the shutdown deadline, not a target failure.
			c.settleWithin(q, cfg.AckInterval, hardStopAckGrace)
			w.p.st.requeuedLines.Add(uint64(c.requeue(q)))
			w.closed(c)
			return true, nil
		}
		if err != nil {
			w.fail(c, err)
			return true, c.target
		}
		settle()
		return false, nil
	}
	// review acts on the targets' states: it is called at the start, on
	// every change of the set (changed), and after a failback, so that a
	// change that came between a dial and the watch is not missed. leave
	// is true when serve must return, with failed as its result.
	review := func(changed bool) (leave bool, failed *upstream.Target) {
		switch {
		case w.home.Removed():
			// The home left the configuration: other targets have
			// workers of their own.
			c.log.Info("leaving: home target removed", "home", w.home.Addr)
			w.retire(ctx, c)
			return true, nil
		case !c.target.Accepts():
			// Draining, disabled or failing its checks: no new
			// batches; the written ones finish in retire.
			c.log.Info("leaving target", "state", c.target.State().String())
			w.retire(ctx, c)
			progress = true // connect elsewhere at once
			return true, c.target
		case changed && c.target != w.home && w.home.Accepts() && !fbPending:
			// The home accepts again (enabled, or its checks pass):
			// go back now.
			if fb != nil {
				fb.Stop()
			}
			startFailback()
		}
		return false, nil
	}
	if leave, failed := review(false); leave {
		return failed, progress
	}
	shared, keyed := q.LaneReady(w.lanes.Shared), (<-chan struct{})(nil)
	if w.lanes.Keyed != 0 {
		keyed = q.LaneReady(w.lanes.Keyed)
	}
	for {
		select {
		case <-watch:
			watch = w.p.set.Watch()
			if leave, failed := review(true); leave {
				return failed, progress
			}
		case <-ctx.Done():
			// What was acknowledged since the last sample is delivered;
			// a target's delayed acknowledgement gets a moment to come.
			c.settleWithin(q, cfg.AckInterval, hardStopAckGrace)
			w.p.st.requeuedLines.Add(uint64(c.requeue(q)))
			w.closed(c)
			return nil, progress
		case <-q.Idle():
			w.closed(c)
			return nil, progress
		case <-c.dead:
			w.fail(c, c.readErr)
			return c.target, progress
		case <-shared:
			if !w.pop(w.lanes.Shared, w.lanes.Keyed) {
				continue
			}
			if leave, failed := write(); leave {
				return failed, progress
			}
		case <-keyed:
			if !w.pop(w.lanes.Keyed, w.lanes.Shared) {
				continue
			}
			if leave, failed := write(); leave {
				return failed, progress
			}
		case <-ack.C:
			settle()
		case <-fbC:
			startFailback()
		case r := <-fbDone:
			fbPending = false
			if r.err != nil {
				w.log.Debug("failback dial failed", "conn", r.id.String(), "target", w.home.Addr, "err", r.err)
				armFailback()
				continue
			}
			w.p.st.failbacks.Add(1)
			r.c.log.Info("failed back", "from", c.target.Addr)
			w.retire(ctx, c)
			stopWrites()
			c = r.c
			w.opened(c)
			stopWrites = interruptWrites(ctx, c)
			armFailback()
			if leave, failed := review(false); leave {
				return failed, progress
			}
		}
	}
}

// pop takes batches into w.batches from lane first, then from lane then
// (a keyed lane of 0 is none), within one write's limits, and reports
// whether it took any. first is the lane whose Ready signal the worker
// took.
func (w *worker) pop(first, then int) bool {
	lanes := append(w.laneBuf[:0], first)
	if w.lanes.Keyed != 0 {
		lanes = append(lanes, then)
	}
	cfg := w.p.cfg
	w.batches = w.p.queue.TryPopLanes(w.batches[:0], lanes, cfg.MaxWriteCount, cfg.MaxWriteBytes)
	return len(w.batches) > 0
}

// hardStopAckGrace is how long a worker stopped by the shutdown deadline
// waits for acknowledgements (a receiver may delay its ACK up to 200 ms)
// before it counts what is left as undelivered.
const hardStopAckGrace = 250 * time.Millisecond

// interruptWrites makes a write blocked on c fail once ctx is done, so a hard
// stop is not held up by a target that stopped reading.
func interruptWrites(ctx context.Context, c *upConn) (stop func() bool) {
	return context.AfterFunc(ctx, func() { _ = c.conn.SetWriteDeadline(time.Unix(1, 0)) })
}

// fail handles a connection that broke: its unacknowledged batches go back
// to the queue and its target is marked down.
func (w *worker) fail(c *upConn, err error) {
	// The socket's count of unacknowledged bytes survives a reset (the
	// kernel keeps snd_una), so what the target acknowledged before it
	// failed is delivered, not sent again.
	c.settle(w.p.queue)
	lines := c.requeue(w.p.queue)
	w.p.st.requeuedLines.Add(uint64(lines))
	w.p.st.connFailures.Add(1)
	w.closed(c)
	level := slog.LevelWarn
	if isExpected(err) {
		level = slog.LevelInfo
	}
	if ut := w.p.cfg.UserTimeout; ut > 0 && errors.Is(err, syscall.ETIMEDOUT) {
		// The kernel's TCP_USER_TIMEOUT: say what it means.
		err = fmt.Errorf("%w (the target acknowledged nothing, or kept its receive window shut, for the TCP user timeout, %s)", err, ut)
	}
	c.log.Log(context.Background(), level, "upstream connection failed", "err", err, "requeued_lines", lines)
	if lines > 0 {
		w.p.tel.retried(c.target, lines, err)
	}
	if c.target.MarkDown(err) {
		c.log.Warn("target down: connection failed", "err", err)
	}
}

func (w *worker) closed(c *upConn) {
	if c.abandoned() {
		w.p.st.resets.Add(1)
		c.log.Debug("closing with a reset: bytes written were not acknowledged",
			"unacknowledged_bytes", c.written-c.acked)
	}
	c.close()
	c.target.ConnClosed()
}

// retire lets a connection the worker has left finish: its batches get until
// the write timeout to be acknowledged, and what is left is requeued.
func (w *worker) retire(ctx context.Context, c *upConn) {
	w.retiring.Go(func() {
		q := w.p.queue
		tick := time.NewTicker(w.p.cfg.AckInterval)
		defer tick.Stop()
		limit := time.NewTimer(w.p.cfg.WriteTimeout)
		defer limit.Stop()
	wait:
		for len(c.unacked) > 0 {
			select {
			case <-tick.C:
				c.settle(q)
			case <-c.dead:
				break wait
			case <-limit.C:
				break wait
			case <-ctx.Done():
				break wait
			}
		}
		c.settle(q)
		w.p.st.requeuedLines.Add(uint64(c.requeue(q)))
		w.closed(c)
	})
}
