package upstream

import (
	"context"
	"sync"
	"testing"

	"go.opentelemetry.io/otel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// The set's metrics report each target's counters and a 1 for its state
// only, labelled with the listener and the target; unregistered, they stop.
func TestObserveMetrics(t *testing.T) {
	reader := testReader()
	s := NewSet([]string{"a:1", "b:1"})
	a, b := s.Targets()[0], s.Targets()[1]
	a.Delivered(7, 70)
	a.Received(5)
	a.ConnOpened()
	b.Drain()
	reg, err := s.ObserveMetrics("logs")
	if err != nil {
		t.Fatal(err)
	}
	got := collect(t, reader)
	want := map[string]int64{
		"ndlb.target.lines a:1 transmit": 7,
		"ndlb.target.bytes a:1 transmit": 70,
		"ndlb.target.bytes a:1 receive":  5,
		"ndlb.target.connections a:1":    1,
		"ndlb.target.state a:1 up":       1,
		"ndlb.target.state a:1 draining": 0,
		"ndlb.target.state b:1 draining": 1,
		"ndlb.target.state b:1 up":       0,
		"ndlb.target.failures b:1":       0,
		"ndlb.target.connections b:1":    0,
		"ndlb.target.state b:1 disabled": 0,
		"ndlb.target.state a:1 down":     0,
		"ndlb.target.lines b:1 transmit": 0,
		"ndlb.target.bytes b:1 receive":  0,
		"ndlb.target.state b:1 down":     0,
		"ndlb.target.state a:1 disabled": 0,
		"ndlb.target.bytes b:1 transmit": 0,
		"ndlb.target.failures a:1":       0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %d (reported %v), want %d", k, g, ok, v)
		}
	}
	if err := reg.Unregister(); err != nil {
		t.Fatal(err)
	}
	if got := collect(t, reader); len(got) != 0 {
		t.Fatalf("after Unregister: %v", got)
	}
}

// A routed listener's targets carry their group, so that an alert can
// tell a group with no target up (its lines wait) from a listener's.
func TestObserveMetricsLabelsGroups(t *testing.T) {
	reader := testReader()
	s := NewSet(nil)
	s.UpdateGroups([]Group{{Name: "audit", Specs: []string{"a:1"}}, {Name: "app", Specs: []string{"b:1"}}})
	reg, err := s.ObserveMetrics("logs")
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	groups := map[string]string{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if g, ok := m.Data.(metricdata.Gauge[int64]); ok && m.Name == "ndlb.target.state" {
				for _, p := range g.DataPoints {
					srv, _ := p.Attributes.Value(AttrServer)
					grp, _ := p.Attributes.Value(AttrGroup)
					groups[srv.AsString()] = grp.AsString()
				}
			}
		}
	}
	if groups["a:1"] != "audit" || groups["b:1"] != "app" {
		t.Fatalf("ndlb.target.state's groups: %v", groups)
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

// collect reads the int64 points as "name target [direction|state]" → value,
// checking each has the listener's label.
func collect(t *testing.T, r *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			var points []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				points = d.DataPoints
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			}
			for _, p := range points {
				if l, _ := p.Attributes.Value(AttrListener); l.AsString() != "logs" {
					t.Fatalf("%s without the listener's label", m.Name)
				}
				key := m.Name
				srv, _ := p.Attributes.Value(AttrServer)
				key += " " + srv.AsString()
				if d, ok := p.Attributes.Value(AttrDirection); ok {
					key += " " + d.AsString()
				}
				if s, ok := p.Attributes.Value(AttrState); ok {
					key += " " + s.AsString()
				}
				out[key] = p.Value
			}
		}
	}
	return out
}

// States print their names, also as text, and an unknown one says so.
func TestStateNames(t *testing.T) {
	for s, want := range map[State]string{StateUp: "up", StateDown: "down", StateDraining: "draining", StateDisabled: "disabled", State(4): "State(4)", State(-1): "State(-1)"} {
		if s.String() != want {
			t.Errorf("%d: %q", s, s.String())
		}
		if b, _ := s.MarshalText(); string(b) != want {
			t.Errorf("%d as text: %q", s, b)
		}
	}
	// A spec that does not parse is an address of weight 1; a duplicate
	// address keeps its first place.
	s := NewSet(nil)
	added, _ := s.Update([]string{"x:1=bad", "y:1", "y:1=3"})
	if len(added) != 2 || added[0].Addr != "x:1=bad" || added[0].Weight() != 1 || added[1].Weight() != 1 {
		t.Fatalf("added %v", added)
	}
}
