package carry

import (
	"context"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// instance stands for a listener instance: its own counts from zero.
type instance struct {
	name            string
	accepted, bytes atomic.Int64
	active, limit   int64
	target          string // a second label set, as a target's
}

type testInstruments struct {
	accepted metric.Int64ObservableCounter
	seconds  metric.Float64ObservableCounter
	active   metric.Int64ObservableUpDownCounter
	limit    metric.Int64ObservableGauge
}

func setup(t *testing.T) (*Group, testInstruments, *sdkmetric.ManualReader) {
	t.Helper()
	r := sdkmetric.NewManualReader()
	m := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)).Meter("carry-test")
	var in testInstruments
	in.accepted, _ = m.Int64ObservableCounter("accepted")
	in.seconds, _ = m.Float64ObservableCounter("seconds")
	in.active, _ = m.Int64ObservableUpDownCounter("active")
	in.limit, _ = m.Int64ObservableGauge("limit")
	g, err := New(m, Instruments{
		Counters: []metric.Observable{in.accepted, in.seconds},
		Sums:     []metric.Observable{in.active},
		Latest:   []metric.Observable{in.limit},
	})
	if err != nil {
		t.Fatal(err)
	}
	return g, in, r
}

func (in testInstruments) add(g *Group, x *instance) *Source {
	return g.Add(func(o metric.Observer) {
		l := metric.WithAttributes(attribute.String("listener", x.name))
		o.ObserveInt64(in.accepted, x.accepted.Load(), l)
		o.ObserveFloat64(in.seconds, float64(x.accepted.Load())/2, l)
		o.ObserveInt64(in.active, x.active, l)
		o.ObserveInt64(in.limit, x.limit, l)
		if x.target != "" {
			o.ObserveInt64(in.accepted, x.bytes.Load(), metric.WithAttributes(attribute.String("listener", x.name),
				attribute.String("target", x.target)))
		}
	})
}

// read returns each point as "name listener[/target]" → value.
func read(t *testing.T, r *sdkmetric.ManualReader) map[string]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			put := func(attrs attribute.Set, v float64) {
				k := m.Name
				if l, ok := attrs.Value("listener"); ok {
					k += " " + l.AsString()
				}
				if tg, ok := attrs.Value("target"); ok {
					k += "/" + tg.AsString()
				}
				if _, dup := out[k]; dup {
					t.Fatalf("%s reported twice", k)
				}
				out[k] = v
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					put(p.Attributes, float64(p.Value))
				}
			case metricdata.Sum[float64]:
				for _, p := range d.DataPoints {
					put(p.Attributes, p.Value)
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					put(p.Attributes, float64(p.Value))
				}
			}
		}
	}
	return out
}

func want(t *testing.T, got map[string]float64, key string, v float64) {
	t.Helper()
	if g, ok := got[key]; !ok || g != v {
		t.Errorf("%s = %v (reported: %v), want %v", key, g, ok, v)
	}
}

// A reload: the replacement counts from zero beside the old instance,
// which then goes. The counters never fall back; gauges are the live
// instances' sum or the newest's value.
func TestCountersGoOnAcrossInstances(t *testing.T) {
	g, in, r := setup(t)
	old := &instance{name: "a", active: 3, limit: 100, target: "t1"}
	old.accepted.Store(10)
	old.bytes.Store(1000)
	other := &instance{name: "b", limit: 7}
	other.accepted.Store(5)
	oldReg := in.add(g, old)
	in.add(g, other)

	got := read(t, r)
	want(t, got, "accepted a", 10)
	want(t, got, "accepted a/t1", 1000)
	want(t, got, "seconds a", 5)
	want(t, got, "accepted b", 5)

	repl := &instance{name: "a", active: 1, limit: 200, target: "t1"}
	repl.accepted.Store(2)
	repl.bytes.Store(20)
	in.add(g, repl)
	old.accepted.Add(1) // the old one drains, and still counts
	got = read(t, r)
	want(t, got, "accepted a", 13)
	want(t, got, "accepted a/t1", 1020)
	want(t, got, "active a", 4)
	want(t, got, "limit a", 200) // the newest's setting
	want(t, got, "accepted b", 5)

	if err := oldReg.Unregister(); err != nil {
		t.Fatal(err)
	}
	_ = oldReg.Unregister() // twice: nothing more
	repl.accepted.Add(4)
	got = read(t, r)
	want(t, got, "accepted a", 17) // 11 from the old, 6 from the replacement
	want(t, got, "seconds a", 8.5)
	want(t, got, "accepted a/t1", 1031-11)
	want(t, got, "active a", 1)
	want(t, got, "limit a", 200)
}

// What removed instances counted is kept only for what a live instance
// still reports: a listener removed for good, or a target no longer in
// its replacement's set, leaves no series behind and no memory.
func TestRemovedSeriesAreForgotten(t *testing.T) {
	g, in, r := setup(t)
	old := &instance{name: "a", target: "t1"}
	old.accepted.Store(10)
	old.bytes.Store(1000)
	oldReg := in.add(g, old)
	gone := &instance{name: "gone"}
	gone.accepted.Store(3)
	goneReg := in.add(g, gone)

	repl := &instance{name: "a", target: "t2"}
	in.add(g, repl)
	oldReg.Unregister()
	goneReg.Unregister()
	got := read(t, r)
	want(t, got, "accepted a", 10)
	want(t, got, "accepted a/t2", 0)
	for _, k := range []string{"accepted a/t1", "accepted gone", "active gone"} {
		if _, ok := got[k]; ok {
			t.Errorf("%s still reported: %v", k, got)
		}
	}
	g.mu.Lock()
	n := len(g.base)
	g.mu.Unlock()
	if n != 1 { // accepted{listener=a}
		t.Errorf("the base holds %d entries, want 1", n)
	}
}
