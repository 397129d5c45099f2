package ndjson

import (
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/ndlb/ndlb/spool"
)

type spoolMetrics struct {
	bytes, records, oldest                                   metric.Int64ObservableGauge
	appends, handed, syncs, replayed, corrupt, dropped, errs metric.Int64ObservableCounter
	syncTime                                                 metric.Float64ObservableCounter
}

var spoolInstruments = sync.OnceValues(func() (spoolMetrics, error) {
	m := otel.Meter("github.com/ndlb/ndlb/ndjson")
	var sm spoolMetrics
	var errs [11]error
	sm.bytes, errs[0] = m.Int64ObservableGauge("ndlb.spool.bytes", metric.WithUnit("By"),
		metric.WithDescription("Bytes in the listener's spool (bounded by --spool-max-bytes)."))
	sm.records, errs[1] = m.Int64ObservableGauge("ndlb.spool.batches", metric.WithUnit("{batch}"),
		metric.WithDescription("Batches in the spool not yet delivered."))
	sm.oldest, errs[2] = m.Int64ObservableGauge("ndlb.spool.oldest_age", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest spool segment holding undelivered batches (0: none)."))
	sm.appends, errs[3] = m.Int64ObservableCounter("ndlb.spool.appends", metric.WithUnit("{batch}"),
		metric.WithDescription("Batches appended to the spool."))
	sm.syncs, errs[4] = m.Int64ObservableCounter("ndlb.spool.fsyncs", metric.WithUnit("{fsync}"),
		metric.WithDescription("fsyncs of the spool (--spool-sync)."))
	sm.syncTime, errs[5] = m.Float64ObservableCounter("ndlb.spool.fsync.duration", metric.WithUnit("s"),
		metric.WithDescription("Time spent in the spool's fsyncs."))
	sm.replayed, errs[6] = m.Int64ObservableCounter("ndlb.spool.replayed", metric.WithUnit("{batch}"),
		metric.WithDescription("Batches a previous instance or process left in the spool, delivered by this one."))
	sm.corrupt, errs[7] = m.Int64ObservableCounter("ndlb.spool.corrupt_tails", metric.WithUnit("{segment}"),
		metric.WithDescription("Spool segments cut at a torn or corrupt record when the spool opened."))
	sm.dropped, errs[8] = m.Int64ObservableCounter("ndlb.spool.dropped", metric.WithUnit("{line}"),
		metric.WithDescription("Lines --spool-full drop-oldest deleted before they were queued (also ndlb.lines.dropped{ndlb.drop.reason=spool_full})."))
	sm.errs, errs[9] = m.Int64ObservableCounter("ndlb.spool.errors", metric.WithUnit("{error}"),
		metric.WithDescription("Spool appends that failed (their lines went to the queue in memory) and fsyncs that failed."))
	sm.handed, errs[10] = m.Int64ObservableCounter("ndlb.spool.handed_off", metric.WithUnit("{batch}"),
		metric.WithDescription("Batches queued straight from memory once spooled (the rest of ndlb.spool.appends were read back from the disk)."))
	return sm, errors.Join(errs[:]...)
})

// observeSpool registers the spool's metrics, labelled with attrs. Until
// the spool is open (a reload's replacement waits for the listener it
// replaces to let it go) its counters are 0 and its gauges absent.
func (s *Server) observeSpool(attrs ...attribute.KeyValue) (metric.Registration, error) {
	m, err := spoolInstruments()
	if err != nil {
		return nil, err
	}
	g, err := group()
	if err != nil {
		return nil, err
	}
	set := metric.WithAttributes(attrs...)
	return g.Add(func(o metric.Observer) {
		var st spool.Stats
		if sp := s.sp.Load(); sp != nil {
			st = sp.Stats()
			o.ObserveInt64(m.bytes, st.Bytes, set)
			o.ObserveInt64(m.records, int64(st.Records), set)
			age := int64(0)
			if !st.Oldest.IsZero() {
				age = int64(time.Since(st.Oldest).Seconds())
			}
			o.ObserveInt64(m.oldest, age, set)
		}
		o.ObserveInt64(m.appends, int64(st.Appends), set)
		o.ObserveInt64(m.handed, int64(st.HandedOff), set)
		o.ObserveInt64(m.syncs, int64(st.Syncs), set)
		o.ObserveFloat64(m.syncTime, st.SyncTime.Seconds(), set)
		o.ObserveInt64(m.replayed, int64(st.Replayed), set)
		o.ObserveInt64(m.corrupt, int64(st.CorruptTails), set)
		o.ObserveInt64(m.dropped, int64(st.DroppedLines), set)
		o.ObserveInt64(m.errs, int64(s.spoolErrors.Load()+st.SyncErrors), set)
	}), nil
}
