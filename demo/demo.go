package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ndlb/ndlb/internal/linetest"
	"github.com/ndlb/ndlb/ndjson"
)

// Options are the demo's knobs.
type Options struct {
	Clients  int           // client connections, 1..1000
	Lines    int           // lines per client
	Duration time.Duration // how long the clients take to send
}

// ErrOptions is wrapped when Options are out of range.
var ErrOptions = errors.New("demo: --clients 1..1000, --lines and --duration must be positive")

// ErrLost is wrapped when a line was lost or torn: the demo failed.
var ErrLost = errors.New("demo")

// Run starts two NDJSON targets, ndlb in front of them and a generator,
// kills one target a third of the way through and restarts it at two
// thirds, prints per-target counts to out as it goes (ndlb's warnings go to
// logs), and ends with the verdict computed from what the targets received.
// It returns an error wrapping ErrLost if a line was lost or torn.
func Run(o Options, out, logs io.Writer) error {
	clients, lines, dur := o.Clients, o.Lines, o.Duration
	if clients < 1 || clients > 1000 || lines < 1 || dur <= 0 {
		return ErrOptions
	}
	out = &lockedWriter{w: out} // progress and events print from two goroutines
	ledger := linetest.NewLedger()
	var sinks []*linetest.Sink
	for range 2 {
		s, err := linetest.NewSink("127.0.0.1:0", ledger)
		if err != nil {
			return fmt.Errorf("demo: start target: %w", err)
		}
		defer s.Close()
		sinks = append(sinks, s)
	}
	cfg := ndjson.DefaultConfig()
	cfg.Targets = []string{sinks[0].Addr(), sinks[1].Addr()}
	cfg.Pool.Connections = 2
	cfg.Pool.Failback = dur / 6 // short, so the demo shows the workers coming home
	cfg.Pool.BackoffMax = 500 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := ndjson.New(cfg)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: listen: %w", err)
	}
	srv.Start(ln)
	fmt.Fprintf(out, "ndlb demo: %d clients send %d lines each through ndlb (%s) to 2 targets (%s, %s) over %s\n",
		clients, lines, ln.Addr(), sinks[0].Addr(), sinks[1].Addr(), dur)

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var progress sync.WaitGroup
	progress.Go(func() { printProgress(ctx, out, sinks) })
	start := time.Now()
	var faults sync.WaitGroup
	faults.Go(func() { killAndRestart(ctx, out, sinks[1], start, dur) })
	sendErr := generate(ln.Addr().String(), clients, lines, dur)
	faults.Wait()
	sum := srv.Shutdown()
	stop()
	progress.Wait()
	for _, s := range sinks {
		s.WaitDrained(5 * time.Second)
	}
	if sendErr != nil {
		return fmt.Errorf("demo: a client failed: %w", sendErr)
	}
	return verdict(out, ledger, clients, lines, sinks, sum)
}

// killAndRestart takes the target down a third of the way through and brings
// it back at two thirds.
func killAndRestart(ctx context.Context, out io.Writer, s *linetest.Sink, start time.Time, dur time.Duration) {
	at := func(d time.Duration) bool {
		select {
		case <-time.After(time.Until(start.Add(d))):
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !at(dur / 3) {
		return
	}
	s.Kill(true)
	fmt.Fprintf(out, "%6.1fs  target %s killed: it read what its kernel had received, reset its connections and closed its listener\n",
		time.Since(start).Seconds(), s.Addr())
	if !at(2 * dur / 3) {
		return
	}
	if err := s.Restart(); err != nil {
		fmt.Fprintf(out, "         restart of %s failed: %v\n", s.Addr(), err)
		return
	}
	fmt.Fprintf(out, "%6.1fs  target %s restarted; workers fail back to it\n", time.Since(start).Seconds(), s.Addr())
}

// generate runs the clients: each sends its lines, paced over dur, then
// closes its connection.
func generate(addr string, clients, lines int, dur time.Duration) error {
	var g errgroup.Group
	for cl := range clients {
		g.Go(func() error {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			return linetest.SendPaced(conn, uint32(cl), 0, uint32(lines), dur)
		})
	}
	return g.Wait()
}

func printProgress(ctx context.Context, out io.Writer, sinks []*linetest.Sink) {
	start := time.Now()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%6.1fs ", time.Since(start).Seconds())
		for i, s := range sinks {
			fmt.Fprintf(&b, "  target-%d %9d lines", i+1, s.Lines())
		}
		fmt.Fprintln(out, b.String())
	}
}

// verdict prints the final count, computed from what the targets received.
func verdict(out io.Writer, ledger *linetest.Ledger, clients, lines int, sinks []*linetest.Sink, sum ndjson.Summary) error {
	sent := make(map[uint32]uint32, clients)
	for c := range clients {
		sent[uint32(c)] = uint32(lines)
	}
	r := ledger.Check(sent)
	for i, s := range sinks {
		fmt.Fprintf(out, "target-%d received %d lines\n", i+1, s.Lines())
	}
	fmt.Fprintf(out, "ndlb: %d batches retried after the reset, %d failovers, %d failbacks\n",
		sum.Queue.RetriedBatches, sum.Pool.Failovers, sum.Pool.Failbacks)
	fmt.Fprintf(out, "sent %d, delivered %d, lost %d, torn %d", r.Sent, r.Unique, r.Lost, r.Torn)
	if r.Duplicated > 0 {
		fmt.Fprintf(out, " (%d duplicates: lines re-sent after the reset, as at-least-once allows)", r.Duplicated)
	}
	fmt.Fprintln(out)
	if r.Lost > 0 || r.Torn > 0 || r.Unexpected > 0 {
		return fmt.Errorf("%w: %s", ErrLost, r)
	}
	return nil
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

// Write writes p under the lock.
func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
