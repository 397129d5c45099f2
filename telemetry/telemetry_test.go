package telemetry

import (
	"bytes"
	"context"
	"io"
	stdlog "log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/ndlb/ndlb/internal/logtest"
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

// An OTLP endpoint that answers with garbage fails every export: the
// errors go to ndlb's logger, once a minute with a count, not to the
// standard library's log (plain text among JSON lines, at every export).
func TestExportErrorsAreLoggedSparingly(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write([]byte("\xff\xff\xff garbage"))
	}))
	defer srv.Close()
	vars := map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
		"OTEL_METRIC_EXPORT_INTERVAL": "20", "OTEL_TRACES_EXPORTER": "none",
	}
	for k, v := range vars {
		t.Setenv(k, v)
	}
	var std bytes.Buffer
	stdlog.SetOutput(&std)
	defer stdlog.SetOutput(os.Stderr)
	var buf logtest.Buffer
	tel, err := Setup(context.Background(), Config{Version: "test", Env: env(vars), Logger: slog.New(slog.NewJSONHandler(&buf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := otel.Meter("test").Int64Counter("test.count")
	m.Add(context.Background(), 1)
	deadline := time.Now().Add(10 * time.Second)
	for hits.Load() < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("%d exports in 10 s", hits.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = tel.Shutdown(ctx)
	logged := strings.Count(buf.String(), "OpenTelemetry SDK error")
	if logged != 1 || std.Len() != 0 {
		t.Fatalf("%d exports failed: logged %d times through slog (%s) and through log: %q", hits.Load(), logged, buf.String(), std.String())
	}
}
