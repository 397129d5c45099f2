package ndjson

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/time/rate"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/pool"
	"github.com/ndlb/ndlb/upstream"
)

// Defaults for Config.
const (
	// DefaultDrainTimeout is Config.DrainTimeout.
	DefaultDrainTimeout = 30 * time.Second
	// DefaultDeliverTimeout is Config.DeliverTimeout.
	DefaultDeliverTimeout = 30 * time.Second
)

// ErrConfig is wrapped by Config.Validate's errors.
var ErrConfig = errors.New("ndjson: invalid config")

// Config is the whole NDJSON mode. Start from DefaultConfig.
type Config struct {
	Targets []string
	// Name labels the server's metrics (ndlb.listener); "" means "default".
	Name string
	// Discovered means targets also come from DNS discovery, so Targets
	// may start empty.
	Discovered bool
	Framer     framer.Config
	Queue      dispatch.Config
	Pool       pool.Config
	// Listener configures the client side: TLS termination, PROXY
	// protocol, the connection limit. Its Logger is set from Logger.
	Listener listener.Config
	// DrainTimeout is how long clients may go on sending after Shutdown.
	DrainTimeout time.Duration
	// DeliverTimeout is how much longer delivery may take after that.
	DeliverTimeout time.Duration
	// Logger receives every log; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the documented defaults, without targets.
func DefaultConfig() Config {
	return Config{
		Framer:         framer.DefaultConfig(),
		Queue:          dispatch.DefaultConfig(),
		Pool:           pool.DefaultConfig(),
		DrainTimeout:   DefaultDrainTimeout,
		DeliverTimeout: DefaultDeliverTimeout,
	}
}

// Validate reports the first problem, wrapping the package's ErrConfig.
func (c Config) Validate() error {
	if len(c.Targets) == 0 && !c.Discovered {
		return fmt.Errorf("%w: no targets", ErrConfig)
	}
	if c.DrainTimeout <= 0 || c.DeliverTimeout <= 0 {
		return fmt.Errorf("%w: drain and deliver timeouts must be positive", ErrConfig)
	}
	if err := c.Framer.Validate(); err != nil {
		return err
	}
	if err := c.Queue.Validate(c.Framer); err != nil {
		return err
	}
	return c.Pool.Validate()
}

// Server is the NDJSON mode: listener, framers, queue and pool.
type Server struct {
	cfg  Config
	log  *slog.Logger
	bufs *framer.Pool
	q    *dispatch.Queue
	set  *upstream.Set
	pool *pool.Pool
	ln   *listener.Listener

	// hard is cancelled when delivery must stop: pushes and the pool
	// give up, and what is left is counted as dropped.
	hard       context.Context
	hardCancel context.CancelFunc
	serveErr   chan error
	poolDone   chan struct{}
	shutdown   sync.Once
	summary    Summary

	oversize, incomplete, dropShutdown atomic.Uint64
	metrics                            []metric.Registration
}

// New returns a server for a valid cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Pool.Logger = cfg.Logger
	cfg.Pool.Name = cfg.Name
	s := &Server{cfg: cfg, log: cfg.Logger, bufs: framer.NewPool(), q: dispatch.New(cfg.Queue), set: upstream.NewSet(cfg.Targets)}
	s.pool = pool.New(cfg.Pool, s.q, s.set)
	s.hard, s.hardCancel = context.WithCancel(context.Background())
	return s, nil
}

// Start serves ln in the background. Call Shutdown to stop.
func (s *Server) Start(ln net.Listener) {
	lc := s.cfg.Listener
	lc.Logger = s.log
	s.ln = listener.New(ln, s, lc)
	s.serveErr = make(chan error, 1)
	s.poolDone = make(chan struct{})
	go func() { s.serveErr <- s.ln.Serve() }()
	go func() { defer close(s.poolDone); s.pool.Run(s.hard) }()
	s.metrics = registerAll(s.log,
		func() (metric.Registration, error) { return s.ln.ObserveMetrics(s.attrs()...) },
		func() (metric.Registration, error) { return s.observe(s.attrs()...) },
		func() (metric.Registration, error) { return s.set.ObserveMetrics(s.name()) })
	s.log.Info("listening", "addr", ln.Addr().String(), "mode", "ndjson", "targets", s.cfg.Targets,
		"connections_per_target", s.cfg.Pool.Connections, "tls", lc.TLS != nil,
		"accept_proxy", lc.AcceptProxy, "max_conns", lc.MaxConns)
}

// Addr is the listening address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Err is signalled if the listener fails on its own (not by Shutdown).
func (s *Server) Err() <-chan error { return s.serveErr }

// ServeConn frames one client connection into the queue. It implements
// listener.Handler.
func (s *Server) ServeConn(c *listener.Conn) {
	start := time.Now()
	c.Log.Debug("client connected")
	f := framer.New(clientReader(c), s.cfg.Framer, s.bufs)
	defer f.Close()
	var lines, bytes, oversize uint64
	warn := rate.Sometimes{First: 1, Interval: time.Second}
	f.OnDrop = func(d framer.Drop) {
		switch d.Reason {
		case framer.ReasonOversize:
			s.oversize.Add(1)
			oversize++
			warn.Do(func() {
				c.Log.Warn("line longer than --max-line-bytes dropped", "limit", s.cfg.Framer.MaxLineBytes,
					"dropped_on_conn", oversize)
			})
		case framer.ReasonIncomplete:
			s.incomplete.Add(1)
			c.Log.Warn("connection ended inside a line; the fragment was dropped", "fragment_bytes", d.Bytes)
		}
	}
	for {
		b, err := f.Next()
		if err != nil {
			s.logClose(c, err, start, lines, bytes, oversize)
			return
		}
		n, size := b.Lines, len(b.Data)
		if err := s.q.Push(s.hard, b); err != nil {
			s.dropShutdown.Add(uint64(n))
			b.Release()
			c.Log.Error("shutdown deadline passed: lines read but not queued were dropped", "lines", n)
			return
		}
		lines += uint64(n)
		bytes += uint64(size)
	}
}

func (s *Server) logClose(c *listener.Conn, err error, start time.Time, lines, bytes, oversize uint64) {
	if h := connDuration(); h != nil {
		h.Record(context.Background(), time.Since(start).Seconds(), metric.WithAttributes(s.attrs()...))
	}
	attrs := []any{"lines", lines, "bytes", bytes, "dropped_oversize", oversize, "duration", time.Since(start).Round(time.Millisecond)}
	switch {
	case errors.Is(err, io.EOF) && lines == 0 && oversize == 0:
		c.Log.Debug("client disconnected", attrs...) // a health check or port probe
	case errors.Is(err, io.EOF):
		c.Log.Info("client disconnected", attrs...)
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.Log.Warn("drain timeout: stopped reading from client", attrs...)
	default:
		c.Log.Info("client connection failed", append(attrs, "err", err)...)
	}
}

// Summary is what a shutdown reports.
type Summary struct {
	Stats
	// Clean is true when everything read was delivered.
	Clean bool
}

// Stats are the server's counters.
type Stats struct {
	Listener          listener.Stats
	Queue             dispatch.Stats
	Pool              pool.Stats
	DroppedOversize   uint64
	DroppedIncomplete uint64
	DroppedShutdown   uint64
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Queue: s.q.Stats(), Pool: s.pool.Stats(),
		DroppedOversize: s.oversize.Load(), DroppedIncomplete: s.incomplete.Load(),
		DroppedShutdown: s.dropShutdown.Load(),
	}
	if s.ln != nil {
		st.Listener = s.ln.Stats()
	}
	return st
}

// Targets returns each target's counters, in configuration order.
func (s *Server) Targets() []upstream.Stats { return s.set.Stats() }

// Set is the server's target set, for the admin API and health checks.
func (s *Server) Set() *upstream.Set { return s.set }

// Shutdown stops the server as the package doc describes, logs a summary
// line and returns it. It is safe to call more than once.
func (s *Server) Shutdown() Summary {
	s.shutdown.Do(func() {
		giveUp := time.AfterFunc(s.cfg.DrainTimeout+s.cfg.DeliverTimeout, s.hardCancel)
		defer giveUp.Stop()
		s.log.Info("shutting down: no new connections; draining clients", "drain_timeout", s.cfg.DrainTimeout)
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
		if err := s.ln.Shutdown(ctx); err != nil {
			s.log.Warn("drain timeout passed with clients still connected; their connections were closed")
		}
		cancel()
		s.q.CloseInput()
		s.log.Info("delivering queued lines", "queued_bytes", s.q.Stats().Bytes)
		select {
		case <-s.poolDone:
		case <-s.hard.Done():
			<-s.poolDone
		}
		if n := s.q.Discard(); n > 0 {
			s.dropShutdown.Add(n)
			s.log.Error("shutdown deadline passed: undelivered lines dropped", "lines", n)
		}
		s.hardCancel()
		for _, r := range s.metrics {
			_ = r.Unregister()
		}
		st := s.Stats()
		s.summary = Summary{Stats: st, Clean: st.DroppedShutdown == 0}
		s.log.Info("summary", "lines_in", st.Queue.LinesIn, "lines_out", st.Queue.LinesOut,
			"dropped_oversize", st.DroppedOversize, "dropped_incomplete", st.DroppedIncomplete,
			"dropped_shutdown", st.DroppedShutdown, "retried_batches", st.Queue.RetriedBatches,
			"retried_lines", st.Queue.RetriedLines, "failovers", st.Pool.Failovers, "failbacks", st.Pool.Failbacks)
	})
	return s.summary
}

func (s *Server) name() string {
	if s.cfg.Name == "" {
		return "default"
	}
	return s.cfg.Name
}

// attrs label the server's metrics.
func (s *Server) attrs() []attribute.KeyValue {
	return []attribute.KeyValue{upstream.AttrListener.String(s.name()), attribute.String("ndlb.mode", "ndjson")}
}

// registerAll runs each registration, logging (not failing on) errors.
func registerAll(log *slog.Logger, regs ...func() (metric.Registration, error)) []metric.Registration {
	var out []metric.Registration
	for _, reg := range regs {
		r, err := reg()
		if err != nil {
			log.Warn("metrics unavailable", "err", err)
			continue
		}
		out = append(out, r)
	}
	return out
}
