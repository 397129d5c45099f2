package bench

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkTelemetryOverhead runs the shipper end-to-end load through two
// ndlb processes, one with telemetry off and one exporting traces and
// metrics over OTLP/HTTP to a collector stub (and serving /metrics, scraped
// every second), alternately in each iteration, and reports the lines/s of
// both and their ratio.
//
//	go test ./bench -run '^$' -bench TelemetryOverhead -benchtime 3x -count 3
func BenchmarkTelemetryOverhead(b *testing.B) {
	bin := buildNDLB(b)
	var exports, traces, metricExports, scrapes atomic.Int64
	stub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		exports.Add(1)
		switch r.URL.Path {
		case "/v1/traces":
			traces.Add(1)
		case "/v1/metrics":
			metricExports.Add(1)
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer stub.Close()
	sinks, addrs := newSinks(b, 2)
	off := startNDLB(b, bin, addrs)
	defer off.stop()
	adminPort := freeLoopbackPort(b)
	on := startNDLB(b, bin, addrs, "NDLB_ADMIN=127.0.0.1:"+adminPort,
		"OTEL_EXPORTER_OTLP_ENDPOINT="+stub.URL, "OTEL_METRIC_EXPORT_INTERVAL=1000", "OTEL_BSP_SCHEDULE_DELAY=500")
	defer on.stop()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // a Prometheus scraping every second
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if resp, err := http.Get("http://127.0.0.1:" + adminPort + "/metrics"); err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK && strings.Contains(string(body), "ndlb_lines_delivered_total") {
						scrapes.Add(1)
					}
				}
			}
		}
	})
	defer func() { close(stop); wg.Wait() }()
	var tOff, tOn time.Duration
	for b.Loop() {
		tOff += generate(b, shipper{}, true, []string{off.addr}, sinks)
		tOn += generate(b, shipper{}, true, []string{on.addr}, sinks)
	}
	lines := float64(b.N) * e2eBytes / 256
	b.ReportMetric(lines/tOff.Seconds(), "off-lines/s")
	b.ReportMetric(lines/tOn.Seconds(), "on-lines/s")
	b.ReportMetric(tOff.Seconds()/tOn.Seconds(), "on/off")
	b.ReportMetric(float64(exports.Load()), "otlp-exports")
	b.ReportMetric(0, "ns/op")
	// The "on" runs must really have exported: otherwise the ratio
	// compares off with off.
	stop2 := time.Now().Add(5 * time.Second)
	for (traces.Load() == 0 || metricExports.Load() == 0 || scrapes.Load() == 0) && time.Now().Before(stop2) {
		time.Sleep(100 * time.Millisecond)
	}
	if traces.Load() == 0 || metricExports.Load() == 0 || scrapes.Load() == 0 {
		b.Fatalf("telemetry was not on: %d trace exports, %d metric exports, %d good scrapes of /metrics",
			traces.Load(), metricExports.Load(), scrapes.Load())
	}
}
