package pool

import (
	"bytes"
	"context"
	"errors"
	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"io"
	"log/slog"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/internal/linetest"
	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/upstream"
)

// spans and metrics record what the pool reports through the OpenTelemetry
// API, installed before any test so that the global providers delegate to
// them.
var (
	spans   = tracetest.NewSpanRecorder()
	metrics = sdkmetric.NewManualReader()
)

func TestMain(m *testing.M) {
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans)))
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(metrics)))
	goleak.VerifyTestMain(m)
}

var bufs = framer.NewPool()

// world is a queue, a pool and sinks on loopback.
type world struct {
	t      *testing.T
	q      *dispatch.Queue
	p      *Pool
	set    *upstream.Set
	sinks  []*linetest.Sink
	ledger *linetest.Ledger
	cancel context.CancelFunc
	done   chan struct{}
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.Connections = 2
	cfg.BackoffInitial, cfg.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

func newWorld(t *testing.T, nSinks int, cfg Config) *world {
	t.Helper()
	return newWorldWith(t, nSinks, cfg, func(l *linetest.Ledger) (*linetest.Sink, error) {
		return linetest.NewSink("127.0.0.1:0", l)
	})
}

// newWorldWith is newWorld with sinks made by newSink (TLS ones, say).
func newWorldWith(t *testing.T, nSinks int, cfg Config, newSink func(*linetest.Ledger) (*linetest.Sink, error)) *world {
	t.Helper()
	w := &world{t: t, ledger: linetest.NewLedger(), done: make(chan struct{})}
	var addrs []string
	for range nSinks {
		s, err := newSink(w.ledger)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		w.sinks = append(w.sinks, s)
		addrs = append(addrs, s.Addr())
	}
	w.q = dispatch.New(dispatch.Config{MaxBytes: 8 << 20})
	w.set = upstream.NewSet(addrs)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	w.p = New(cfg, w.q, w.set)
	return w
}

func (w *world) start() {
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() { defer close(w.done); w.p.Run(ctx) }()
	w.t.Cleanup(func() { cancel(); <-w.done })
}

// resetMidStream sends 30 000 lines, draining and resetting the first sink
// after 10 000, and returns what the sinks got.
func (w *world) resetMidStream() linetest.Report {
	w.start()
	waitFor(w.t, func() bool { // every worker connected: the reset cuts live connections
		n := int64(w.p.cfg.Connections)
		return w.set.Targets()[0].Stats().Conns == n && w.set.Targets()[1].Stats().Conns == n
	})
	w.push(1, 0, 10000, 20)
	w.sinks[0].Kill(true)
	// The killed target's workers move to the other before the rest comes.
	waitFor(w.t, func() bool { return w.p.Stats().Failovers >= uint64(w.p.cfg.Connections) })
	w.push(1, 10000, 30000, 20)
	w.finish()
	return w.ledger.Check(map[uint32]uint32{1: 30000})
}

// push sends lines [from, to) of client c as batches of per lines.
func (w *world) push(c, from, to, per uint32) {
	var data []byte
	for s := from; s < to; s += per {
		data = data[:0]
		n := min(per, to-s)
		for i := range n {
			data = linetest.AppendLine(data, c, s+i)
		}
		if err := w.q.Push(context.Background(), bufs.NewBatch(data, int(n))); err != nil {
			w.t.Fatal(err)
		}
	}
}

// finish closes the queue's input and waits for every batch to be delivered.
func (w *world) finish() {
	w.t.Helper()
	w.q.CloseInput()
	select {
	case <-w.done:
	case <-time.After(20 * time.Second):
		w.t.Fatalf("pool did not finish; queue %+v", w.q.Stats())
	}
	for _, s := range w.sinks {
		if !s.WaitDrained(10 * time.Second) {
			w.t.Fatalf("sink %s still has connections", s.Addr())
		}
	}
}

// With the queue deep, a worker writes many batches in one vectored write;
// every line still arrives once and in order within its batch.
func TestDeepQueueCoalescesWrites(t *testing.T) {
	cfg := testConfig()
	cfg.Connections = 1
	w := newWorld(t, 1, cfg)
	w.push(1, 0, 20000, 20) // 1000 batches queued before any worker runs
	w.start()
	w.finish()
	if r := w.ledger.Check(map[uint32]uint32{1: 20000}); r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
	st := w.p.Stats()
	t.Logf("%d batches in %d writes", st.BatchesWritten, st.Writes)
	if st.BatchesWritten != 1000 || st.Writes*10 > st.BatchesWritten {
		t.Fatalf("%d batches in %d writes: want 1000 batches, at least 10 per write", st.BatchesWritten, st.Writes)
	}
}

func TestDeliversEverythingOnce(t *testing.T) {
	w := newWorld(t, 2, testConfig())
	w.start()
	waitFor(t, func() bool { // every worker connected, so both targets take part
		return w.set.Targets()[0].Stats().Conns == 2 && w.set.Targets()[1].Stats().Conns == 2
	})
	w.push(1, 0, 20000, 50)
	w.finish()
	r := w.ledger.Check(map[uint32]uint32{1: 20000})
	if r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
	// Which workers take a short burst is up to the scheduler (one may
	// coalesce most of it): the spread over targets is tested end to end,
	// with longer traffic (integration.TestSpreadsEveryLineOnce).
	if st := w.q.Stats(); st.LinesOut != 20000 || st.Bytes != 0 {
		t.Fatalf("queue stats %+v", st)
	}
	// Everything acknowledged: every connection ends with a FIN, none
	// with a reset.
	for _, s := range w.sinks {
		if n := s.Resets(); n != 0 {
			t.Fatalf("sink %s saw %d resets at a clean finish", s.Addr(), n)
		}
	}
	if st := w.p.Stats(); st.Resets != 0 || st.Failovers != 0 || st.Failbacks != 0 || st.ConnFailures != 0 {
		t.Fatalf("with every target up throughout: %+v", st)
	}
}

// A target is reset mid-stream after draining what its kernel acknowledged:
// its unacknowledged batches are requeued and nothing is lost.
func TestFailoverOnReset(t *testing.T) {
	cfg := testConfig()
	logs := &recorder{mu: &sync.Mutex{}, recs: new([]record)}
	cfg.Logger = slog.New(logs)
	w := newWorld(t, 2, cfg)
	if r := w.resetMidStream(); r.Lost != 0 || r.Torn != 0 {
		t.Fatalf("%s; queue %+v; sink lines %d %d partials %d %d", r, w.q.Stats(), w.sinks[0].Lines(), w.sinks[1].Lines(), w.sinks[0].Partials(), w.sinks[1].Partials())
	}
	if st := w.p.Stats(); st.Failovers == 0 || st.ConnFailures == 0 {
		t.Fatalf("pool stats %+v: no failover recorded", st)
	}
	if w.set.Targets()[0].Up() {
		t.Fatal("killed target still marked up")
	}
	// Every line about a target's state names the connection and the
	// worker, as the README promises.
	seen := 0
	for _, r := range logs.records() {
		if !strings.HasPrefix(r.msg, "target ") && r.msg != "failed over" {
			continue
		}
		seen++
		if r.attrs["conn"] == "" || r.attrs["worker"] == "" || r.attrs["target"] == "" {
			t.Errorf("%q lacks conn, worker or target: %v", r.msg, r.attrs)
		}
	}
	if seen == 0 {
		t.Fatal("no target state logged")
	}
}

// recorder is a slog.Handler that keeps each record's message and
// attributes (those of With included).
type recorder struct {
	mu    *sync.Mutex
	recs  *[]record
	attrs []slog.Attr
}

type record struct {
	msg   string
	attrs map[string]string
}

func (h *recorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *recorder) Handle(_ context.Context, r slog.Record) error {
	rec := record{msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool { rec.attrs[a.Key] = a.Value.String(); return true })
	h.mu.Lock()
	*h.recs = append(*h.recs, rec)
	h.mu.Unlock()
	return nil
}

func (h *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &recorder{mu: h.mu, recs: h.recs, attrs: append(slices.Clip(h.attrs), as...)}
}

func (h *recorder) WithGroup(string) slog.Handler { return h }

func (h *recorder) records() []record {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(*h.recs)
}

// A target that stops reading holds written batches unacknowledged; when it
// resets, only what sat unread in its own kernel is lost.
func TestUnacknowledgedRequeuedOnReset(t *testing.T) {
	cfg := testConfig()
	cfg.Connections = 1
	w := newWorld(t, 2, cfg)
	w.sinks[0].Pause()
	w.start()
	w.push(1, 0, 60000, 100) // ~8 MB: more than the paused socket pair can hold
	// Every batch taken by a worker, and some held for the paused target
	// because its kernel has not acknowledged them.
	waitFor(t, func() bool { st := w.q.Stats(); return st.Depth == 0 && st.Bytes > 0 })
	if st := w.q.Stats(); st.LinesOut == 60000 {
		t.Fatalf("everything counted delivered while a target was not reading: %+v", st)
	}
	killed := w.sinks[0].Kill(false)
	w.finish()
	r := w.ledger.Check(map[uint32]uint32{1: 60000})
	// Every lost line ended inside the unread data: at most its newlines,
	// plus the line the sink had begun to read when it paused.
	if r.Torn != 0 || r.Lost > uint64(bytes.Count(killed.Unread, []byte{'\n'}))+1 {
		t.Fatalf("%s; unread at reset %d bytes", r, killed.UnreadBytes)
	}
	t.Logf("%s; unread at reset: %d bytes", r, killed.UnreadBytes)
}

// With its home refusing, a worker fails over; after Failback (a fake
// five minutes) it returns home.
func TestFailbackWithFakeClock(t *testing.T) {
	clock := clockwork.NewFakeClock()
	cfg := testConfig()
	cfg.Connections = 1
	cfg.Clock = clock
	w := newWorld(t, 2, cfg)
	home := w.sinks[0]
	home.Kill(true) // refuses dials until restarted
	w.start()
	w.push(1, 0, 1000, 10)
	waitFor(t, func() bool { return w.p.Stats().Failovers > 0 && w.sinks[1].Lines() > 0 })
	if home.Lines() != 0 {
		t.Fatal("dead home received lines")
	}
	if err := home.Restart(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := clock.BlockUntilContext(ctx, 1); err != nil { // the failback timer
		t.Fatal(err)
	}
	clock.Advance(DefaultFailback)
	waitFor(t, func() bool { return w.p.Stats().Failbacks == 1 })
	// Both workers take from the queue; keep pushing until the home has
	// had some (on a loaded machine the other worker may take a burst).
	sent := uint32(1000)
	for ; home.Lines() == 0; sent += 100 {
		if sent >= 100000 {
			t.Fatal("the home target got nothing after the failback")
		}
		w.push(1, sent, sent+100, 10)
		runtime.Gosched()
	}
	w.finish()
	if r := w.ledger.Check(map[uint32]uint32{1: sent}); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// With --failback 0 a worker that failed over never returns home, however
// long it runs after the home is back.
func TestNoFailbackWhenOff(t *testing.T) {
	clock := clockwork.NewFakeClock()
	cfg := testConfig()
	cfg.Connections = 1
	cfg.Clock = clock
	cfg.Failback = 0
	w := newWorld(t, 2, cfg)
	home := w.sinks[0]
	home.Kill(true)
	w.start()
	w.push(1, 0, 1000, 10)
	waitFor(t, func() bool { return w.p.Stats().Failovers > 0 && w.sinks[1].Lines() > 0 })
	if err := home.Restart(); err != nil {
		t.Fatal(err)
	}
	// The worker that failed over stays where it is, an hour of fake time
	// later too.
	clock.Advance(time.Hour)
	w.push(1, 1000, 3000, 10)
	w.finish()
	if n := w.p.Stats().Failbacks; n != 0 {
		t.Fatalf("%d failbacks with failback off", n)
	}
	if r := w.ledger.Check(map[uint32]uint32{1: 3000}); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// With every target down, workers back off on the injected clock and deliver
// once a target returns.
func TestAllDownThenBack(t *testing.T) {
	clock := clockwork.NewFakeClock()
	cfg := testConfig()
	cfg.Connections = 1
	cfg.Clock = clock
	w := newWorld(t, 2, cfg)
	w.sinks[0].Kill(true)
	w.sinks[1].Kill(true)
	w.start()
	w.push(1, 0, 500, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := clock.BlockUntilContext(ctx, 2); err != nil { // both workers waiting
		t.Fatal(err)
	}
	if err := w.sinks[1].Restart(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(cfg.BackoffMax)
	w.finish()
	if r := w.ledger.Check(map[uint32]uint32{1: 500}); r.Lost != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
}

// Cancelling Run hands every unacknowledged batch back to the queue.
func TestHardStopRequeues(t *testing.T) {
	w := newWorld(t, 1, testConfig())
	w.sinks[0].Pause()
	w.start()
	w.push(1, 0, 20000, 100) // fits the budget, more than the sockets hold
	waitFor(t, func() bool { return w.q.Stats().Depth == 0 || w.set.Targets()[0].Stats().Conns == 2 })
	w.cancel()
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
	st := w.q.Stats()
	if dropped := w.q.Discard(); st.LinesOut+dropped != 20000 || dropped == 0 {
		t.Fatalf("delivered %d + discarded %d != 20000", st.LinesOut, dropped)
	}
}

// At a hard stop against a target that stopped reading, what its kernel
// acknowledged is delivered to the line (whole lines of a batch cut short
// included), the rest is left to discard, and the connections end with a
// reset: the target reads the acknowledged lines, then an error, never a
// fragment and a clean end.
func TestHardStopDeliversTheAcknowledgedLinesAndResets(t *testing.T) {
	cfg := testConfig()
	cfg.Connections, cfg.Logger = 1, nil // the default logger, too
	w := newWorld(t, 1, cfg)
	w.sinks[0].Pause()
	w.start()
	w.push(1, 0, 20000, 1000) // big batches: the acknowledgement stops inside one
	waitFor(t, func() bool { return w.set.Targets()[0].Stats().Conns == 1 })
	w.waitStalled(20)
	w.cancel()
	<-w.done
	delivered := w.q.Stats().LinesOut
	dropped := w.q.Discard()
	w.sinks[0].Resume()
	if delivered%1000 == 0 {
		t.Fatalf("%d lines delivered, a whole number of batches: the cut batch's acknowledged lines were not counted", delivered)
	}
	w.checkHardStop(delivered, dropped, 20000)
}

// waitStalled lets the kernels fill while a sink is paused: something was
// written (the depth is below 20 batches), then the depth stops moving for
// several samples in a row (one still sample may be a worker the machine
// did not schedule).
func (w *world) waitStalled(depth int) {
	prev, still := -1, 0
	waitFor(w.t, func() bool {
		time.Sleep(50 * time.Millisecond)
		now := w.q.Stats().Depth
		if now == prev && now < depth {
			still++
		} else {
			still = 0
		}
		prev = now
		return still >= 3
	})
}

// A dialer that refuses: every failure is counted, and the worker keeps trying.
type refusingDialer struct{ n chan struct{} }

func (d refusingDialer) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	select {
	case d.n <- struct{}{}:
	default:
	}
	return nil, errors.New("refused by test")
}

func TestDialFailuresCounted(t *testing.T) {
	cfg := testConfig()
	cfg.Connections = 1
	d := refusingDialer{n: make(chan struct{}, 1)}
	cfg.Dialer = d
	w := newWorld(t, 1, cfg)
	w.start()
	for range 3 {
		select {
		case <-d.n:
		case <-time.After(5 * time.Second):
			t.Fatal("no dial retries")
		}
	}
	w.cancel()
	<-w.done
	if st := w.p.Stats(); st.DialFailures < 3 {
		t.Fatalf("stats %+v", st)
	}
	if err := w.set.Targets()[0].LastErr(); err == nil {
		t.Fatal("no last error recorded")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{name: "no connections", mod: func(c *Config) { c.Connections = 0 }},
		{name: "negative failback", mod: func(c *Config) { c.Failback = -1 }},
		{name: "zero write timeout", mod: func(c *Config) { c.WriteTimeout = 0 }},
		{name: "backoff max below initial", mod: func(c *Config) { c.BackoffMax = time.Millisecond }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			if err := c.Validate(); !errors.Is(err, ErrConfig) {
				t.Fatalf("Validate() = %v", err)
			}
		})
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	// Each bound itself is valid; one step past it is not.
	edges := []struct {
		name      string
		ok, wrong func(*Config)
		field     string // what the error names
	}{
		{"connections 1", func(c *Config) { c.Connections = 1 }, func(c *Config) { c.Connections = 0 }, "Connections"},
		{"connections 1024", func(c *Config) { c.Connections = 1024 }, func(c *Config) { c.Connections = 1025 }, "Connections"},
		{"failback 0", func(c *Config) { c.Failback = 0 }, func(c *Config) { c.Failback = -1 }, "Failback"},
		{"connect timeout", func(c *Config) { c.ConnectTimeout = invalid.MinTimeout }, func(c *Config) { c.ConnectTimeout = invalid.MinTimeout - 1 }, "ConnectTimeout"},
		{"connect timeout, longest", func(c *Config) { c.ConnectTimeout = invalid.MaxTimeout }, func(c *Config) { c.ConnectTimeout = invalid.MaxTimeout + 1 }, "ConnectTimeout"},
		{"write timeout", func(c *Config) { c.WriteTimeout = invalid.MinTimeout }, func(c *Config) { c.WriteTimeout = invalid.MinTimeout - 1 }, "WriteTimeout"},
		{"user timeout 0", func(c *Config) { c.UserTimeout = 0 }, func(c *Config) { c.UserTimeout = -1 }, "UserTimeout"},
		{"user timeout, longest", func(c *Config) { c.UserTimeout = MaxUserTimeout }, func(c *Config) { c.UserTimeout = MaxUserTimeout + time.Millisecond }, "UserTimeout"},
		{"keepalive 0", func(c *Config) { c.KeepAlive = 0 }, func(c *Config) { c.KeepAlive = -1 }, "KeepAlive"},
		{"backoff initial", func(c *Config) { c.BackoffInitial = MinBackoff }, func(c *Config) { c.BackoffInitial = MinBackoff - 1 }, "BackoffInitial"},
		{"backoff max = initial", func(c *Config) { c.BackoffMax = c.BackoffInitial }, func(c *Config) { c.BackoffMax = c.BackoffInitial - 1 }, "BackoffInitial"},
		{"ack interval", func(c *Config) { c.AckInterval = 1 }, func(c *Config) { c.AckInterval = 0 }, "AckInterval"},
		{"write bytes", func(c *Config) { c.MaxWriteBytes = 1 }, func(c *Config) { c.MaxWriteBytes = 0 }, "MaxWriteBytes"},
		{"write count", func(c *Config) { c.MaxWriteCount = 1 }, func(c *Config) { c.MaxWriteCount = 0 }, "MaxWriteCount"},
	}
	for _, e := range edges {
		ok, wrong := DefaultConfig(), DefaultConfig()
		e.ok(&ok)
		e.wrong(&wrong)
		if err := ok.Validate(); err != nil {
			t.Errorf("%s: the bound is refused: %v", e.name, err)
		}
		var ie *invalid.Error
		if err := wrong.Validate(); !errors.Is(err, ErrConfig) || !errors.As(err, &ie) || ie.Field != e.field {
			t.Errorf("%s: past the bound: Validate() = %v, want an error about %s", e.name, err, e.field)
		}
	}
	d := DefaultConfig()
	if d.ConnectTimeout != 5*time.Second || d.WriteTimeout != 15*time.Second || d.UserTimeout != 10*time.Second ||
		d.KeepAlive != 15*time.Second || d.Failback != 5*time.Minute {
		t.Errorf("defaults differ from the documented ones: %+v", d)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

var _ io.Writer = (*countConn)(nil)

// A target that accepts and at once resets every connection (a receiver in a
// crash loop behind a live port): the workers back off instead of spinning,
// and every line reaches the healthy target except those the flapping
// target's kernel had already acknowledged, which no sender can recover.
func TestFlappingTargetBacksOff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var unread bytes.Buffer // what the flapping target's kernel held at each reset
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			unread.Write(linetest.ResetUnread(c.(*net.TCPConn)))
		}
	}()
	defer func() { ln.Close(); <-accepted }()

	cfg := testConfig()
	cfg.Connections = 1
	w := newWorld(t, 1, cfg)
	w.set = upstream.NewSet([]string{ln.Addr().String(), w.sinks[0].Addr()})
	w.p = New(cfg, w.q, w.set)
	w.start()
	start := time.Now()
	for i := range uint32(20) {
		w.push(1, i*500, (i+1)*500, 50)
		time.Sleep(10 * time.Millisecond) // traffic spread over ~200 ms
	}
	w.finish()
	elapsed := time.Since(start)
	ln.Close()
	<-accepted
	r := w.ledger.Check(map[uint32]uint32{1: 10000})
	acked := uint64(bytes.Count(unread.Bytes(), []byte{'\n'}))
	t.Logf("%s; the flapping target acknowledged %d lines it never read", r, acked)
	if r.Torn != 0 || r.Lost > acked {
		t.Fatal(r)
	}
	// With backoff starting at 10 ms and capped at 50 ms, the workers make a
	// few dials in this time; without it they would make thousands.
	dials := w.p.Stats().Dials
	t.Logf("%d dials in %s", dials, elapsed.Round(time.Millisecond))
	if limit := uint64(2 + 2*elapsed/(10*time.Millisecond)); dials > limit {
		t.Fatalf("%d dials in %s: the workers are not backing off (limit %d)", dials, elapsed, limit)
	}
}

// Draining a target mid-stream moves its workers elsewhere once their
// batches are acknowledged: nothing is lost or duplicated, and the drained
// target's connections close. Enabling it brings workers back.
func TestDrainMovesWorkersWithoutLoss(t *testing.T) {
	w := newWorld(t, 2, testConfig())
	w.start()
	a := w.set.Targets()[0]
	waitFor(t, func() bool { return a.Active() == 2 })
	w.push(1, 0, 10000, 20)
	a.Drain()
	waitFor(t, func() bool { return a.Active() == 0 })
	if !w.sinks[0].WaitDrained(10 * time.Second) { // it has read all it was sent
		t.Fatal("the drained target's connections stay open")
	}
	before := w.sinks[0].Lines()
	w.push(1, 10000, 20000, 20)
	waitFor(t, func() bool { return w.q.Stats().LinesOut == 20000 })
	if w.sinks[0].Lines() != before {
		t.Fatal("the drained target got batches after its workers left")
	}
	a.Enable()
	waitFor(t, func() bool { return a.Active() > 0 }) // failback to the home
	w.push(1, 20000, 30000, 20)
	w.finish()
	if r := w.ledger.Check(map[uint32]uint32{1: 30000}); r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// gatedDialer holds dials to one address, once armed, until released.
type gatedDialer struct {
	net.Dialer
	addr     string
	armed    atomic.Bool
	entered  chan struct{}
	released chan struct{}
}

func (d *gatedDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	if address == d.addr && d.armed.CompareAndSwap(true, false) {
		close(d.entered)
		select {
		case <-d.released:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return d.Dialer.DialContext(ctx, network, address)
}

// A home enabled again while its worker was still dialling elsewhere (the
// change came between the failover order and the new connection's watch)
// brings the worker back at once, not only after --failback (never, on
// this fake clock): what the rolling-restart test once caught.
func TestEnableDuringFailoverDialFailsBack(t *testing.T) {
	cfg := testConfig()
	cfg.Connections = 1
	cfg.Clock = clockwork.NewFakeClock()
	w := newWorld(t, 2, cfg)
	a, b := w.set.Targets()[0], w.set.Targets()[1]
	d := &gatedDialer{addr: b.Addr, entered: make(chan struct{}), released: make(chan struct{})}
	w.p.dial = d
	w.start()
	waitFor(t, func() bool { return a.Active() == 1 && b.Active() == 1 })
	d.armed.Store(true)
	a.Drain()
	select {
	case <-d.entered: // a's worker chose b and is dialling it
	case <-time.After(10 * time.Second):
		t.Fatal("the drained target's worker did not dial the other")
	}
	a.Enable()
	close(d.released)
	waitFor(t, func() bool { return w.p.Stats().Failovers == 1 && a.Active() == 1 })
	w.push(1, 0, 1000, 10)
	w.finish()
	if r := w.ledger.Check(map[uint32]uint32{1: 1000}); r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// Targets added to the set get workers; a removed target's workers leave
// after their batches are acknowledged, and it is pruned.
func TestMembershipChanges(t *testing.T) {
	w := newWorld(t, 2, testConfig())
	w.start()
	extra, err := linetest.NewSink("127.0.0.1:0", w.ledger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(extra.Close)
	w.sinks = append(w.sinks, extra)
	a := w.set.Targets()[0]
	// Every worker of a connected first: a removal must meet running
	// workers, not beat them to the start.
	waitFor(t, func() bool { return a.Active() == int64(w.p.cfg.Connections) })
	w.push(1, 0, 5000, 20)
	w.set.Update([]string{w.sinks[1].Addr(), extra.Addr()})
	c, _ := w.set.Lookup(extra.Addr())
	waitFor(t, func() bool { return c.Active() == 2 && a.Active() == 0 })
	if gone := w.set.Prune(); len(gone) != 1 || gone[0] != a {
		t.Fatalf("pruned %v", gone)
	}
	// The pool forgets the removed target once its workers left.
	waitFor(t, func() bool {
		w.p.mu.Lock()
		defer w.p.mu.Unlock()
		_, kept := w.p.staffed[a]
		return !kept
	})
	// Both remaining targets take from the queue; push until the added
	// one has had some (on a loaded machine the other may take a burst).
	sent := uint32(5000)
	for ; extra.Lines() == 0; sent += 100 {
		if sent >= 100000 {
			t.Fatal("the added target got nothing")
		}
		w.push(1, sent, sent+100, 10)
		runtime.Gosched()
	}
	w.finish()
	if r := w.ledger.Check(map[uint32]uint32{1: sent}); r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// A target of weight 3 gets three times the workers of one of weight 1.
func TestWeightScalesWorkers(t *testing.T) {
	w := newWorld(t, 2, testConfig())
	// Weights 5 and 2: the heavy target gets round(5/2) = 3 times the
	// connections of the light one.
	w.set.Update([]string{w.sinks[0].Addr() + "=5", w.sinks[1].Addr() + "=2"})
	w.start()
	heavy, light := w.set.Targets()[0], w.set.Targets()[1]
	waitFor(t, func() bool { return heavy.Active() == 6 && light.Active() == 2 })
	// A change of the set makes the pool look at its staffing again: a
	// target that has its workers gets no more.
	light.Drain()
	light.Enable()
	waitFor(t, func() bool { return light.Active() == 2 })
	w.p.mu.Lock()
	staffed := len(w.p.staffed[heavy])
	w.p.mu.Unlock()
	if staffed != 6 {
		t.Fatalf("the heavy target has %d workers after a change, want 6", staffed)
	}
	w.push(1, 0, 2000, 10)
	w.finish()
	if r := w.ledger.Check(map[uint32]uint32{1: 2000}); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// After a scripted failover the spans and metrics are there, with their
// attributes: a failover dial with its event, the retry of the reset
// target's batches, dial and delivery latencies per target.
func TestTelemetryAfterFailover(t *testing.T) {
	cfg := testConfig()
	cfg.Name = "logs"
	w := newWorld(t, 2, cfg)
	w.start()
	dead := w.sinks[0].Addr()
	a := w.set.Targets()[0]
	waitFor(t, func() bool { return a.Active() == 2 })
	// The first target stops reading, so that written batches wait
	// unacknowledged; its reset hands them back for a retry.
	w.sinks[0].Pause()
	w.push(1, 0, 100000, 100) // the other target drains the queue
	w.sinks[0].Kill(false)
	w.finish()
	if w.p.Stats().RequeuedLines == 0 {
		t.Fatal("nothing was requeued")
	}
	var failover, retry bool
	for _, s := range spans.Ended() {
		attrs := map[string]string{}
		for _, a := range s.Attributes() {
			attrs[string(a.Key)] = a.Value.Emit()
		}
		switch s.Name() {
		case "ndlb.upstream.dial":
			// Only the dead target's own workers dial it (the other
			// never fails): each such dial is a "home" one. (Spans of
			// other tests, whose sinks may have had the same port,
			// are not this listener's.)
			if attrs["ndlb.listener"] == "logs" && attrs["server.address"] == dead && attrs["ndlb.dial.reason"] != "home" {
				t.Errorf("a dial of the first target's own workers has reason %q", attrs["ndlb.dial.reason"])
			}
			if attrs["ndlb.dial.reason"] == "failover" && attrs["server.address"] != dead && len(s.Events()) > 0 &&
				attrs["ndlb.listener"] == "logs" &&
				s.Events()[0].Name == "failover" && len(attrs["ndlb.conn.id"]) == 27 {
				failover = true
			}
		case "ndlb.batches.retry":
			if attrs["ndlb.lines"] == "0" {
				t.Error("a retry span for no line")
			}
			// The retry carries the failure that caused it.
			if attrs["server.address"] == dead && attrs["ndlb.lines"] != "0" && len(s.Events()) > 0 && s.Events()[0].Name == "exception" {
				retry = true
			}
		}
	}
	if !failover || !retry {
		t.Fatalf("failover span %v, retry span %v among %d spans", failover, retry, len(spans.Ended()))
	}
	var rm metricdata.ResourceMetrics
	if err := metrics.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[float64]); ok {
				for _, dp := range h.DataPoints {
					if addr, ok := dp.Attributes.Value("server.address"); ok && dp.Count > 0 {
						seen[m.Name+" "+addr.AsString()] = true
					}
				}
			}
		}
	}
	live := w.sinks[1].Addr()
	for _, want := range []string{"ndlb.dial.duration " + dead, "ndlb.dial.duration " + live, "ndlb.batch.delivery.duration " + live} {
		if !seen[want] {
			t.Errorf("no %s in %v", want, seen)
		}
	}
}

// checkHardStop waits for the sink to read what it got after a hard stop
// with sent lines queued, and checks that it got exactly the delivered
// lines (dropped were given up), none torn, and that the one connection
// ended with a reset.
func (w *world) checkHardStop(delivered, dropped, sent uint64) {
	t := w.t
	t.Helper()
	if !w.sinks[0].WaitDrained(10 * time.Second) {
		t.Fatal("the sink did not finish")
	}
	r := w.ledger.Check(map[uint32]uint32{1: uint32(sent)})
	t.Logf("delivered %d, dropped %d; %s", delivered, dropped, r)
	if delivered+dropped != sent || r.Received != delivered || r.Duplicated != 0 || r.Torn != 0 {
		t.Fatalf("delivered %d + dropped %d; the target got %d: every acknowledged line and no other", delivered, dropped, r.Received)
	}
	if w.sinks[0].TornEOF() != 0 || w.p.Stats().Resets != 1 {
		t.Fatalf("torn EOFs %d, resets %d: the connection must end with a reset", w.sinks[0].TornEOF(), w.p.Stats().Resets)
	}
}
