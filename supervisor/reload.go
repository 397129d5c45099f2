package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/ndlb/ndlb/admin"
	"github.com/ndlb/ndlb/discovery"
	"github.com/ndlb/ndlb/health"
	"github.com/ndlb/ndlb/ndjson"
	"github.com/ndlb/ndlb/settings"
	"github.com/ndlb/ndlb/upstream"
)

// ErrNoReload is returned by Reload when Config.Load is nil.
var ErrNoReload = errors.New("nothing to reload: ndlb runs without --config")

// Reload reads the Spec again and applies it: new listeners start, removed
// ones drain, live settings change a running listener in place, and other
// changes replace a listener on the same socket while the old one drains
// (see settings.Reload). A Spec that does not load or build changes
// nothing. why is logged.
func (s *Supervisor) Reload(why string) error {
	if s.cfg.Load == nil {
		s.log.Warn("nothing to reload: ndlb runs without --config", "trigger", why)
		return ErrNoReload
	}
	err := s.reload()
	info := &admin.ReloadInfo{Last: time.Now(), LastOutcome: "applied"}
	if prev := s.lastReload.Load(); prev != nil {
		info.LastError, info.LastErrorAt = prev.LastError, prev.LastErrorAt
	}
	// The record and the counters first, then the log: whoever reads the
	// log line and then asks the admin API sees this reload.
	var partial *partialError
	if errors.As(err, &partial) {
		info.LastOutcome, info.LastError, info.LastErrorAt = "partial", err.Error(), info.Last
		s.lastReload.Store(info)
		s.reloads.Add(1)
		s.reloadPartial.Add(1)
		s.log.Error("config reloaded in part: listeners that cannot listen keep their old config or do not run", "trigger", why, "err", err)
		return err
	}
	if err != nil {
		info.LastOutcome, info.LastError, info.LastErrorAt = "refused", err.Error(), info.Last
		s.lastReload.Store(info)
		s.reloadFailures.Add(1)
		s.log.Error("config reload refused; the running config stays", "trigger", why, "err", err)
	} else {
		s.lastReload.Store(info)
		s.reloads.Add(1)
		s.log.Info("config reloaded", "trigger", why)
	}
	return err
}

// ReloadInfo is what the admin API shows of the reloads.
func (s *Supervisor) ReloadInfo() admin.ReloadInfo {
	info := admin.ReloadInfo{Path: s.cfg.Path, Applied: s.reloads.Load(), Refused: s.reloadFailures.Load()}
	if last := s.lastReload.Load(); last != nil {
		info.Last, info.LastOutcome, info.LastError, info.LastErrorAt = last.Last, last.LastOutcome, last.LastError, last.LastErrorAt
	}
	return info
}

var tracer = otel.Tracer("github.com/ndlb/ndlb/supervisor")

func (s *Supervisor) reload() (err error) {
	_, span := tracer.Start(context.Background(), "ndlb.config.reload")
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	spec, err := s.cfg.Load()
	if err != nil {
		return err
	}
	next, err := s.build(spec)
	if err != nil {
		return err
	}
	s.applyProcess(spec)
	if partial := s.apply(span, next); partial != nil {
		return &partialError{partial} // recorded on the span above
	}
	return nil
}

// partialError is a reload applied in part: the listeners it names could
// not listen, and those that ran before run on as they were.
type partialError struct{ err error }

func (e *partialError) Error() string { return e.err.Error() }
func (e *partialError) Unwrap() error { return e.err }

// applyProcess applies the process-wide settings: the log level at once;
// the others only at the next start, which the log says.
func (s *Supervisor) applyProcess(spec Spec) {
	if lv := s.cfg.Level; lv != nil && spec.LogLevel != lv.Level() {
		lv.Set(spec.LogLevel)
		s.log.Info("log level changed", "level", spec.LogLevel.String())
	}
	s.mu.Lock()
	old := s.process
	s.process = spec.Process
	s.mu.Unlock()
	for _, k := range Changed(old, spec.Process) {
		if settings.RuleOf(k) == settings.Restart {
			s.log.Warn("process-wide setting changed; it applies at the next start", "setting", k)
		}
	}
}

// apply runs next in place of the running instances. It returns why the
// listeners that could not listen did not (the rest is applied).
func (s *Supervisor) apply(span trace.Span, next []*instance) (partial error) {
	var failed []error
	old := map[string]*instance{}
	for _, in := range s.snapshot() {
		old[in.spec.Name] = in
	}
	// A listener renamed on the same address takes over the old one's
	// socket, as a replacement does.
	byAddr := map[string]*instance{} // by network and address
	for _, in := range next {
		if old[in.spec.Name] == nil {
			byAddr[in.sock()] = nil
		}
	}
	for _, o := range old {
		if _, ok := byAddr[o.sock()]; ok && !slices.ContainsFunc(next, func(n *instance) bool { return n.spec.Name == o.spec.Name }) {
			byAddr[o.sock()] = o
		}
	}
	var result []*instance
	for _, in := range next {
		name := in.spec.Name
		o := old[name]
		delete(old, name)
		var keys []string
		if o != nil {
			keys = Changed(o.spec.Settings, in.spec.Settings)
		}
		switch {
		case o == nil:
			if prev := byAddr[in.sock()]; prev != nil && in.takeOver(prev) {
				delete(old, prev.spec.Name)
				byAddr[in.sock()] = nil
				seed(prev, in)
				carryState(prev.srv.Set(), in.srv.Set(), in.checks != nil)
				s.start(in)
				span.AddEvent("listener renamed", trace.WithAttributes(upstream.AttrListener.String(name)))
				s.log.Info("listener added on the socket of a removed one; the old one drains", "listener", name,
					"removed", prev.spec.Name, "addr", in.ln.Addr().String())
				prev.replacedBy.Store(in)
				s.drainHandingOff(prev, in, Changed(prev.spec.Settings, in.spec.Settings))
				result = append(result, in)
				continue
			}
			if err := in.listen(); err != nil {
				s.log.Error("new listener cannot listen; skipped", "listener", name, "err", err)
				failed = append(failed, fmt.Errorf("new listener %q cannot listen: %w", name, err))
				continue
			}
			s.start(in)
			span.AddEvent("listener added", trace.WithAttributes(upstream.AttrListener.String(name)))
			s.log.Info("listener added", "listener", name, "addr", in.ln.Addr().String())
			result = append(result, in)
		case len(keys) == 0:
			result = append(result, o)
		case AllLive(keys):
			s.applyLive(o, in, keys)
			span.AddEvent("listener changed in place", trace.WithAttributes(upstream.AttrListener.String(name),
				attribute.StringSlice("ndlb.changed", keys)))
			result = append(result, o)
		default:
			took := in.spec.Addr == o.spec.Addr && in.takeOver(o)
			if !took {
				if err := in.listen(); err != nil {
					s.log.Error("changed listener cannot listen; the old one stays", "listener", name, "err", err)
					failed = append(failed, fmt.Errorf("changed listener %q cannot listen (the old one stays): %w", name, err))
					result = append(result, o)
					continue
				}
			}
			// On the same socket, clients in its backlog are served by
			// the replacement, which keeps the operators' drains and
			// disables and the health verdicts.
			seed(o, in)
			carryState(o.srv.Set(), in.srv.Set(), in.checks != nil)
			s.start(in)
			span.AddEvent("listener replaced", trace.WithAttributes(upstream.AttrListener.String(name)))
			s.log.Info("listener replaced; the old one drains", "listener", name, "changed", keys)
			o.replacedBy.Store(in)
			if took { // o stopped accepting (Handover): its clients can move
				s.drainHandingOff(o, in, keys)
			} else {
				s.drain(o)
			}
			result = append(result, in)
		}
	}
	for _, o := range old {
		span.AddEvent("listener removed", trace.WithAttributes(upstream.AttrListener.String(o.spec.Name)))
		s.log.Info("listener removed; draining", "listener", o.spec.Name)
		s.drain(o)
	}
	s.mu.Lock()
	s.insts = result
	s.mu.Unlock()
	return errors.Join(failed...)
}

// Changed lists, sorted, the settings whose values differ between a and b.
func Changed(a, b map[string][]string) []string {
	var out []string
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// AllLive reports whether a reload can apply every setting of keys to the
// running listener (see settings.Reload).
func AllLive(keys []string) bool {
	for _, k := range keys {
		if !settings.RuleOf(k).Live() {
			return false
		}
	}
	return true
}

// drain shuts o down in the background; lines it drops make Shutdown
// unclean, as those of the listeners still running at exit do.
func (s *Supervisor) drain(o *instance) {
	s.retire(o)
	s.draining.Go(func() {
		if !o.shutdown() {
			s.dirty.Store(true)
		}
	})
}

// retirer is a server that, once a reload took it out of service,
// hands what it could not deliver by its deadline to the listener's
// server now, or goes on delivering it until the process stops.
type retirer interface {
	Retire(ctx context.Context, next func() *ndjson.Server)
}

// retire tells o, which a reload replaced or removed, that the process
// goes on, and where its listener is served now (see
// ndjson.Server.Retire).
func (s *Supervisor) retire(o *instance) {
	r, ok := o.srv.(retirer)
	if !ok || s.stopping == nil {
		return
	}
	r.Retire(s.stopping, func() *ndjson.Server {
		in := o.replacedBy.Load()
		if in == nil {
			return nil // removed
		}
		for n := in.replacedBy.Load(); n != nil; n = in.replacedBy.Load() {
			in = n
		}
		srv, _ := in.srv.(*ndjson.Server)
		return srv
	})
}

// connectionShape are the settings a client connection is made with: a
// reload that changes one does not hand the connections made before to the
// replacement (TLS turned on must not keep plain clients; a new framing
// would misread their streams). They drain on the old settings.
var connectionShape = []string{"framing", "tls-cert", "tls-key", "tls-client-ca", "accept-proxy", "accept-proxy-from"}

// reloadHandOff bounds how long a replaced listener waits for its
// clients' readers to move to its replacement: one held back (every
// target down, the queue full) stays and is drained.
const reloadHandOff = 5 * time.Second

// drainHandingOff moves o's NDJSON client connections (plain TCP, and
// TLS with their sessions) to in, which replaces o on the same socket,
// with the line each was in the middle of, then shuts o down in the
// background, as drain does: a reload cuts no client that could move, and
// loses none of the bytes in its socket. What o already read stays in its
// queue, which it delivers. keys are the settings that changed.
//
// Some clients cannot move, and drain on o's settings: those of a
// listener with a spool (its replacement opens the
// spool only once o lets it go, at the end of o's shutdown: they keep its
// protection meanwhile), and all of them when the change is to how
// connections are made (connectionShape).
func (s *Supervisor) drainHandingOff(o, in *instance, keys []string) {
	h, ok := o.srv.(tlsHandOffer)
	_, ok2 := in.srv.(adopter)
	m, isNDJSON := o.mode.(NDJSON)
	why := ""
	switch {
	case !ok || !ok2 || !isNDJSON || s.stopping == nil:
	case m.Config.Spool != nil:
		why = "the listener has a spool, which its replacement opens only once the old one lets it go"
	case slices.ContainsFunc(keys, func(k string) bool { return slices.Contains(connectionShape, k) }):
		why = "the change is to how connections are framed or secured"
	default:
		o.next.Store(in)
		s.retire(o)
		s.draining.Go(func() {
			ctx, cancel := context.WithTimeout(s.stopping, reloadHandOff)
			defer cancel()
			moved, busy := h.HandOffWithTLS(ctx, func(t ndjson.Transfer) error { return adoptCopy(newest(in), t) })
			if moved+busy > 0 {
				s.log.Info("reload: client connections handed over to the listener's replacement",
					"listener", o.spec.Name, "connections", moved, "held_back", busy)
			}
			if !o.shutdown() {
				s.dirty.Store(true)
			}
		})
		return
	}
	if why != "" {
		s.log.Info("reload: the old listener's clients stay and drain on its settings", "listener", o.spec.Name, "why", why)
	}
	s.drain(o)
}

// tlsHandOffer is a server that can move its client connections, TLS
// ones with their sessions, to another server of this process.
type tlsHandOffer interface {
	HandOffWithTLS(ctx context.Context, give func(ndjson.Transfer) error) (moved, busy int)
}

// newest is the instance that took in's clients last: in, or the one a
// later reload handed them to (instance.next), which may have replaced in
// while a hand-off to it still ran. A later replacement that could not
// take them (a change to how connections are made) ends the chain: in,
// draining, then refuses them, and they stay where they are.
func newest(in *instance) adopter {
	for n := in.next.Load(); n != nil; n = in.next.Load() {
		in = n
	}
	a, _ := in.srv.(adopter)
	return a
}

// adoptCopy gives a a duplicate of t's socket (the old listener closes
// its own once the connection has left it), or, for a TLS connection,
// the connection itself with its session (the old listener lets it go
// without closing it).
func adoptCopy(a adopter, t ndjson.Transfer) error {
	if t.TLS != nil {
		if !a.Adopt(t) {
			return errors.New("the replacement is shutting down, or does not take TLS")
		}
		return nil
	}
	dup, err := dupOf(t.Conn)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(dup), "client")
	nc, err := net.FileConn(f) // a descriptor of its own, non-blocking, in the poller
	f.Close()
	if err != nil {
		return err
	}
	tcp, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		return fmt.Errorf("not a TCP connection: %T", nc)
	}
	t.Conn = tcp
	if !a.Adopt(t) {
		tcp.Close()
		return errors.New("the replacement is shutting down")
	}
	return nil
}

// seed starts the discoverer of in, which replaces o, from the answers o's
// knows (Discoverer.Seed), so that the state carried over reaches its
// discovered targets too.
func seed(o, in *instance) {
	if in.disc != nil {
		in.disc.Seed(o.disc)
	}
}

// applyLive applies the changed live settings of n to the running o. n
// was built but never started; what o needs of it is its spec.
func (s *Supervisor) applyLive(o, n *instance, keys []string) {
	log := o.log
	has := func(rule settings.Reload) bool {
		return slices.ContainsFunc(keys, func(k string) bool { return settings.RuleOf(k) == rule })
	}
	set := o.srv.Set()
	if has(settings.LiveTargets) {
		prev := o.disc
		if o.stopDiscovery != nil {
			o.stopDiscovery()
			o.stopDiscovery, o.disc = nil, nil
		}
		if n.spec.Discovery != nil {
			// New cannot fail: build made the same discoverer for n.
			if d, err := discovery.New(*n.spec.Discovery, set); err == nil {
				d.Seed(prev)
				o.disc = d
				o.stopDiscovery = runDiscovery(d)
			}
		} else {
			logUpdate(log, set, n.spec.Targets)
		}
	}
	if b, ok := o.srv.(interface{ SetBalance(string) error }); ok && has(settings.LiveBalance) {
		if err := b.SetBalance(n.spec.Balance); err == nil {
			log.Info("balancing policy changed", "balance", n.spec.Balance)
		}
	}
	if has(settings.LiveChecks) {
		if o.stopChecks != nil {
			o.stopChecks()
			o.stopChecks, o.checks = nil, nil
		}
		if n.spec.Health != nil {
			hc := *n.spec.Health
			hc.Name = n.spec.Name
			if chk, err := health.New(hc, set); err == nil {
				o.checks = chk
				ctx, cancel := context.WithCancel(context.Background())
				o.stopChecks = background(cancel, chk.Run, ctx)
			}
		} else {
			for _, t := range set.Targets() { // no checks: no verdict
				t.SetChecked(upstream.CheckResult{}, true, true)
			}
			set.ForgetVerdicts()
		}
		check := ""
		if n.spec.Health != nil {
			check = n.spec.Health.Kind
		}
		log.Info("health checks changed", "check", check)
	}
	// The running server keeps its mode; the rest of the spec is n's.
	mode := o.spec.Mode
	o.spec = n.spec
	o.spec.Mode = mode
}

// logUpdate makes addrs the set's static targets and logs the change.
func logUpdate(log *slog.Logger, set *upstream.Set, addrs []string) {
	added, removed := set.Update(addrs)
	for _, t := range added {
		log.Info("target added", "target", t.Addr)
	}
	for _, t := range removed {
		log.Info("target removed; draining", "target", t.Addr)
	}
}

// ObserveReloads reports the reload counters, and whether the last reload
// applied, as metrics.
func (s *Supervisor) ObserveReloads() (metric.Registration, error) {
	m := otel.Meter("github.com/ndlb/ndlb/supervisor")
	c, err := m.Int64ObservableCounter("ndlb.config.reloads", metric.WithUnit("{reload}"),
		metric.WithDescription("Config reloads, by ndlb.outcome: applied; partial (applied, but a listener could not listen and kept its old config or did not start); or refused (the running config stayed)."))
	if err != nil {
		return nil, err
	}
	ok, err := m.Int64ObservableGauge("ndlb.config.last_reload_successful",
		metric.WithDescription("1 while the config file ndlb last read runs whole (or none was reloaded yet), 0 while its last reload was refused or applied in part: the file and what runs differ."))
	if err != nil {
		return nil, err
	}
	applied := metric.WithAttributes(attribute.String("ndlb.outcome", "applied"))
	refused := metric.WithAttributes(attribute.String("ndlb.outcome", "refused"))
	partial := metric.WithAttributes(attribute.String("ndlb.outcome", "partial"))
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		p := s.reloadPartial.Load()
		o.ObserveInt64(c, int64(s.reloads.Load()-min(p, s.reloads.Load())), applied)
		o.ObserveInt64(c, int64(p), partial)
		o.ObserveInt64(c, int64(s.reloadFailures.Load()), refused)
		v := int64(1)
		if last := s.lastReload.Load(); last != nil && last.LastOutcome != "applied" {
			v = 0
		}
		o.ObserveInt64(ok, v)
		return nil
	}, c, ok)
}
