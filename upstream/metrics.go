package upstream

import (
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/ndlb/ndlb/internal/carry"
)

// Attribute keys of the metrics, after the OpenTelemetry semantic
// conventions where they have one.
const (
	AttrListener  = attribute.Key("ndlb.listener")
	AttrServer    = attribute.Key("server.address")
	AttrDirection = attribute.Key("network.io.direction")
	AttrState     = attribute.Key("ndlb.target.state")
	// AttrGroup labels a routed listener's target with its group.
	AttrGroup = attribute.Key("ndlb.group")
)

// targetInstruments are the per-target observable instruments, made once.
var targetInstruments = sync.OnceValues(func() (targetMetrics, error) {
	m := otel.Meter("github.com/ndlb/ndlb/upstream")
	var t targetMetrics
	var err, e error
	t.lines, e = m.Int64ObservableCounter("ndlb.target.lines", metric.WithUnit("{line}"),
		metric.WithDescription("Lines the target acknowledged (NDJSON mode)."))
	err = join(err, e)
	t.bytes, e = m.Int64ObservableCounter("ndlb.target.bytes", metric.WithUnit("By"),
		metric.WithDescription("Bytes to (transmit) and from (receive) the target: acknowledged in NDJSON mode, forwarded in passthrough."))
	err = join(err, e)
	t.conns, e = m.Int64ObservableUpDownCounter("ndlb.target.connections", metric.WithUnit("{connection}"),
		metric.WithDescription("Open connections to the target."))
	err = join(err, e)
	t.failures, e = m.Int64ObservableCounter("ndlb.target.failures", metric.WithUnit("{failure}"),
		metric.WithDescription("Failed dials and connections."))
	err = join(err, e)
	t.state, e = m.Int64ObservableGauge("ndlb.target.state",
		metric.WithDescription("1 for the target's state (up, down, draining or disabled), 0 for the others."))
	err = join(err, e)
	return t, err
})

type targetMetrics struct {
	lines, bytes, failures metric.Int64ObservableCounter
	conns                  metric.Int64ObservableUpDownCounter
	state                  metric.Int64ObservableGauge
}

// targetGroup reports the targets of every set: those of a reload's
// replacement and of the listener it replaces add up, and the counters go
// on across them.
var targetGroup = sync.OnceValues(func() (*carry.Group, error) {
	t, err := targetInstruments()
	if err != nil {
		return nil, err
	}
	return carry.New(otel.Meter("github.com/ndlb/ndlb/upstream"), carry.Instruments{
		Counters: []metric.Observable{t.lines, t.bytes, t.failures},
		Sums:     []metric.Observable{t.conns},
		Latest:   []metric.Observable{t.state},
	})
})

func join(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// ObserveMetrics reports the set's targets through the OpenTelemetry
// meter provider, labelled with the listener's name, until the returned
// registration is unregistered. It costs nothing until metrics are read.
// A set that replaces another of the same listener (a reload) goes on
// from its counts (internal/carry).
func (s *Set) ObserveMetrics(listener string) (metric.Registration, error) {
	t, err := targetInstruments()
	if err != nil {
		return nil, err
	}
	g, err := targetGroup()
	if err != nil {
		return nil, err
	}
	l := AttrListener.String(listener)
	tx, rx := AttrDirection.String("transmit"), AttrDirection.String("receive")
	return g.Add(func(o metric.Observer) {
		for _, target := range s.Targets() {
			st := target.Stats()
			id := []attribute.KeyValue{l, AttrServer.String(st.Addr)}
			if g := target.Group(); g != "" {
				id = append(id, AttrGroup.String(g))
			}
			with := func(more ...attribute.KeyValue) metric.ObserveOption {
				return metric.WithAttributes(append(id[:len(id):len(id)], more...)...)
			}
			o.ObserveInt64(t.lines, int64(st.Lines), with(tx))
			o.ObserveInt64(t.bytes, int64(st.Bytes), with(tx))
			o.ObserveInt64(t.bytes, int64(st.BytesIn), with(rx))
			o.ObserveInt64(t.conns, st.Conns, with())
			o.ObserveInt64(t.failures, int64(st.Failures), with())
			for _, state := range []State{StateUp, StateDown, StateDraining, StateDisabled} {
				v := int64(0)
				if st.State == state {
					v = 1
				}
				o.ObserveInt64(t.state, v, with(AttrState.String(state.String())))
			}
		}
	}), nil
}
