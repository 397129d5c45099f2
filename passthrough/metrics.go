package passthrough

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/ndlb/ndlb/internal/carry"
	"github.com/ndlb/ndlb/listener"
	"github.com/ndlb/ndlb/upstream"
)

var tracer = otel.Tracer("github.com/ndlb/ndlb/passthrough")

// apiProvider is the tracer provider the OpenTelemetry API starts with,
// whose spans record nothing until a real provider is installed
// (telemetry.Setup with traces on).
var apiProvider = otel.GetTracerProvider()

// noSpan is the span of a connection while tracing is off.
var noSpan = trace.SpanFromContext(context.Background())

// startSpan starts a span of kind named name under ctx, with the
// attributes attrs returns. While no tracer provider is installed it
// returns ctx and a no-op span without calling attrs: a new connection
// then pays nothing (no span, context or attribute allocated) for tracing
// that is off.
func startSpan(ctx context.Context, name string, kind trace.SpanKind, attrs func() []attribute.KeyValue) (context.Context, trace.Span) {
	if otel.GetTracerProvider() == apiProvider {
		return ctx, noSpan
	}
	return tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs()...))
}

var instruments = sync.OnceValues(func() (ptMetrics, error) {
	m := otel.Meter("github.com/ndlb/ndlb/passthrough")
	var p ptMetrics
	var errs [5]error
	p.conns, errs[0] = m.Int64ObservableCounter("ndlb.passthrough.connections", metric.WithUnit("{connection}"),
		metric.WithDescription("Client connections by ndlb.outcome: proxied, or failed (no target accepted)."))
	p.closed, errs[1] = m.Int64ObservableCounter("ndlb.passthrough.closed", metric.WithUnit("{connection}"),
		metric.WithDescription("Connections ndlb closed, by ndlb.reason: idle, half-closed, shutdown (UDP flows: idle, icmp, moved, shutdown)."))
	p.spliced, errs[2] = m.Int64ObservableCounter("ndlb.passthrough.spliced", metric.WithUnit("By"),
		metric.WithDescription("Bytes moved by splice(2), never copied through ndlb's memory."))
	p.duration, errs[3] = m.Float64Histogram("ndlb.connection.duration", metric.WithUnit("s"),
		metric.WithDescription("How long proxied connections lasted."),
		metric.WithExplicitBucketBoundaries(0.001, 0.01, 0.1, 1, 10, 60, 600, 3600))
	p.dial, errs[4] = m.Float64Histogram("ndlb.dial.duration", metric.WithUnit("s"),
		metric.WithDescription("Target connection attempts: dial, PROXY header and TLS handshake, by ndlb.outcome."),
		metric.WithExplicitBucketBoundaries(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
	for _, err := range errs {
		if err != nil {
			return p, err
		}
	}
	return p, nil
})

type ptMetrics struct {
	conns, closed, spliced metric.Int64ObservableCounter
	duration, dial         metric.Float64Histogram
}

// group reports every server's metrics, TCP and UDP: those of a reload's
// replacement and of the listener it replaces add up, and the counters go
// on across them.
var group = sync.OnceValues(func() (*carry.Group, error) {
	p, err := instruments()
	if err != nil {
		return nil, err
	}
	u, err := udpInstruments()
	if err != nil {
		return nil, err
	}
	return carry.New(otel.Meter("github.com/ndlb/ndlb/passthrough"), carry.Instruments{
		Counters: []metric.Observable{p.conns, p.closed, p.spliced, u.flows, u.datagrams, u.dropped},
		Sums:     []metric.Observable{u.active},
	})
})

func (s *core) name() string {
	if s.cfg.Name == "" {
		return "default"
	}
	return s.cfg.Name
}

// attrs label the server's metrics.
func (s *core) attrs() []attribute.KeyValue {
	return []attribute.KeyValue{upstream.AttrListener.String(s.name()), attribute.String("ndlb.mode", "passthrough")}
}

// observe registers the server's metrics.
func (s *Server) observe() []metric.Registration {
	m, err := instruments()
	if err != nil {
		s.log.Warn("metrics unavailable", "err", err)
		return nil
	}
	set := metric.WithAttributes(s.attrs()...)
	var regs []metric.Registration
	add := func(r metric.Registration, err error) {
		if err != nil {
			s.log.Warn("metrics unavailable", "err", err)
			return
		}
		regs = append(regs, r)
	}
	if g, err := group(); err != nil {
		s.log.Warn("metrics unavailable", "err", err)
	} else {
		regs = append(regs, s.observeTCP(g, m, set))
	}
	add(s.ln.ObserveMetrics(s.attrs()...))
	add(s.set.ObserveMetrics(s.name()))
	return regs
}

// observeTCP adds the server's own counters to g.
func (s *Server) observeTCP(g *carry.Group, m ptMetrics, set metric.ObserveOption) metric.Registration {
	with := func(k, v string) metric.ObserveOption {
		return metric.WithAttributes(append(s.attrs(), attribute.String(k, v))...)
	}
	proxied, failed := with("ndlb.outcome", "proxied"), with("ndlb.outcome", "failed")
	idle, half, shut := with("ndlb.reason", "idle"), with("ndlb.reason", "half-closed"), with("ndlb.reason", "shutdown")
	return g.Add(func(o metric.Observer) {
		st := s.Stats()
		o.ObserveInt64(m.conns, int64(st.Proxied), proxied)
		o.ObserveInt64(m.conns, int64(st.Failed), failed)
		o.ObserveInt64(m.closed, int64(st.IdleClosed), idle)
		o.ObserveInt64(m.closed, int64(st.HalfClosed), half)
		o.ObserveInt64(m.closed, int64(st.ShutdownClosed), shut)
		o.ObserveInt64(m.spliced, int64(st.BytesSpliced), set)
	})
}

// targetOpts are a target's attribute sets, made once: building them per
// record cost several percent of a connection's CPU.
type targetOpts struct {
	ok, failed, duration metric.RecordOption
}

func (s *core) optsFor(t *upstream.Target) *targetOpts {
	if o, ok := s.attrCache.Load(t); ok {
		return o.(*targetOpts)
	}
	l, srv := upstream.AttrListener.String(s.name()), upstream.AttrServer.String(t.Addr)
	o := &targetOpts{
		ok:       metric.WithAttributeSet(attribute.NewSet(l, srv, attribute.String("ndlb.outcome", "ok"))),
		failed:   metric.WithAttributeSet(attribute.NewSet(l, srv, attribute.String("ndlb.outcome", "failed"))),
		duration: metric.WithAttributeSet(attribute.NewSet(l, srv)),
	}
	actual, _ := s.attrCache.LoadOrStore(t, o)
	return actual.(*targetOpts)
}

// recordDial records one attempt's duration.
func (s *core) recordDial(ctx context.Context, t *upstream.Target, d time.Duration, err error) {
	m, merr := instruments()
	if merr != nil {
		return
	}
	o := s.optsFor(t)
	opt := o.ok
	if err != nil {
		opt = o.failed
	}
	m.dial.Record(ctx, d.Seconds(), opt)
}

// recordDuration records a finished connection.
func (s *core) recordDuration(d time.Duration, t *upstream.Target) {
	if m, err := instruments(); err == nil {
		m.duration.Record(context.Background(), d.Seconds(), s.optsFor(t).duration)
	}
}

// udpInstruments are the UDP server's own instruments, made once.
var udpInstruments = sync.OnceValues(func() (udpMetrics, error) {
	m := otel.Meter("github.com/ndlb/ndlb/passthrough")
	var u udpMetrics
	var errs [4]error
	u.flows, errs[0] = m.Int64ObservableCounter("ndlb.udp.flows", metric.WithUnit("{flow}"),
		metric.WithDescription("UDP flows opened (a client address and port bound to a target)."))
	u.active, errs[1] = m.Int64ObservableUpDownCounter("ndlb.udp.flows.active", metric.WithUnit("{flow}"),
		metric.WithDescription("UDP flows open now."))
	u.datagrams, errs[2] = m.Int64ObservableCounter("ndlb.udp.datagrams", metric.WithUnit("{datagram}"),
		metric.WithDescription("UDP datagrams from clients (network.io.direction receive) and to them (transmit)."))
	u.dropped, errs[3] = m.Int64ObservableCounter("ndlb.udp.dropped", metric.WithUnit("{datagram}"),
		metric.WithDescription("UDP datagrams dropped, by ndlb.reason: no_target, flow_limit, socket_error, send_error, reply_error, kernel_overflow."))
	return u, errors.Join(errs[:]...)
})

type udpMetrics struct {
	flows, datagrams, dropped metric.Int64ObservableCounter
	active                    metric.Int64ObservableUpDownCounter
}

// observeUDP registers the UDP server's metrics: its own, the flows closed
// (ndlb.passthrough.closed, with the reason icmp besides idle and
// shutdown) and the targets'.
func (s *UDPServer) observeUDP() []metric.Registration {
	m, err := instruments()
	u, uerr := udpInstruments()
	g, gerr := group()
	if err = errors.Join(err, uerr, gerr); err != nil {
		s.log.Warn("metrics unavailable", "err", err)
		return nil
	}
	base := append(s.attrs(), attribute.String("network.transport", "udp"))
	with := func(k, v string) metric.ObserveOption {
		return metric.WithAttributes(append(slices.Clone(base), attribute.String(k, v))...)
	}
	set := metric.WithAttributes(base...)
	in, out := with(string(upstream.AttrDirection), "receive"), with(string(upstream.AttrDirection), "transmit")
	closed := map[string]metric.ObserveOption{"idle": with("ndlb.reason", "idle"), "icmp": with("ndlb.reason", "icmp"),
		"moved": with("ndlb.reason", "moved"), "shutdown": with("ndlb.reason", "shutdown")}
	reasons := []string{"no_target", "flow_limit", "socket_error", "send_error", "reply_error", "kernel_overflow"}
	drops := map[string]metric.ObserveOption{}
	for _, r := range reasons {
		drops[r] = with("ndlb.reason", r)
	}
	regs := []metric.Registration{g.Add(func(o metric.Observer) {
		st := s.Stats()
		o.ObserveInt64(u.flows, int64(st.Flows), set)
		o.ObserveInt64(u.active, st.ActiveFlows, set)
		o.ObserveInt64(u.datagrams, int64(st.FromClients), in)
		o.ObserveInt64(u.datagrams, int64(st.ToClients), out)
		for i, v := range []uint64{st.NoTarget, st.FlowLimit, st.SocketErrors, st.SendErrors, st.ReplyErrors, st.Overflows} {
			o.ObserveInt64(u.dropped, int64(v), drops[reasons[i]])
		}
		o.ObserveInt64(m.closed, int64(st.IdleClosed), closed["idle"])
		o.ObserveInt64(m.closed, int64(st.ICMPClosed), closed["icmp"])
		o.ObserveInt64(m.closed, int64(st.MovedClosed), closed["moved"])
		o.ObserveInt64(m.closed, int64(st.ShutdownClosed), closed["shutdown"])
	})}
	if r, err := s.set.ObserveMetrics(s.name()); err == nil {
		regs = append(regs, r)
	}
	return regs
}

// connAttrs are the attributes of a client connection's connect span.
func connAttrs(s *Server, c *listener.Conn) []attribute.KeyValue {
	return []attribute.KeyValue{upstream.AttrListener.String(s.name()), attribute.String("ndlb.conn.id", c.ID.String()),
		attribute.String("client.address", c.Client.String())}
}

// dialAttrs are the attributes of the span of attempt n on t.
func dialAttrs(t *upstream.Target, n int) []attribute.KeyValue {
	return []attribute.KeyValue{upstream.AttrServer.String(t.Addr), attribute.Int("ndlb.attempt", n)}
}
