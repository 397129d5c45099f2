package telemetry

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestSetupFollowsTheEnvironment(t *testing.T) {
	tests := []struct {
		name            string
		vars            map[string]string
		prometheus      bool
		traces, pushed  bool
		installsMetrics bool
	}{
		{name: "nothing set: nothing installed", vars: map[string]string{}},
		{name: "none is off", vars: map[string]string{"OTEL_TRACES_EXPORTER": "none"}},
		{name: "console traces", vars: map[string]string{"OTEL_TRACES_EXPORTER": "console"}, traces: true},
		{name: "OTLP endpoint: both", vars: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, traces: true, pushed: true, installsMetrics: true},
		{name: "Prometheus only", vars: map[string]string{}, prometheus: true, installsMetrics: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.vars {
				t.Setenv(k, v) // autoexport reads the real environment
			}
			tel, err := Setup(context.Background(), Config{Version: "test", Prometheus: tt.prometheus, Env: env(tt.vars)})
			if err != nil {
				t.Fatal(err)
			}
			defer tel.Shutdown(context.Background())
			if tel.Traces != tt.traces || tel.MetricsPushed != tt.pushed || (tel.mp != nil) != tt.installsMetrics {
				t.Fatalf("traces %v pushed %v meter provider %v", tel.Traces, tel.MetricsPushed, tel.mp != nil)
			}
			if (tel.Metrics() != nil) != tt.prometheus {
				t.Fatal("a Prometheus handler without --admin, or none with it")
			}
		})
	}
}

func TestLogHandlerAddsTraceIDs(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(LogHandler(slog.NewJSONHandler(&buf, nil))).With("conn", "x")
	tid, _ := trace.TraceIDFromHex("0102030405060708090a0b0c0d0e0f10")
	sid, _ := trace.SpanIDFromHex("0102030405060708")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}))
	log.InfoContext(ctx, "in a span")
	log.Info("outside")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if !strings.Contains(lines[0], `"trace_id":"0102030405060708090a0b0c0d0e0f10"`) || !strings.Contains(lines[0], `"span_id":"0102030405060708"`) {
		t.Fatalf("no ids: %s", lines[0])
	}
	if strings.Contains(lines[1], "trace_id") {
		t.Fatalf("ids outside a span: %s", lines[1])
	}
}
