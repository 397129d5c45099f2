package discovery

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/upstream"
)

// DefaultInterval is Config.Interval.
const DefaultInterval = 30 * time.Second

// DefaultMaxTargets is Config.MaxTargets' default: more addresses than a
// log tier's receivers, few enough that a name answering thousands (a
// misconfigured record, a hostile resolver) cannot open thousands of
// connections per target.
const DefaultMaxTargets = 64

// ErrConfig is wrapped by Validate's errors.
var ErrConfig = errors.New("discovery: invalid config")

// Resolver looks names up. *net.Resolver satisfies it.
type Resolver interface {
	LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error)
	LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
}

// Config configures discovery for one target set.
type Config struct {
	// Static targets (host:port) are always in the set, first.
	Static []string
	// DNS names with a port (name:port) are resolved to A and AAAA
	// records.
	DNS []string
	// SRV names (_service._proto.name) are resolved to SRV records; the
	// records with the lowest priority value that resolve are used.
	SRV []string
	// Interval between refreshes.
	Interval time.Duration
	// MaxTargets bounds the targets DNS adds, over all names (static
	// targets aside): the first ones in the order of the names, and of
	// each name's answer (sorted), are kept. 0 means DefaultMaxTargets.
	MaxTargets int
	// Server, if set, is the DNS server (HOST:PORT) every lookup asks,
	// instead of the system's; errors name it.
	Server string
	// Resolver, if set, looks names up instead (tests); nil means
	// net.DefaultResolver, or one that asks Server. Refresh calls it
	// from several goroutines at once.
	Resolver Resolver
	// Logger receives changes and lookup failures; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Validate reports the first problem as an *invalid.Error naming the field,
// wrapping ErrConfig.
func (c Config) Validate() error {
	if c.Interval <= 0 {
		return invalid.Field(ErrConfig, "Interval", "interval %s must be positive", c.Interval)
	}
	if c.MaxTargets < 0 {
		return invalid.Field(ErrConfig, "MaxTargets", "at most %d targets: must be at least 1 (0: %d)", c.MaxTargets, DefaultMaxTargets)
	}
	if c.Server != "" {
		host, port, err := net.SplitHostPort(c.Server)
		if p, perr := strconv.Atoi(port); err != nil || !upstream.ValidHost(host) || perr != nil || p < 1 || p > 65535 {
			return invalid.Field(ErrConfig, "Server", "DNS server %q: want HOST:PORT, such as 10.0.0.2:53", c.Server)
		}
	}
	for _, n := range c.DNS {
		host, port, err := net.SplitHostPort(n)
		if p, perr := strconv.Atoi(port); err != nil || !upstream.ValidHost(host) || perr != nil || p < 1 || p > 65535 {
			return invalid.Field(ErrConfig, "DNS", "DNS target %q: want NAME:PORT (a name of letters, digits, hyphens and dots)", n)
		}
	}
	for _, n := range c.SRV {
		if _, _, _, err := splitSRV(n); err != nil {
			return err
		}
	}
	return nil
}

// serverResolver asks one DNS server; its errors name that server rather
// than the system's, which Go's resolver reports although Dial went
// elsewhere.
type serverResolver struct {
	r      *net.Resolver
	server string
}

func (s serverResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	ips, err := s.r.LookupIPAddr(ctx, host)
	return ips, s.name(err)
}

func (s serverResolver) LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error) {
	cname, srvs, err := s.r.LookupSRV(ctx, service, proto, name)
	return cname, srvs, s.name(err)
}

// name sets the server of a *net.DNSError.
func (s serverResolver) name(err error) error {
	var de *net.DNSError
	if errors.As(err, &de) {
		de.Server = s.server
	}
	return err
}

// splitSRV splits _service._proto.name.
func splitSRV(n string) (service, proto, name string, err error) {
	parts := strings.SplitN(n, ".", 3)
	if len(parts) != 3 || !strings.HasPrefix(parts[0], "_") || !strings.HasPrefix(parts[1], "_") || parts[2] == "" || !upstream.ValidHost(n) {
		return "", "", "", invalid.Field(ErrConfig, "SRV", "SRV name %q: want _service._proto.name", n)
	}
	return parts[0][1:], parts[1][1:], parts[2], nil
}

// Discoverer keeps a target set in step with DNS.
type Discoverer struct {
	cfg    Config
	set    *upstream.Set
	res    Resolver
	log    *slog.Logger
	mu     sync.Mutex
	last   map[string][]string // name: its last good answer; guarded by mu
	seeded bool                // Seed gave it what a discoverer before it knew
	capped int                 // addresses the last update left out (MaxTargets)
}

// New returns a discoverer for set; cfg must be valid.
func New(cfg Config, set *upstream.Set) (*Discoverer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Discoverer{cfg: cfg, set: set, res: cfg.Resolver, log: cfg.Logger, last: map[string][]string{}}
	if d.cfg.MaxTargets == 0 {
		d.cfg.MaxTargets = DefaultMaxTargets
	}
	switch {
	case d.res == nil && cfg.Server != "":
		d.res = serverResolver{r: &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var dialer net.Dialer
			return dialer.DialContext(ctx, network, cfg.Server)
		}}, server: cfg.Server}
	case d.res == nil:
		d.res = net.DefaultResolver
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	return d, nil
}

// Run refreshes every interval until ctx is done. Targets that left DNS
// drain; whoever owns the set prunes them (Set.Prune) once drained.
func (d *Discoverer) Run(ctx context.Context) {
	refresh := time.NewTicker(d.cfg.Interval)
	defer refresh.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			d.Refresh(ctx)
		}
	}
}

// maxLookups bounds the names Refresh looks up at once.
const maxLookups = 16

// Refresh resolves every name once and updates the set: static targets,
// then each name's addresses in the order given. It returns the addresses.
// The names are looked up at once (up to maxLookups at a time), so that a
// resolver that does not answer costs one lookup's timeout, not one per
// name, at start and at each refresh (an SRV name's targets are then
// resolved one by one).
func (d *Discoverer) Refresh(ctx context.Context) []string {
	names := slices.Concat(d.cfg.DNS, d.cfg.SRV)
	answers := make([][]string, len(names))
	sem := make(chan struct{}, maxLookups)
	var wg sync.WaitGroup
	for i, n := range names {
		lookup := d.lookupDNS
		if i >= len(d.cfg.DNS) {
			lookup = d.lookupSRV
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			answers[i] = d.answer(n, func() ([]string, error) { return lookup(ctx, n) })
		})
	}
	wg.Wait()
	var found []string
	for _, a := range answers {
		found = appendNew(found, a...)
	}
	return d.update(found)
}

// update makes the static targets and found, the addresses DNS gave (at
// most MaxTargets of them), the set's targets, says what came and went,
// and returns the targets.
func (d *Discoverer) update(found []string) []string {
	switch n := len(found) - d.cfg.MaxTargets; {
	case n > d.capped:
		// Logged as the cap starts to apply, or leaves more out than
		// it did: not at every refresh of an answer that varies.
		d.log.Warn("DNS gives more targets than --dns-max-targets; the first are used, the rest drain", "max", d.cfg.MaxTargets,
			"answered", len(found), "left_out", n)
		d.capped = n
	case n <= 0 && d.capped > 0:
		d.log.Info("DNS gives no more targets than --dns-max-targets again", "max", d.cfg.MaxTargets, "answered", len(found))
		d.capped = 0
	}
	found = found[:min(len(found), d.cfg.MaxTargets)]
	addrs := appendNew(slices.Clone(d.cfg.Static), found...)
	added, removed := d.set.Update(addrs)
	for _, t := range added {
		d.log.Info("target discovered", "target", t.Addr)
	}
	for _, t := range removed {
		d.log.Info("target gone from DNS: draining", "target", t.Addr)
	}
	return addrs
}

// Seed gives d the last answers prev had for the names both resolve, and
// when it then knows an answer for every name, puts them with d's static
// targets in d's set at once, without a lookup (else the first lookups
// are waited for, as at start). A discoverer that
// replaces another (a reload) starts from what the other knew: a DNS
// outage during a reload drains nothing, and the reload need not wait for
// DNS. prev may be nil, and may still be running.
func (d *Discoverer) Seed(prev *Discoverer) {
	var known map[string][]string
	if prev != nil {
		prev.mu.Lock()
		known = maps.Clone(prev.last)
		prev.mu.Unlock()
	}
	var found []string
	all := true
	d.mu.Lock()
	for _, n := range slices.Concat(d.cfg.DNS, d.cfg.SRV) {
		a, ok := known[n]
		if !ok {
			all = false
			continue
		}
		d.last[n] = a
		found = appendNew(found, a...)
	}
	d.seeded = all
	d.mu.Unlock()
	if all {
		d.update(found)
	}
}

// Seeded reports whether Seed put an answer for every name in the set:
// the first lookups need not be waited for.
func (d *Discoverer) Seeded() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.seeded
}

// answer runs lookup for name, keeping the last good answer when it fails.
// An authoritative "no such name" or an empty answer is an answer: the
// name's targets drain. Timeouts and server failures are not.
func (d *Discoverer) answer(name string, lookup func() ([]string, error)) []string {
	got, err := lookup()
	d.mu.Lock()
	defer d.mu.Unlock()
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		if len(d.last[name]) > 0 {
			d.log.Warn("DNS name has no records now; its targets drain", "name", name)
		}
		got, err = nil, nil
	}
	if err != nil {
		prev, ok := d.last[name]
		d.log.Warn("DNS lookup failed; keeping the last answer", "name", name, "err", err, "kept", len(prev))
		if ok {
			return prev
		}
		return nil
	}
	d.last[name] = got
	return got
}

func (d *Discoverer) lookupDNS(ctx context.Context, n string) ([]string, error) {
	host, port, _ := net.SplitHostPort(n)
	ips, err := d.res.LookupIPAddr(ctx, host)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, ip := range ips {
		out = append(out, net.JoinHostPort(ip.IP.String(), port))
	}
	slices.Sort(out) // a stable order, whatever order DNS answers in
	return slices.Compact(out), nil
}

// lookupSRV returns the targets of the lowest priority value that
// resolves, with their weights scaled to 1..upstream.MaxWeight (a weight
// of 0 gets the smallest share). SRV targets are names; each is resolved
// to its addresses.
func (d *Discoverer) lookupSRV(ctx context.Context, n string) ([]string, error) {
	service, proto, name, _ := splitSRV(n)
	_, srvs, err := d.res.LookupSRV(ctx, service, proto, name)
	if err != nil {
		return nil, err
	}
	slices.SortStableFunc(srvs, func(a, b *net.SRV) int { return int(a.Priority) - int(b.Priority) })
	var out []string
	for i := 0; i < len(srvs) && len(out) == 0; {
		prio := srvs[i].Priority
		j := i
		maxW, minW := srvs[i].Weight, srvs[i].Weight
		for ; j < len(srvs) && srvs[j].Priority == prio; j++ {
			maxW, minW = max(maxW, srvs[j].Weight), min(minW, srvs[j].Weight)
		}
		for ; i < j; i++ {
			port := strconv.Itoa(int(srvs[i].Port))
			host := strings.TrimSuffix(srvs[i].Target, ".")
			w := 1 // equal weights: plain targets
			if maxW != minW {
				w = max(1, int(srvs[i].Weight)*upstream.MaxWeight/int(maxW))
			}
			addrs := []string{net.JoinHostPort(host, port)}
			if net.ParseIP(host) == nil {
				got, err := d.lookupDNS(ctx, addrs[0])
				if err != nil {
					d.log.Warn("SRV target does not resolve", "srv", n, "target", host, "err", err)
					continue
				}
				addrs = got
			}
			for _, a := range addrs {
				if w != 1 {
					a += "=" + strconv.Itoa(w)
				}
				out = append(out, a)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func appendNew(dst []string, add ...string) []string {
	for _, a := range add {
		if !slices.Contains(dst, a) {
			dst = append(dst, a)
		}
	}
	return dst
}
