package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/exporters/autoexport"
	"go.opentelemetry.io/otel"
	promexporter "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"
)

// Config configures Setup.
type Config struct {
	// Version is service.version.
	Version string
	// Prometheus adds a pull reader whose handler is Metrics.
	Prometheus bool
	// Env looks variables up; nil means os.LookupEnv (tests inject).
	Env func(string) (string, bool)
	// Logger receives the SDK's errors (an export that failed, say), at
	// most once per errorEvery; nil means slog.Default().
	Logger *slog.Logger
}

// errorEvery is how often the SDK's errors are logged at most: an
// exporter whose endpoint is down fails at every export.
const errorEvery = time.Minute

// errorLog is the SDK's error handler: the first error is logged, then
// one a minute, with the count so far, through ndlb's logger rather than
// the standard library's (plain text among JSON lines, unbounded). It is
// installed once, as the global handler; each Setup gives it its logger.
type errorLog struct {
	mu    sync.Mutex
	log   *slog.Logger
	n     uint64
	every rate.Sometimes
}

// sdkErrors is the global handler (otel.SetErrorHandler) once Setup ran.
var (
	sdkErrors     errorLog
	sdkErrorsOnce sync.Once
)

// use makes log receive the errors from now on, counted afresh.
func (e *errorLog) use(log *slog.Logger) {
	e.mu.Lock()
	e.log, e.n, e.every = log, 0, rate.Sometimes{First: 1, Interval: errorEvery}
	e.mu.Unlock()
	sdkErrorsOnce.Do(func() { otel.SetErrorHandler(e) })
}

// Handle implements otel.ErrorHandler.
func (e *errorLog) Handle(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	n := e.n
	e.every.Do(func() {
		e.log.Warn("OpenTelemetry SDK error (an export that failed, a bad OTEL_* value); logged at most once a minute",
			"err", err, "errors_so_far", n)
	})
}

// Telemetry is the installed SDK.
type Telemetry struct {
	tp      *sdktrace.TracerProvider
	mp      *sdkmetric.MeterProvider
	metrics http.Handler
	// Traces and MetricsPushed report what the environment turned on.
	Traces, MetricsPushed bool
}

// Setup installs what the environment and cfg ask for, as the global
// providers.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	env := cfg.Env
	if env == nil {
		env = os.LookupEnv
	}
	t := &Telemetry{}
	set := func(names ...string) bool {
		for _, n := range names {
			if v, ok := env(n); ok && v != "" && v != "none" {
				return true
			}
		}
		return false
	}
	otlp := set("OTEL_EXPORTER_OTLP_ENDPOINT")
	t.Traces = otlp || set("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	t.MetricsPushed = otlp || set("OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
	if !t.Traces && !t.MetricsPushed && !cfg.Prometheus {
		return t, nil // nothing to export: the API stays a no-op
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	sdkErrors.use(log)
	otel.SetLogger(logr.FromSlogHandler(log.Handler()))
	res, err := resource.Merge(resource.Default(), resource.NewWithAttributes(semconv.SchemaURL,
		semconv.ServiceName("ndlb"), semconv.ServiceVersion(cfg.Version)))
	if err != nil {
		return nil, err
	}
	if t.Traces {
		exp, err := autoexport.NewSpanExporter(ctx)
		if err != nil {
			return nil, err
		}
		t.tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		otel.SetTracerProvider(t.tp)
		otel.SetTextMapPropagator(propagation.TraceContext{})
	}
	if !t.MetricsPushed && !cfg.Prometheus {
		return t, nil // traces only
	}
	opts := []sdkmetric.Option{sdkmetric.WithResource(res)}
	if t.MetricsPushed {
		r, err := autoexport.NewMetricReader(ctx)
		if err != nil {
			return nil, errors.Join(err, t.Shutdown(ctx))
		}
		opts = append(opts, sdkmetric.WithReader(r))
	}
	if cfg.Prometheus {
		reg := prometheus.NewRegistry()
		exp, err := promexporter.New(promexporter.WithRegisterer(reg), promexporter.WithoutScopeInfo())
		if err != nil {
			return nil, errors.Join(err, t.Shutdown(ctx))
		}
		opts = append(opts, sdkmetric.WithReader(exp))
		t.metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	}
	t.mp = sdkmetric.NewMeterProvider(opts...)
	otel.SetMeterProvider(t.mp)
	return t, nil
}

// Metrics is the Prometheus handler, or nil.
func (t *Telemetry) Metrics() http.Handler { return t.metrics }

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	var errs []error
	if t.tp != nil {
		errs = append(errs, t.tp.Shutdown(ctx))
	}
	if t.mp != nil {
		errs = append(errs, t.mp.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// LogHandler wraps h so that every record logged with a context that holds
// a span carries trace_id and span_id, tying log lines to traces.
func LogHandler(h slog.Handler) slog.Handler { return traceHandler{h} }

type traceHandler struct{ slog.Handler }

func (h traceHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h traceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return traceHandler{h.Handler.WithAttrs(attrs)}
}

func (h traceHandler) WithGroup(name string) slog.Handler {
	return traceHandler{h.Handler.WithGroup(name)}
}
