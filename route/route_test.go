package route

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/internal/linetest"
	"github.com/ndlb/ndlb/internal/logtest"
	"github.com/ndlb/ndlb/invalid"
	"github.com/ndlb/ndlb/routekey"
	"github.com/ndlb/ndlb/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func mustKey(t testing.TB, spec string) routekey.Extractor {
	t.Helper()
	k, err := routekey.Parse(spec)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// fixture is a router over a queue and a set, without a pool: the test
// pops the lanes itself.
type fixture struct {
	q      *dispatch.Queue
	set    *upstream.Set
	ledger *dispatch.Ledger
	bufs   *framer.Pool
	r      *Router
	lanes  [1]int
	popped []*framer.Batch
	logs   *logtest.Buffer
}

func newFixture(t testing.TB, cfg Config, targets []string) *fixture {
	t.Helper()
	f := &fixture{set: upstream.NewSet(targets), ledger: dispatch.NewLedger(), bufs: framer.NewPool(), logs: &logtest.Buffer{}}
	if len(cfg.Groups) > 0 {
		f.set = upstream.NewSet(nil)
		f.set.UpdateGroups(cfg.TargetGroups())
	}
	f.q = dispatch.New(dispatch.Config{MaxBytes: 64 << 20, Ledger: f.ledger, Orphans: func(bs []*framer.Batch) { f.r.Orphans(bs) }})
	f.r = New(cfg, f.q, f.set, f.ledger, f.bufs, slog.New(slog.NewTextHandler(f.logs, nil)))
	return f
}

// push routes lines (each without its newline) as one batch.
func (f *fixture) push(t testing.TB, sc *Scratch, lines ...string) {
	t.Helper()
	data := []byte(strings.Join(lines, "\n") + "\n")
	if n, err := f.r.Push(context.Background(), f.bufs.NewBatch(data, len(lines)), sc); n != 0 || err != nil {
		t.Fatalf("Push: %d not queued, %v", n, err)
	}
}

// drain pops every lane and returns the lines each target's lanes held (by
// address; "" for a shared lane), and releases the batches as delivered.
func (f *fixture) drain() map[string][]string {
	out := map[string][]string{}
	for id := range f.q.Lanes() {
		owner := ""
		f.r.mu.Lock()
		if ts := f.r.owner[id]; ts != nil {
			owner = ts.t.Addr
		}
		f.r.mu.Unlock()
		for _, b := range f.q.TryPopLanes(nil, []int{id}, 1<<20, 1<<30) {
			for line := range bytes.Lines(b.Data) {
				out[owner] = append(out[owner], strings.TrimSuffix(string(line), "\n"))
			}
			f.q.Done(b)
		}
	}
	return out
}

// deliverAll pops every lane and reports each batch delivered.
func (f *fixture) deliverAll() {
	n := f.q.Lanes()
	for id := range n {
		f.lanes[0] = id
		f.popped = f.q.TryPopLanes(f.popped[:0], f.lanes[:], 1<<20, 1<<30)
		for _, b := range f.popped {
			f.q.Done(b)
		}
	}
}

func keyed(k string, i int) string { return fmt.Sprintf(`{"k":%q,"i":%d}`, k, i) }

// Every key goes to its rendezvous target, in order; lines without a usable
// key go to the shared lane and are counted by outcome.
func TestRouteByKey(t *testing.T) {
	addrs := []string{"10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000"}
	f := newFixture(t, Config{Key: mustKey(t, "json:k")}, addrs)
	var sc Scratch
	var lines []string
	for i := range 300 {
		lines = append(lines, keyed(fmt.Sprint("key-", i%50), i))
	}
	lines = append(lines, `{"other":1}`, `not json`, `{"k":"`+strings.Repeat("x", routekey.MaxKeyBytes+1)+`"}`, `{"k":{"deep":[[[[1]]]]}}`)
	f.push(t, &sc, lines...)
	got := f.drain()
	for addr, ls := range got {
		last := map[string]int{}
		for _, l := range ls {
			var k string
			var i int
			if _, err := fmt.Sscanf(l, `{"k":%q,"i":%d}`, &k, &i); err != nil {
				if addr != "" {
					t.Fatalf("unkeyed line %q reached %s", l, addr)
				}
				continue
			}
			if want := linetest.KeyOwner(k, addrs); addr != want {
				t.Fatalf("key %s reached %q, want %s", k, addr, want)
			}
			if prev, ok := last[k]; ok && i <= prev {
				t.Fatalf("key %s out of order at %s", k, addr)
			}
			last[k] = i
		}
	}
	if n := len(got[""]); n != 4 {
		t.Fatalf("%d lines in the shared lane, want 4: %q", n, got[""])
	}
	m := f.r.Stats().Groups[0].Messages
	if m["keyed"] != 300 || m["missing"] != 2 || m["malformed"] != 1 || m["too_long"] != 1 {
		t.Fatalf("outcomes %v", m)
	}
	if st := f.ledger.Stats(); st.Received != 304 || st.Delivered != 304 {
		t.Fatalf("ledger %+v", st)
	}
}

// One key at a target's lane always takes the same worker slot.
func TestSlotIsStable(t *testing.T) {
	f := newFixture(t, Config{Key: mustKey(t, "json:k")}, []string{"a:1"})
	var sc Scratch
	tab := f.r.tab.Load()
	sc.begin(f.r, tab)
	for i := range 100 {
		k := fmt.Sprint("k", i)
		l1 := f.r.laneOf(tab, []byte(keyed(k, 1)), &sc)
		l2 := f.r.laneOf(tab, []byte(keyed(k, 2)), &sc)
		if l1 != l2 || l1 == 0 {
			t.Fatalf("key %s: lanes %d and %d", k, l1, l2)
		}
	}
}

// The load bound holds whatever the skew: a key with 60% of the traffic is
// split over its first choices, no target takes more than the bound (plus
// the slack), and the moves are counted.
func TestLoadBound(t *testing.T) {
	addrs := []string{"a:1", "b:1", "c:1", "d:1"}
	for _, c := range []float64{1.1, 1.25, 2} {
		f := newFixture(t, Config{Key: mustKey(t, "json:k"), MaxLoad: c}, addrs)
		var sc Scratch
		const n = 40000
		for i := 0; i < n; i += 100 {
			var lines []string
			for j := i; j < i+100; j++ {
				k := "hot"
				if j%5 >= 3 {
					k = fmt.Sprint("cold-", j%97)
				}
				lines = append(lines, keyed(k, j))
			}
			f.push(t, &sc, lines...)
		}
		got := f.drain()
		most := 0
		for _, a := range addrs {
			most = max(most, len(got[a]))
		}
		if bound := c*n/4 + 2*slack; float64(most) > bound {
			t.Fatalf("bound %g: the largest target took %d of %d, over %.0f", c, most, n, bound)
		}
		if st := f.r.Stats(); st.MovedLoad == 0 || st.MovedDown != 0 {
			t.Fatalf("bound %g: stats %+v", c, st)
		}
	}
	// No bound: the hot key stays on its target.
	f := newFixture(t, Config{Key: mustKey(t, "json:k")}, addrs)
	var sc Scratch
	for i := range 100 {
		f.push(t, &sc, keyed("hot", i), keyed("hot", i+1000))
	}
	if got := f.drain(); len(got[linetest.KeyOwner("hot", addrs)]) != 200 {
		t.Fatalf("unbounded: %v", got)
	}
}

// A target that stops taking work has its lanes closed: what waited there,
// and what its workers hand back, is routed again to each key's next
// choice; when it returns, its keys come back.
func TestRerouteOnFailure(t *testing.T) {
	addrs := []string{"a:1", "b:1", "c:1"}
	f := newFixture(t, Config{Key: mustKey(t, "json:k")}, addrs)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	var sc Scratch
	var lines []string
	for i := range 600 {
		lines = append(lines, keyed(fmt.Sprint("k", i%60), i))
	}
	f.push(t, &sc, lines...)
	// A worker of the victim holds one of its batches when it fails.
	victim, _ := f.set.Lookup("b:1")
	held := f.q.TryPopLanes(nil, f.r.targets[victim].lanes[:1], 1, 1<<30)
	victim.MarkDown(errors.New("reset"))
	waitFor(t, func() bool { return !f.r.Stats().Groups[0].Targets[1].Eligible })
	f.q.Requeue(held) // the failed worker hands its batch back
	waitFor(t, func() bool {
		f.r.mu.Lock()
		defer f.r.mu.Unlock()
		return len(f.r.pending) == 0 && !f.r.moving
	})
	got := f.drain()
	if len(got["b:1"]) != 0 {
		t.Fatalf("%d lines still with the failed target", len(got["b:1"]))
	}
	rest := []string{"a:1", "c:1"}
	total := 0
	for addr, ls := range got {
		for _, l := range ls {
			var k string
			var i int
			fmt.Sscanf(l, `{"k":%q,"i":%d}`, &k, &i)
			if want := linetest.KeyOwner(k, rest); addr != want {
				t.Fatalf("key %s reached %s, want %s", k, addr, want)
			}
			if linetest.KeyOwner(k, addrs) != "b:1" && linetest.KeyOwner(k, addrs) != addr {
				t.Fatalf("key %s moved though its target is up", k)
			}
		}
		total += len(ls)
	}
	if total != 600 {
		t.Fatalf("%d lines after the reroute, want 600", total)
	}
	if st := f.ledger.Stats(); st.Received != 600 || st.Delivered != 600 || !st.Closed() {
		t.Fatalf("ledger %+v", st)
	}
	victim.MarkUp()
	waitFor(t, func() bool { return f.r.Stats().Groups[0].Targets[1].Eligible })
	f.push(t, &sc, lines...)
	for addr, ls := range f.drain() {
		for _, l := range ls {
			var k string
			fmt.Sscanf(l, `{"k":%q`, &k)
			if want := linetest.KeyOwner(k, addrs); addr != want {
				t.Fatalf("after the return: key %s reached %s, want %s", k, addr, want)
			}
		}
	}
	if f.r.Stats().MovedDown == 0 {
		t.Fatal("no move counted")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// Groups pick by exact value, with a default; without one, the rest is
// dropped as unrouted.
func TestGroups(t *testing.T) {
	for _, def := range []bool{true, false} {
		cfg := Config{GroupKey: mustKey(t, "json:k"), Groups: []Group{
			{Name: "audit", Values: []string{"audit"}, Targets: []string{"a:1"}},
			{Name: "rest", Values: []string{"app"}, Default: def, Targets: []string{"b:1"}},
		}}
		f := newFixture(t, cfg, nil)
		var sc Scratch
		f.push(t, &sc, keyed("audit", 1), keyed("app", 2), keyed("debug", 3), `{"x":1}`, keyed("audit", 5))
		got := f.drain()
		if def && len(got[""]) != 5 {
			t.Fatalf("default=%v: %v", def, got)
		}
		audit := 0
		for _, l := range got[""] {
			if strings.Contains(l, `"audit"`) {
				audit++
			}
		}
		want := uint64(0)
		if !def {
			want = 2
		}
		if audit != 2 || f.ledger.Stats().Dropped[dispatch.DropUnrouted] != want || f.r.Stats().Unrouted != want {
			t.Fatalf("default=%v: %v, ledger %+v", def, got, f.ledger.Stats())
		}
		f.push(t, &sc, keyed("debug", 6))
		f.drain()
		// Unrouted lines are logged, at most every 10 s.
		if n := strings.Count(f.logs.String(), "lines dropped as unrouted"); n != min(int(want), 1) {
			t.Fatalf("default=%v: the drops logged %d times: %s", def, n, f.logs.String())
		}
		if ts := f.set.Targets(); ts[0].Group() != "audit" || ts[1].Group() != "rest" {
			t.Fatal("targets not labelled with their groups")
		}
	}
}

func TestValidate(t *testing.T) {
	k := mustKey(t, "json:k")
	one := func(g ...Group) Config { return Config{Key: k, Groups: g} }
	for name, c := range map[string]Config{
		"bound below 1":     {Key: k, MaxLoad: 0.9},
		"group key alone":   {GroupKey: k},
		"no key":            {Groups: []Group{{Name: "a", Default: true, Targets: []string{"a:1"}}}},
		"unnamed":           one(Group{Default: true, Targets: []string{"a:1"}}),
		"two defaults":      one(Group{Name: "a", Default: true, Targets: []string{"a:1"}}, Group{Name: "b", Default: true, Targets: []string{"b:1"}}),
		"unreachable":       one(Group{Name: "a", Targets: []string{"a:1"}}),
		"no targets":        one(Group{Name: "a", Default: true}),
		"value twice":       one(Group{Name: "a", Values: []string{"x"}, Targets: []string{"a:1"}}, Group{Name: "b", Values: []string{"x"}, Targets: []string{"b:1"}}),
		"target twice":      one(Group{Name: "a", Values: []string{"x"}, Targets: []string{"a:1"}}, Group{Name: "b", Default: true, Targets: []string{"a:1=2"}}),
		"name twice":        one(Group{Name: "a", Values: []string{"x"}, Targets: []string{"a:1"}}, Group{Name: "a", Default: true, Targets: []string{"b:1"}}),
		"bad target weight": one(Group{Name: "a", Default: true, Targets: []string{"a:1=0"}}),
	} {
		var ie *invalid.Error
		if err := c.Validate(); !errors.Is(err, ErrConfig) || !errors.As(err, &ie) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := (Config{Key: k, MaxLoad: 1.25}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// Routing a batch allocates nothing per message once a client's scratch
// has grown (a batch split over lanes costs its parts, per batch).
func TestPushAllocations(t *testing.T) {
	f := newFixture(t, Config{Key: mustKey(t, "json:k"), MaxLoad: DefaultMaxLoad}, []string{"a:1", "b:1", "c:1", "d:1"})
	var data []byte
	for i := range 1000 {
		data = append(data, keyed(fmt.Sprint("tenant-", i%200), i)+"\n"...)
	}
	var sc Scratch
	ctx := context.Background()
	run := func() {
		if _, err := f.r.Push(ctx, f.bufs.NewBatch(data, 1000), &sc); err != nil {
			t.Fatal(err)
		}
		f.deliverAll()
	}
	run()
	a := testing.AllocsPerRun(20, run)
	t.Logf("%.1f allocations per batch of 1000 messages", a)
	if a > 1 && !raceEnabled {
		t.Fatalf("%.0f allocations per batch of 1000 messages", a)
	}
}

// BenchmarkPush routes batches of 64 256-byte JSON records (16 KiB, a
// shipper's write) by a field holding one of 64 values, over 4 targets of 2
// connections, with the load bound on: the per-message cost of routing.
func BenchmarkPush(b *testing.B) {
	f := newFixture(b, Config{Key: mustKey(b, "json:host"), MaxLoad: DefaultMaxLoad}, []string{"10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000", "10.0.0.4:9000"})
	var data []byte
	for i := range 64 {
		line := fmt.Sprintf(`{"ts":"2026-11-21T00:00:00.%06dZ","level":"info","host":"web-%d","service":"checkout","seq":%d,"msg":"order placed","pad":"`, i, i%64, i)
		line += strings.Repeat("x", 253-len(line)) + "\"}\n"
		data = append(data, line...)
	}
	var sc Scratch
	ctx := context.Background()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := f.r.Push(ctx, f.bufs.NewBatch(data, 64), &sc); err != nil {
			b.Fatal(err)
		}
		f.deliverAll()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/message")
}

// Octet-counted messages escaped reversibly (a backslash doubled, a newline
// written \n) are keyed as the client sent them.
func TestKeyOfEscapedMessage(t *testing.T) {
	addrs := []string{"a:1", "b:1", "c:1"}
	f := newFixture(t, Config{Key: mustKey(t, "json:k"), Unescape: framer.UnescapeOctet}, addrs)
	var sc Scratch
	// The message {"m":"say \"hi\"", NEWLINE "k":"x"} as the reader
	// escapes it.
	f.push(t, &sc, `{"m":"say \\"hi\\"",\n"k":"x"}`)
	got := f.drain()
	if len(got[linetest.KeyOwner("x", addrs)]) != 1 {
		t.Fatalf("the escaped message was not keyed: %v", got)
	}
	if m := f.r.Stats().Groups[0].Messages; m["keyed"] != 1 {
		t.Fatalf("outcomes %v", m)
	}
}

// A group of more than 127 targets whose hot key overflows (its next
// choices are cached per key) works.
func TestManyTargetsOverflow(t *testing.T) {
	var addrs []string
	for i := range 200 {
		addrs = append(addrs, fmt.Sprintf("10.0.%d.%d:9000", i/250, i%250))
	}
	f := newFixture(t, Config{Key: mustKey(t, "json:k"), MaxLoad: DefaultMaxLoad}, addrs)
	var sc Scratch
	for i := range 20 {
		var lines []string
		for j := range 200 {
			lines = append(lines, keyed("hot", i*200+j))
		}
		f.push(t, &sc, lines...)
	}
	f.deliverAll()
	if f.r.Stats().MovedLoad == 0 {
		t.Fatal("no overflow")
	}
}
