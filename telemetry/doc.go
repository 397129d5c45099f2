// Package telemetry installs the OpenTelemetry SDK for cmd/ndlb: a tracer
// provider and a meter provider whose exporters are chosen by the standard
// OTEL_* environment variables (OTLP over gRPC or HTTP, console, none;
// through contrib/exporters/autoexport), and a Prometheus reader whose
// handler the admin API serves at /metrics.
//
//	tel, err := telemetry.Setup(ctx, telemetry.Config{Version: v, Prometheus: true})
//	defer tel.Shutdown(ctx)
//
// With no OTEL_* variable set and no Prometheus reader, nothing is
// installed: the library packages' calls to the OpenTelemetry API stay
// no-ops. Only this package and cmd/ndlb import the SDK; the library
// packages use the API alone (see Meter and Tracer there).
package telemetry
