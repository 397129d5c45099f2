package listener

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// A handler may detach a connection and finish it later: the listener
// counts it active until done, Shutdown waits for it, and the metrics show
// the counts with the caller's labels. A half-close through a PROXY
// connection reaches the client.
func TestDetachHalfCloseAndMetrics(t *testing.T) {
	reader := testReader()
	finish := make(chan func(), 1)
	h := handlerFunc(func(c *Conn) {
		buf := make([]byte, 5)
		io.ReadFull(c, buf)
		c.Conn.(interface{ CloseWrite() error }).CloseWrite() // through the PROXY prefix
		finish <- c.Detach()
	})
	l := start(t, h, Config{AcceptProxy: true})
	reg, err := l.ObserveMetrics(attribute.String("ndlb.listener", "t"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nhello"))
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after the server's half-close: %q %v", rest, err)
	}
	done := <-finish
	if st := l.Stats(); st.Active != 1 {
		t.Fatalf("a detached connection is not active: %+v", st)
	}
	if got := points(t, reader); got["ndlb.connections.active"] != 1 || got["ndlb.connections.accepted"] != 1 {
		t.Fatalf("metrics %v", got)
	}
	shut := make(chan error, 1)
	go func() { shut <- l.Shutdown(context.Background()) }()
	done()
	done() // once only
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Active != 0 {
		t.Fatalf("after done: %+v", st)
	}
}

// testReader installs, once per test binary, an SDK meter provider with a
// manual reader: the package's instruments are made once, against the
// first provider, so every run of the test must use the same one.
var testReader = sync.OnceValue(func() *sdkmetric.ManualReader {
	r := sdkmetric.NewManualReader()
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)))
	return r
})

// points reads each int64 metric's sum over its points.
func points(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, p := range s.DataPoints {
					if v, _ := p.Attributes.Value("ndlb.listener"); v.AsString() != "t" {
						t.Fatalf("%s lacks the caller's label", m.Name)
					}
					out[m.Name] += p.Value
				}
			}
		}
	}
	return out
}
