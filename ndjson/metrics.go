package ndjson

import (
	"context"
	"errors"
	"slices"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/internal/carry"
	"github.com/ndlb/ndlb/upstream"
)

var connDuration = sync.OnceValue(func() metric.Float64Histogram {
	h, _ := otel.Meter("github.com/ndlb/ndlb/ndjson").Float64Histogram("ndlb.connection.duration", metric.WithUnit("s"),
		metric.WithDescription("How long client connections lasted."),
		metric.WithExplicitBucketBoundaries(0.001, 0.01, 0.1, 1, 10, 60, 600, 3600))
	return h
})

var instruments = sync.OnceValues(func() (ndjsonMetrics, error) {
	m := otel.Meter("github.com/ndlb/ndlb/ndjson")
	var n ndjsonMetrics
	var errs [14]error
	n.retried, errs[3] = m.Int64ObservableCounter("ndlb.batches.retried", metric.WithUnit("{batch}"),
		metric.WithDescription("Batches sent again after their connection failed."))
	n.failovers, errs[4] = m.Int64ObservableCounter("ndlb.failovers", metric.WithUnit("{connection}"),
		metric.WithDescription("Worker connections made to a target other than the worker's home."))
	n.failbacks, errs[5] = m.Int64ObservableCounter("ndlb.failbacks", metric.WithUnit("{connection}"),
		metric.WithDescription("Workers back at their home target after a failover."))
	n.queueBytes, errs[6] = m.Int64ObservableGauge("ndlb.queue.bytes", metric.WithUnit("By"),
		metric.WithDescription("Bytes read and not yet acknowledged (bounded by --buffer-bytes)."))
	n.queueLimit, errs[10] = m.Int64ObservableGauge("ndlb.queue.limit", metric.WithUnit("By"),
		metric.WithDescription("The most bytes the queue holds (--buffer-bytes): alert on ndlb.queue.bytes near it."))
	n.queueDepth, errs[7] = m.Int64ObservableGauge("ndlb.queue.batches", metric.WithUnit("{batch}"),
		metric.WithDescription("Batches waiting for a worker."))
	n.clientMemory, errs[8] = m.Int64ObservableGauge("ndlb.client.memory", metric.WithUnit("By"),
		metric.WithDescription("Bytes client connections hold before their lines are queued (bounded by --client-buffer-bytes)."))
	n.badFrames, errs[11] = m.Int64ObservableCounter("ndlb.client.bad_frames", metric.WithUnit("{connection}"),
		metric.WithDescription("Clients closed for a bad octet-counted length prefix (--framing octet-counted)."))
	n.lineTimeouts, errs[9] = m.Int64ObservableCounter("ndlb.client.line_timeouts", metric.WithUnit("{connection}"),
		metric.WithDescription("Clients closed for holding a partial line past --line-timeout."))
	// As passthrough's UDP server names and describes them.
	n.udpDatagrams, errs[12] = m.Int64ObservableCounter("ndlb.udp.datagrams", metric.WithUnit("{datagram}"),
		metric.WithDescription("UDP datagrams from clients (network.io.direction receive) and to them (transmit)."))
	n.udpDropped, errs[13] = m.Int64ObservableCounter("ndlb.udp.dropped", metric.WithUnit("{datagram}"),
		metric.WithDescription("UDP datagrams dropped, by ndlb.reason: no_target, flow_limit, socket_error, send_error, reply_error, kernel_overflow."))
	for _, err := range errs {
		if err != nil {
			return n, err
		}
	}
	return n, nil
})

type ndjsonMetrics struct {
	retried, failovers, failbacks, lineTimeouts metric.Int64ObservableCounter
	badFrames, udpDatagrams, udpDropped         metric.Int64ObservableCounter
	queueBytes, queueLimit, queueDepth          metric.Int64ObservableGauge
	clientMemory                                metric.Int64ObservableGauge
}

// group reports every server's metrics (spools' included): those of a
// reload's replacement and of the listener it replaces add up, and the
// counters go on across them.
var group = sync.OnceValues(func() (*carry.Group, error) {
	n, err := instruments()
	if err != nil {
		return nil, err
	}
	sm, err := spoolInstruments()
	if err != nil {
		return nil, err
	}
	return carry.New(otel.Meter("github.com/ndlb/ndlb/ndjson"), carry.Instruments{
		Counters: []metric.Observable{n.retried, n.failovers, n.failbacks, n.lineTimeouts, n.badFrames, n.udpDatagrams, n.udpDropped,
			sm.appends, sm.handed, sm.syncs, sm.syncTime, sm.replayed, sm.corrupt, sm.dropped, sm.errs},
		Sums:   []metric.Observable{n.queueBytes, n.queueDepth, n.clientMemory, sm.bytes, sm.records},
		Latest: []metric.Observable{n.queueLimit, sm.oldest},
	})
})

var ledgerInstruments = sync.OnceValues(func() (ledgerMetrics, error) {
	m := otel.Meter("github.com/ndlb/ndlb/ndjson")
	var l ledgerMetrics
	var errs [6]error
	l.received, errs[0] = m.Int64ObservableCounter("ndlb.lines.received", metric.WithUnit("{line}"),
		metric.WithDescription("Lines read from clients (fragments included), and those found in the spool at open (ndlb.lines.replayed): delivered + dropped + spooled + in flight."))
	l.spooled, errs[4] = m.Int64ObservableCounter("ndlb.lines.spooled", metric.WithUnit("{line}"),
		metric.WithDescription("Lines left in the spool by instances that stopped, for the next to deliver."))
	l.replayed, errs[5] = m.Int64ObservableCounter("ndlb.lines.replayed", metric.WithUnit("{line}"),
		metric.WithDescription("Lines found in the spool at open, left by an earlier instance or process (part of ndlb.lines.received)."))
	l.delivered, errs[1] = m.Int64ObservableCounter("ndlb.lines.delivered", metric.WithUnit("{line}"),
		metric.WithDescription("Lines acknowledged by a target."))
	l.dropped, errs[2] = m.Int64ObservableCounter("ndlb.lines.dropped", metric.WithUnit("{line}"),
		metric.WithDescription("Lines dropped, by ndlb.drop.reason: oversize, incomplete, memory, shutdown, binary, unrouted, spool_full, spool_lost."))
	l.inFlight, errs[3] = m.Int64ObservableGauge("ndlb.lines.in_flight", metric.WithUnit("{line}"),
		metric.WithDescription("Lines received and not yet delivered, dropped or left spooled."))
	return l, errors.Join(errs[:]...)
})

type ledgerMetrics struct {
	received, delivered, dropped, spooled, replayed metric.Int64ObservableCounter
	inFlight                                        metric.Int64ObservableGauge
}

// ObserveLedgers reports the ledger of every listener in b (replaced and
// removed instances included) as the ndlb.lines.* metrics, labelled with
// the listener's name.
func ObserveLedgers(b *dispatch.Book) (metric.Registration, error) {
	m, err := ledgerInstruments()
	if err != nil {
		return nil, err
	}
	return otel.Meter("github.com/ndlb/ndlb/ndjson").RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, name := range b.Names() {
			st := b.Stats(name)
			attrs := []attribute.KeyValue{upstream.AttrListener.String(name), attribute.String("ndlb.mode", "ndjson")}
			set := metric.WithAttributes(attrs...)
			o.ObserveInt64(m.received, int64(st.Received), set)
			o.ObserveInt64(m.delivered, int64(st.Delivered), set)
			o.ObserveInt64(m.inFlight, int64(st.InFlight), set)
			o.ObserveInt64(m.spooled, int64(st.Spooled), set)
			o.ObserveInt64(m.replayed, int64(st.Replayed), set)
			for _, r := range dispatch.DropReasons {
				o.ObserveInt64(m.dropped, int64(st.Dropped[r]),
					metric.WithAttributes(append(attrs, attribute.String("ndlb.drop.reason", r))...))
			}
		}
		return nil
	}, m.received, m.delivered, m.dropped, m.inFlight, m.spooled, m.replayed)
}

// observe registers the server's metrics, labelled with attrs. A server
// that replaces another with the same attributes goes on from its counts
// (internal/carry).
func (s *Server) observe(attrs ...attribute.KeyValue) (metric.Registration, error) {
	m, err := instruments()
	if err != nil {
		return nil, err
	}
	g, err := group()
	if err != nil {
		return nil, err
	}
	set := metric.WithAttributes(attrs...)
	udpAttrs := append(slices.Clone(attrs), attribute.String("network.transport", "udp"))
	received := metric.WithAttributes(append(slices.Clone(udpAttrs), upstream.AttrDirection.String("receive"))...)
	overflow := metric.WithAttributes(append(slices.Clone(udpAttrs), attribute.String("ndlb.reason", "kernel_overflow"))...)
	return g.Add(func(o metric.Observer) {
		st := s.Stats()
		if s.udp != nil {
			o.ObserveInt64(m.udpDatagrams, int64(st.Datagrams), received)
			o.ObserveInt64(m.udpDropped, int64(st.Overflows), overflow)
		}
		o.ObserveInt64(m.clientMemory, st.ClientMemory.Used, set)
		o.ObserveInt64(m.lineTimeouts, int64(st.LineTimeouts), set)
		o.ObserveInt64(m.badFrames, int64(st.BadFrames), set)
		o.ObserveInt64(m.retried, int64(st.Queue.RetriedBatches), set)
		o.ObserveInt64(m.failovers, int64(st.Pool.Failovers), set)
		o.ObserveInt64(m.failbacks, int64(st.Pool.Failbacks), set)
		o.ObserveInt64(m.queueBytes, st.Queue.Bytes, set)
		o.ObserveInt64(m.queueLimit, s.cfg.Queue.MaxBytes, set)
		o.ObserveInt64(m.queueDepth, int64(st.Queue.Depth), set)
	}), nil
}
