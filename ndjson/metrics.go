package ndjson

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
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
	var errs [8]error
	n.linesIn, errs[0] = m.Int64ObservableCounter("ndlb.lines.received", metric.WithUnit("{line}"),
		metric.WithDescription("Lines read from clients and queued."))
	n.linesOut, errs[1] = m.Int64ObservableCounter("ndlb.lines.delivered", metric.WithUnit("{line}"),
		metric.WithDescription("Lines acknowledged by a target."))
	n.dropped, errs[2] = m.Int64ObservableCounter("ndlb.lines.dropped", metric.WithUnit("{line}"),
		metric.WithDescription("Lines dropped, by ndlb.drop.reason: oversize, incomplete, shutdown."))
	n.retried, errs[3] = m.Int64ObservableCounter("ndlb.batches.retried", metric.WithUnit("{batch}"),
		metric.WithDescription("Batches sent again after their connection failed."))
	n.failovers, errs[4] = m.Int64ObservableCounter("ndlb.failovers", metric.WithUnit("{connection}"),
		metric.WithDescription("Worker connections made to a target other than the worker's home."))
	n.failbacks, errs[5] = m.Int64ObservableCounter("ndlb.failbacks", metric.WithUnit("{connection}"),
		metric.WithDescription("Workers back at their home target after a failover."))
	n.queueBytes, errs[6] = m.Int64ObservableGauge("ndlb.queue.bytes", metric.WithUnit("By"),
		metric.WithDescription("Bytes read and not yet acknowledged (bounded by --buffer-bytes)."))
	n.queueDepth, errs[7] = m.Int64ObservableGauge("ndlb.queue.batches", metric.WithUnit("{batch}"),
		metric.WithDescription("Batches waiting for a worker."))
	for _, err := range errs {
		if err != nil {
			return n, err
		}
	}
	return n, nil
})

type ndjsonMetrics struct {
	linesIn, linesOut, dropped, retried, failovers, failbacks metric.Int64ObservableCounter
	queueBytes, queueDepth                                    metric.Int64ObservableGauge
}

// observe registers the server's metrics, labelled with attrs.
func (s *Server) observe(attrs ...attribute.KeyValue) (metric.Registration, error) {
	m, err := instruments()
	if err != nil {
		return nil, err
	}
	set := metric.WithAttributes(attrs...)
	reason := func(r string) metric.MeasurementOption {
		return metric.WithAttributes(append(attrs, attribute.String("ndlb.drop.reason", r))...)
	}
	oversize, incomplete, shutdown := reason("oversize"), reason("incomplete"), reason("shutdown")
	return otel.Meter("github.com/ndlb/ndlb/ndjson").RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := s.Stats()
		o.ObserveInt64(m.linesIn, int64(st.Queue.LinesIn), set)
		o.ObserveInt64(m.linesOut, int64(st.Queue.LinesOut), set)
		o.ObserveInt64(m.dropped, int64(st.DroppedOversize), oversize)
		o.ObserveInt64(m.dropped, int64(st.DroppedIncomplete), incomplete)
		o.ObserveInt64(m.dropped, int64(st.DroppedShutdown), shutdown)
		o.ObserveInt64(m.retried, int64(st.Queue.RetriedBatches), set)
		o.ObserveInt64(m.failovers, int64(st.Pool.Failovers), set)
		o.ObserveInt64(m.failbacks, int64(st.Pool.Failbacks), set)
		o.ObserveInt64(m.queueBytes, st.Queue.Bytes, set)
		o.ObserveInt64(m.queueDepth, int64(st.Queue.Depth), set)
		return nil
	}, m.linesIn, m.linesOut, m.dropped, m.retried, m.failovers, m.failbacks, m.queueBytes, m.queueDepth)
}
