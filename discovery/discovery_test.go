package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/internal/dnstest"
	"github.com/ndlb/ndlb/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newDNS(t *testing.T) *dnstest.Server {
	t.Helper()
	s, err := dnstest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func addrs(set *upstream.Set) (live, draining []string) {
	for _, t := range set.Targets() {
		if t.Removed() {
			draining = append(draining, t.Addr)
		} else {
			live = append(live, t.Addr)
		}
	}
	return live, draining
}

// Records change from {A, B} to {B, C}: A drains (and leaves once it has
// no connection), C joins, B stays; a failed lookup keeps the last answer.
func TestDNSChanges(t *testing.T) {
	dns := newDNS(t)
	dns.SetIPs("logs.test", "10.0.0.1", "10.0.0.2")
	set := upstream.NewSet(nil)
	d, err := New(Config{Static: []string{"192.0.2.9:5170"}, DNS: []string{"logs.test.:5170"}, Interval: DefaultInterval,
		Resolver: dns.Resolver(), Logger: slog.New(slog.DiscardHandler)}, set)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	d.Refresh(ctx)
	live, _ := addrs(set)
	if !slices.Equal(live, []string{"192.0.2.9:5170", "10.0.0.1:5170", "10.0.0.2:5170"}) {
		t.Fatalf("targets %v", live)
	}
	a, _ := set.Lookup("10.0.0.1:5170")
	a.ConnOpened() // a connection still open on A
	dns.SetIPs("logs.test", "10.0.0.2", "10.0.0.3")
	d.Refresh(ctx)
	live, draining := addrs(set)
	if !slices.Equal(live, []string{"192.0.2.9:5170", "10.0.0.2:5170", "10.0.0.3:5170"}) || !slices.Equal(draining, []string{"10.0.0.1:5170"}) {
		t.Fatalf("live %v draining %v", live, draining)
	}
	if a.State() != upstream.StateDraining {
		t.Fatalf("A is %s, want draining", a.State())
	}
	a.ConnClosed()
	d.Refresh(ctx)
	if _, draining = addrs(set); !slices.Equal(draining, []string{"10.0.0.1:5170"}) {
		t.Fatalf("discovery pruned A itself: draining %v", draining) // the supervisor's pruner does
	}
	if pruned := set.Prune(); len(pruned) != 1 || pruned[0] != a {
		t.Fatalf("A not prunable after its last connection: %v", pruned)
	}
	// The name disappears (NXDOMAIN): its last answer is kept.
	dns.SetIPs("other.test", "10.9.9.9")
	d2, _ := New(Config{DNS: []string{"gone.test.:1"}, Interval: DefaultInterval, Resolver: dns.Resolver(), Logger: slog.New(slog.DiscardHandler)}, upstream.NewSet(nil))
	if got := d2.Refresh(ctx); len(got) != 0 {
		t.Fatalf("unknown name gave %v", got)
	}
	d.cfg.DNS = []string{"logs.test.:5170"}
	dns.SetIPs("logs.test") // now no records at all
	d.Refresh(ctx)
	if live, _ = addrs(set); len(live) != 1 {
		t.Fatalf("an empty answer should drain the name's targets: %v", live)
	}
}

func TestSRVPriority(t *testing.T) {
	dns := newDNS(t)
	dns.SetIPs("r1.test", "10.1.0.1")
	dns.SetIPs("r2.test", "10.1.0.2")
	dns.SetIPs("backup.test", "10.1.0.9")
	dns.SetSRV("_ndjson._tcp.logs.test",
		net.SRV{Target: "r1.test", Port: 5170, Priority: 10, Weight: 50},
		net.SRV{Target: "r2.test", Port: 5171, Priority: 10, Weight: 50},
		net.SRV{Target: "backup.test", Port: 5170, Priority: 20, Weight: 1},
	)
	set := upstream.NewSet(nil)
	d, err := New(Config{SRV: []string{"_ndjson._tcp.logs.test."}, Interval: DefaultInterval, Resolver: dns.Resolver(), Logger: slog.New(slog.DiscardHandler)}, set)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Refresh(context.Background()); !slices.Equal(got, []string{"10.1.0.1:5170", "10.1.0.2:5171"}) {
		t.Fatalf("priority 10 targets: %v", got)
	}
	// Priority 10's targets stop resolving: the backup is used.
	dns.SetIPs("r1.test")
	dns.SetIPs("r2.test")
	if got := d.Refresh(context.Background()); !slices.Equal(got, []string{"10.1.0.9:5170"}) {
		t.Fatalf("fallback to priority 20: %v", got)
	}
	// Unequal weights become target weights, scaled to 1..256.
	dns.SetIPs("r1.test", "10.1.0.1")
	dns.SetIPs("r2.test", "10.1.0.2")
	dns.SetSRV("_ndjson._tcp.logs.test",
		net.SRV{Target: "r1.test", Port: 5170, Priority: 10, Weight: 30},
		net.SRV{Target: "r2.test", Port: 5171, Priority: 10, Weight: 10},
	)
	if got := d.Refresh(context.Background()); !slices.Equal(got, []string{"10.1.0.1:5170=256", "10.1.0.2:5171=85"}) {
		t.Fatalf("weighted: %v", got)
	}
	if r1, _ := set.Lookup("10.1.0.1:5170"); r1.Weight() != 256 {
		t.Fatalf("weight %d", r1.Weight())
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []Config{
		{Interval: 0},
		{Interval: 1, DNS: []string{"no-port"}},
		{Interval: 1, DNS: []string{"name:99999"}},
		{Interval: 1, SRV: []string{"logs.test"}},
	} {
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// A DNS outage keeps the last answer: nothing drains.
func TestOutageKeepsLastAnswer(t *testing.T) {
	dns := newDNS(t)
	dns.SetIPs("logs.test", "10.0.0.1")
	set := upstream.NewSet(nil)
	d, _ := New(Config{DNS: []string{"logs.test.:5170"}, Interval: DefaultInterval, Resolver: dns.Resolver(), Logger: slog.New(slog.DiscardHandler)}, set)
	d.Refresh(context.Background())
	dns.Close() // the server is gone: lookups fail, they do not say "no such name"
	if got := d.Refresh(context.Background()); !slices.Equal(got, []string{"10.0.0.1:5170"}) {
		t.Fatalf("after the outage: %v", got)
	}
	if live, draining := addrs(set); len(live) != 1 || len(draining) != 0 {
		t.Fatalf("live %v draining %v", live, draining)
	}
}

// A discoverer that replaces another (a reload) starts from its answers:
// during a DNS outage, nothing drains, whether a name's answer was known
// before or, for a name new in the reload, not (the set waits for it).
func TestSeedKeepsAnswersThroughAnOutage(t *testing.T) {
	dns := newDNS(t)
	dns.SetIPs("logs.test", "10.0.0.1", "10.0.0.2")
	dns.SetIPs("more.test", "10.0.0.3")
	set := upstream.NewSet(nil)
	cfg := Config{Static: []string{"192.0.2.9:5170"}, DNS: []string{"logs.test.:5170"}, Interval: DefaultInterval,
		Resolver: dns.Resolver(), Logger: slog.New(slog.DiscardHandler)}
	old, _ := New(cfg, set)
	old.Refresh(context.Background())
	want := []string{"192.0.2.9:5170", "10.0.0.1:5170", "10.0.0.2:5170"}
	dns.Close()

	cfg.Interval = 2 * DefaultInterval
	d, _ := New(cfg, set)
	if d.Seeded() {
		t.Fatal("seeded before Seed")
	}
	d.Seed(old)
	if !d.Seeded() {
		t.Fatal("not seeded after Seed")
	}
	if got := d.Refresh(context.Background()); !slices.Equal(got, want) {
		t.Fatalf("after a reload during the outage: %v", got)
	}
	if live, draining := addrs(set); !slices.Equal(live, want) || len(draining) != 0 {
		t.Fatalf("live %v draining %v", live, draining)
	}

	// A name the old one did not resolve: Seed leaves the set as it is.
	cfg.Static, cfg.DNS = nil, []string{"logs.test.:5170", "more.test.:5170"}
	d2, _ := New(cfg, set)
	d2.Seed(d)
	if live, draining := addrs(set); !slices.Equal(live, want) || len(draining) != 0 {
		t.Fatalf("after Seed with a new name: live %v draining %v", live, draining)
	}
	// Seeded from its answers alone, the static target goes.
	cfg.DNS = []string{"logs.test.:5170"}
	d3, _ := New(cfg, set)
	d3.Seed(d)
	if live, _ := addrs(set); !slices.Equal(live, want[1:]) {
		t.Fatalf("after Seed without the static target: live %v", live)
	}
}

// With Server set, lookups ask it, and a failure names it (not the system's
// resolver, which Go's errors would name).
func TestServerIsAskedAndNamed(t *testing.T) {
	dns := newDNS(t)
	dns.SetIPs("logs.test", "10.0.0.1")
	var logs strings.Builder
	set := upstream.NewSet(nil)
	d, err := New(Config{DNS: []string{"logs.test.:5170"}, Interval: DefaultInterval, Server: dns.Addr(),
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}, set)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Refresh(context.Background()); !slices.Equal(got, []string{"10.0.0.1:5170"}) {
		t.Fatalf("through the server: %v", got)
	}
	dns.Close()
	d.Refresh(context.Background())
	if !strings.Contains(logs.String(), "DNS lookup failed") || !strings.Contains(logs.String(), "on "+dns.Addr()+":") {
		t.Fatalf("the failure does not name %s:\n%s", dns.Addr(), logs.String())
	}
	if err := (Config{Interval: time.Second, Server: "nope"}).Validate(); err == nil {
		t.Fatal("a server that is not HOST:PORT is accepted")
	}
}

// A name that answers more addresses than MaxTargets adds only the first
// (in sorted order), beside every static target; when the answer shrinks
// under the bound, all of it is used.
func TestMaxTargets(t *testing.T) {
	dns := newDNS(t)
	var ips []string
	for i := range 40 {
		ips = append(ips, fmt.Sprintf("10.0.%d.%d", i/10, i%10+1))
	}
	dns.SetIPs("many.test", ips...)
	set := upstream.NewSet(nil)
	d, err := New(Config{Static: []string{"192.0.2.9:5170"}, DNS: []string{"many.test.:5170"}, Interval: DefaultInterval, MaxTargets: 5,
		Resolver: dns.Resolver(), Logger: slog.New(slog.DiscardHandler)}, set)
	if err != nil {
		t.Fatal(err)
	}
	got := d.Refresh(context.Background())
	if want := []string{"192.0.2.9:5170", "10.0.0.10:5170", "10.0.0.1:5170", "10.0.0.2:5170", "10.0.0.3:5170", "10.0.0.4:5170"}; !slices.Equal(got, want) {
		t.Fatalf("targets %v, want %v", got, want)
	}
	dns.SetIPs("many.test", "10.0.0.2", "10.0.3.3")
	if got := d.Refresh(context.Background()); !slices.Equal(got, []string{"192.0.2.9:5170", "10.0.0.2:5170", "10.0.3.3:5170"}) {
		t.Fatalf("targets %v after the answer shrank", got)
	}
	if _, err := New(Config{DNS: []string{"a.test:1"}, Interval: time.Second, MaxTargets: -1}, set); err == nil {
		t.Fatal("MaxTargets -1 accepted")
	}
}

// barrierResolver holds every address lookup until n of them are under way
// (or ctx ends), then asks the real resolver.
type barrierResolver struct {
	*net.Resolver
	n       int
	started chan struct{}
}

func (b *barrierResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	b.started <- struct{}{}
	for len(b.started) < b.n {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return b.Resolver.LookupIPAddr(ctx, host)
}

// The names are looked up at once: a resolver that does not answer costs
// a refresh (and the start) one lookup's timeout, not one per name. Each
// lookup here waits until all three are under way, which a refresh that
// looked them up one by one would never reach.
func TestNamesAreLookedUpAtOnce(t *testing.T) {
	dns := newDNS(t)
	dns.SetIPs("a.test", "10.0.0.1")
	dns.SetIPs("b.test", "10.0.0.2")
	dns.SetIPs("c.test", "10.0.0.3")
	res := &barrierResolver{Resolver: dns.Resolver(), n: 3, started: make(chan struct{}, 3)}
	set := upstream.NewSet(nil)
	d, err := New(Config{DNS: []string{"c.test.:1", "a.test.:1", "b.test.:1"}, Interval: DefaultInterval,
		Resolver: res, Logger: slog.New(slog.DiscardHandler)}, set)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := d.Refresh(ctx)
	if want := []string{"10.0.0.3:1", "10.0.0.1:1", "10.0.0.2:1"}; !slices.Equal(got, want) {
		t.Fatalf("targets %v, want %v (in the order of the names)", got, want)
	}
}
