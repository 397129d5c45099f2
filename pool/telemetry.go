package pool

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/ndlb/ndlb/upstream"
)

const scope = "github.com/ndlb/ndlb/pool"

var tracer = otel.Tracer(scope)

var instruments = sync.OnceValues(func() (poolMetrics, error) {
	m := otel.Meter(scope)
	var p poolMetrics
	var err1, err2 error
	p.dial, err1 = m.Float64Histogram("ndlb.dial.duration", metric.WithUnit("s"),
		metric.WithDescription("Target connection attempts: dial and TLS handshake, by ndlb.outcome."),
		metric.WithExplicitBucketBoundaries(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
	p.delivery, err2 = m.Float64Histogram("ndlb.batch.delivery.duration", metric.WithUnit("s"),
		metric.WithDescription("From a batch's queueing to its acknowledgement by a target's TCP stack, retries included."),
		metric.WithExplicitBucketBoundaries(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30))
	if err1 != nil {
		return p, err1
	}
	return p, err2
})

type poolMetrics struct {
	dial, delivery metric.Float64Histogram
}

// telemetry holds a pool's instruments and attribute sets.
type telemetry struct {
	m        poolMetrics
	ok       bool
	listener attribute.KeyValue
}

func newTelemetry(name string) *telemetry {
	if name == "" {
		name = "default"
	}
	m, err := instruments()
	return &telemetry{m: m, ok: err == nil, listener: upstream.AttrListener.String(name)}
}

// dialSpan starts the span of one dial to t.
func (tm *telemetry) dialSpan(ctx context.Context, t *upstream.Target, reason string) (context.Context, trace.Span) {
	return tracer.Start(ctx, "ndlb.upstream.dial", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(tm.listener, upstream.AttrServer.String(t.Addr), attribute.String("ndlb.dial.reason", reason)))
}

// dialDone ends a dial span and records the dial's duration. A failover or
// failback that connected is an event on the span.
func (tm *telemetry) dialDone(ctx context.Context, span trace.Span, t *upstream.Target, reason string, start time.Time, err error) {
	outcome := "ok"
	if err == nil && reason != "home" {
		span.AddEvent(reason, trace.WithAttributes(upstream.AttrServer.String(t.Addr)))
	}
	if err != nil {
		outcome = "failed"
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	if tm.ok {
		tm.m.dial.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(tm.listener,
			upstream.AttrServer.String(t.Addr), attribute.String("ndlb.outcome", outcome)))
	}
}

// deliveryOpt is the attribute set of t's delivery latencies; a
// connection makes it once, so that acknowledging a batch takes no lock.
func (tm *telemetry) deliveryOpt(t *upstream.Target) metric.RecordOption {
	return metric.WithAttributeSet(attribute.NewSet(tm.listener, upstream.AttrServer.String(t.Addr)))
}

// delivered records the delivery latency of a batch acknowledged on a
// connection whose attribute set is opt.
func (tm *telemetry) delivered(opt metric.RecordOption, enqueued time.Time) {
	if tm.ok && !enqueued.IsZero() {
		tm.m.delivery.Record(context.Background(), time.Since(enqueued).Seconds(), opt)
	}
}

// retried records, as a span, batches handed back after a connection to t
// failed.
func (tm *telemetry) retried(t *upstream.Target, lines int, err error) {
	_, span := tracer.Start(context.Background(), "ndlb.batches.retry", trace.WithAttributes(tm.listener,
		upstream.AttrServer.String(t.Addr), attribute.Int("ndlb.lines", lines)))
	if err != nil {
		span.RecordError(err)
	}
	span.End()
}
