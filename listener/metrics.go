package listener

import (
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/ndlb/ndlb/internal/carry"
)

var listenerInstruments = sync.OnceValues(func() (listenerMetrics, error) {
	m := otel.Meter("github.com/ndlb/ndlb/listener")
	var l listenerMetrics
	var errs [4]error
	l.active, errs[0] = m.Int64ObservableUpDownCounter("ndlb.connections.active", metric.WithUnit("{connection}"),
		metric.WithDescription("Client connections open now."))
	l.accepted, errs[1] = m.Int64ObservableCounter("ndlb.connections.accepted", metric.WithUnit("{connection}"),
		metric.WithDescription("Client connections accepted."))
	l.rejected, errs[2] = m.Int64ObservableCounter("ndlb.connections.rejected", metric.WithUnit("{connection}"),
		metric.WithDescription("Client connections closed before serving: a failed TLS handshake, a bad PROXY header, a peer not allowed to send one, a client address over its limits (ndlb.reason)."))
	l.limited, errs[3] = m.Int64ObservableCounter("ndlb.connections.limit_reached", metric.WithUnit("{event}"),
		metric.WithDescription("Times accepting paused at --max-conns."))
	for _, err := range errs {
		if err != nil {
			return l, err
		}
	}
	return l, nil
})

type listenerMetrics struct {
	active                      metric.Int64ObservableUpDownCounter
	accepted, rejected, limited metric.Int64ObservableCounter
}

// listenerGroup reports every listener's metrics: a reload's replacement
// and the listener it replaces add up, and the counters go on across them.
var listenerGroup = sync.OnceValues(func() (*carry.Group, error) {
	m, err := listenerInstruments()
	if err != nil {
		return nil, err
	}
	return carry.New(otel.Meter("github.com/ndlb/ndlb/listener"), carry.Instruments{
		Counters: []metric.Observable{m.accepted, m.rejected, m.limited},
		Sums:     []metric.Observable{m.active},
	})
})

// ObserveMetrics reports the listener's counters through the OpenTelemetry
// meter provider, labelled with attrs (the listener's name and mode), until
// the registration is unregistered. A listener that replaces another
// with the same attributes goes on from its counts (internal/carry).
func (l *Listener) ObserveMetrics(attrs ...attribute.KeyValue) (metric.Registration, error) {
	m, err := listenerInstruments()
	if err != nil {
		return nil, err
	}
	g, err := listenerGroup()
	if err != nil {
		return nil, err
	}
	set := metric.WithAttributes(attrs...)
	tls := metric.WithAttributes(append(attrs, attribute.String("ndlb.reason", "tls_handshake"))...)
	proxy := metric.WithAttributes(append(attrs, attribute.String("ndlb.reason", "proxy_header"))...)
	untrusted := metric.WithAttributes(append(attrs, attribute.String("ndlb.reason", "proxy_untrusted"))...)
	srcConns := metric.WithAttributes(append(attrs, attribute.String("ndlb.reason", overConns))...)
	srcRate := metric.WithAttributes(append(attrs, attribute.String("ndlb.reason", overRate))...)
	return g.Add(func(o metric.Observer) {
		st := l.Stats()
		o.ObserveInt64(m.active, st.Active, set)
		o.ObserveInt64(m.accepted, int64(st.Accepted), set)
		o.ObserveInt64(m.rejected, int64(st.HandshakeFailed), tls)
		o.ObserveInt64(m.rejected, int64(st.ProxyRejected), proxy)
		o.ObserveInt64(m.rejected, int64(st.ProxyUntrusted), untrusted)
		o.ObserveInt64(m.rejected, int64(st.SourceConns), srcConns)
		o.ObserveInt64(m.rejected, int64(st.SourceRate), srcRate)
		o.ObserveInt64(m.limited, int64(st.LimitReached), set)
	}), nil
}
