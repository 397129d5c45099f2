package route

import (
	"errors"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/ndlb/ndlb/internal/carry"
	"github.com/ndlb/ndlb/upstream"
)

// AttrGroup labels a metric with its target group.
const AttrGroup = upstream.AttrGroup

const meterName = "github.com/ndlb/ndlb/route"

type instruments struct {
	messages, moved, routed metric.Int64ObservableCounter
	load, maxLoad           metric.Float64ObservableGauge
}

var newInstruments = sync.OnceValues(func() (instruments, error) {
	m := otel.Meter(meterName)
	var in instruments
	var errs [5]error
	in.messages, errs[0] = m.Int64ObservableCounter("ndlb.route.messages", metric.WithUnit("{message}"),
		metric.WithDescription("Messages routed, by ndlb.group and ndlb.route.outcome: keyed (by --route-key), spread (a group balanced by spreading), missing, malformed, too_long (no usable key: spread). Unrouted messages are ndlb.lines.dropped{ndlb.drop.reason=unrouted}."))
	in.moved, errs[1] = m.Int64ObservableCounter("ndlb.route.moved", metric.WithUnit("{message}"),
		metric.WithDescription("Keyed messages sent to other than their key's own target, by ndlb.route.reason: down (it takes no work: failed, drained, disabled) or load (over --route-max-load)."))
	in.routed, errs[2] = m.Int64ObservableCounter("ndlb.route.target.messages", metric.WithUnit("{message}"),
		metric.WithDescription("Keyed messages routed to each target."))
	in.load, errs[3] = m.Float64ObservableGauge("ndlb.route.target.load", metric.WithUnit("1"),
		metric.WithDescription("Each target's keyed messages in the load window over its share of its group's: 1 is its share; --route-max-load is the bound."))
	in.maxLoad, errs[4] = m.Float64ObservableGauge("ndlb.route.max_load", metric.WithUnit("1"),
		metric.WithDescription("The load bound, --route-max-load (0: none)."))
	return in, errors.Join(errs[:]...)
})

// metricGroup reports every router's metrics: those of a reload's replacement
// and of the listener it replaces add up, and the counters go on across
// them.
var metricGroup = sync.OnceValues(func() (*carry.Group, error) {
	in, err := newInstruments()
	if err != nil {
		return nil, err
	}
	return carry.New(otel.Meter(meterName), carry.Instruments{
		Counters: []metric.Observable{in.messages, in.moved, in.routed},
		Latest:   []metric.Observable{in.load, in.maxLoad},
	})
})

// ObserveMetrics registers the router's metrics, labelled with attrs (the
// listener's). A router that replaces another with the same attributes
// goes on from its counts (internal/carry).
func (r *Router) ObserveMetrics(attrs ...attribute.KeyValue) (metric.Registration, error) {
	in, err := newInstruments()
	if err != nil {
		return nil, err
	}
	g, err := metricGroup()
	if err != nil {
		return nil, err
	}
	with := func(more ...attribute.KeyValue) metric.MeasurementOption {
		return metric.WithAttributes(append(append([]attribute.KeyValue(nil), attrs...), more...)...)
	}
	return g.Add(func(o metric.Observer) {
		st := r.Stats()
		o.ObserveFloat64(in.maxLoad, r.cfg.MaxLoad, with())
		o.ObserveInt64(in.moved, int64(st.MovedDown), with(attribute.String("ndlb.route.reason", "down")))
		o.ObserveInt64(in.moved, int64(st.MovedLoad), with(attribute.String("ndlb.route.reason", "load")))
		for _, g := range st.Groups {
			grp := AttrGroup.String(g.Name)
			for _, name := range outcomeNames {
				o.ObserveInt64(in.messages, int64(g.Messages[name]), with(grp, attribute.String("ndlb.route.outcome", name)))
			}
			for _, t := range g.Targets {
				srv := upstream.AttrServer.String(t.Addr)
				o.ObserveInt64(in.routed, int64(t.Routed), with(grp, srv))
				if t.Eligible {
					o.ObserveFloat64(in.load, t.Load, with(grp, srv))
				}
			}
		}
	}), nil
}
