package balance

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/ndlb/ndlb/upstream"
)

func targets(n int) []*upstream.Target {
	var ts []*upstream.Target
	for i := range n {
		ts = append(ts, &upstream.Target{Addr: fmt.Sprintf("10.0.0.%d:80", i+1)})
	}
	return ts
}

// TestDistribution picks 1000 connections over 3 targets with each policy.
// With hold set, each picked target keeps its connection open (as
// long-lived clients do); otherwise connections are short and never overlap.
func TestDistribution(t *testing.T) {
	tests := []struct {
		name    string
		policy  string
		hold    bool
		preload [3]int64 // connections already open on each target
		min     [3]int   // fewest connections each target may get
		max     [3]int
	}{
		{name: "first takes the first target", policy: "first", min: [3]int{1000, 0, 0}, max: [3]int{1000, 0, 0}},
		{name: "roundrobin is exact", policy: "roundrobin", min: [3]int{333, 333, 333}, max: [3]int{334, 334, 334}},
		{name: "leastconn short conns rotate", policy: "leastconn", min: [3]int{333, 333, 333}, max: [3]int{334, 334, 334}},
		{name: "leastconn held conns are even", policy: "leastconn", hold: true, min: [3]int{333, 333, 333}, max: [3]int{334, 334, 334}},
		{name: "leastconn fills the emptier target", policy: "leastconn", hold: true, preload: [3]int64{300, 0, 0},
			min: [3]int{133, 433, 433}, max: [3]int{134, 434, 434}},
		{name: "random short conns", policy: "random", min: [3]int{250, 250, 250}, max: [3]int{420, 420, 420}},
		{name: "random held conns are near even", policy: "random", hold: true, min: [3]int{325, 325, 325}, max: [3]int{342, 342, 342}},
		{name: "hash of distinct clients", policy: "hash", min: [3]int{250, 250, 250}, max: [3]int{420, 420, 420}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(tt.policy)
			if err != nil {
				t.Fatal(err)
			}
			ts := targets(3)
			for i, n := range tt.preload {
				for range n {
					ts[i].ConnOpened()
				}
			}
			var got [3]int
			var order []int
			for c := range 1000 {
				order = p.Order(order[:0], ts, fmt.Appendf(nil, "127.0.0.%d", c))
				checkPermutation(t, order, 3)
				got[order[0]]++
				if tt.hold {
					ts[order[0]].ConnOpened()
				}
			}
			for i := range got {
				if got[i] < tt.min[i] || got[i] > tt.max[i] {
					t.Fatalf("distribution %v, want each in [%v, %v]", got, tt.min, tt.max)
				}
			}
			t.Logf("%s: %v", tt.policy, got)
		})
	}
}

func checkPermutation(t *testing.T, order []int, n int) {
	t.Helper()
	s := slices.Clone(order)
	slices.Sort(s)
	if len(s) != n || s[0] != 0 || s[n-1] != n-1 || len(slices.Compact(s)) != n {
		t.Fatalf("order %v is not a permutation of %d targets", order, n)
	}
}

func TestFirstFallsBackInOrder(t *testing.T) {
	got := First{}.Order(nil, targets(4), nil)
	if !slices.Equal(got, []int{0, 1, 2, 3}) {
		t.Fatalf("order %v", got)
	}
}

func TestHashIsStickyAndConsistent(t *testing.T) {
	ts := targets(5)
	home := map[string]int{}
	for c := range 2000 {
		key := fmt.Sprintf("192.168.%d.%d", c/256, c%256)
		o := Hash{}.Order(nil, ts, []byte(key))
		home[key] = o[0]
		// Sticky: the same key lands on the same target every time.
		if again := (Hash{}).Order(nil, ts, []byte(key)); !slices.Equal(o, again) {
			t.Fatalf("%s: order %v then %v", key, o, again)
		}
		// Another instance with the targets listed in another order
		// agrees (compare addresses, not indexes).
		rev := slices.Clone(ts)
		slices.Reverse(rev)
		if r := (Hash{}).Order(nil, rev, []byte(key)); rev[r[0]] != ts[o[0]] {
			t.Fatalf("%s: instances disagree", key)
		}
	}
	// Remove target 2: only its clients move.
	removed := ts[2]
	rest := slices.Delete(slices.Clone(ts), 2, 3)
	moved := 0
	for key, h := range home {
		n := rest[Hash{}.Order(nil, rest, []byte(key))[0]]
		switch {
		case ts[h] == removed:
			moved++
		case n != ts[h]:
			t.Fatalf("%s moved from %s to %s though its target stayed", key, ts[h].Addr, n.Addr)
		}
	}
	if moved < 300 || moved > 500 {
		t.Fatalf("%d of 2000 clients were on the removed target, want about 400", moved)
	}
}

func TestNew(t *testing.T) {
	for _, n := range Names {
		if _, err := New(n); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := New("fastest"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("err %v", err)
	}
}

func TestOrderAllocatesNothing(t *testing.T) {
	ts := targets(8)
	key := []byte("127.0.0.1")
	for _, n := range Names {
		p, _ := New(n)
		dst := make([]int, 0, 8)
		if a := testing.AllocsPerRun(100, func() { dst = p.Order(dst[:0], ts, key) }); a != 0 {
			t.Errorf("%s: %v allocs per Order", n, a)
		}
	}
}

func BenchmarkOrder(b *testing.B) {
	ts := targets(8)
	key := []byte("127.0.0.1")
	for _, n := range Names {
		b.Run(n, func(b *testing.B) {
			p, _ := New(n)
			dst := make([]int, 0, 8)
			for b.Loop() {
				dst = p.Order(dst[:0], ts, key)
			}
		})
	}
}

// With weights 1, 2 and 3, every policy but first gives each target its
// share.
func TestWeightedDistribution(t *testing.T) {
	tests := []struct {
		name   string
		policy string
		hold   bool
		slack  int // allowed distance from the exact share
	}{
		{name: "roundrobin is smooth and exact", policy: "roundrobin", slack: 1},
		{name: "leastconn by load per weight", policy: "leastconn", hold: true, slack: 2},
		{name: "random", policy: "random", hold: true, slack: 25},
		{name: "random with no load: by weight alone", policy: "random", slack: 90},
		{name: "hash", policy: "hash", slack: 60},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, _ := New(tt.policy)
			s := upstream.NewSet([]string{"10.0.0.1:80=1", "10.0.0.2:80=2", "10.0.0.3:80=3"})
			ts := s.Targets()
			var got [3]int
			var order []int
			for c := range 1200 {
				order = p.Order(order[:0], ts, fmt.Appendf(nil, "10.1.%d.%d", c/256, c%256))
				checkPermutation(t, order, 3)
				got[order[0]]++
				if tt.hold {
					ts[order[0]].ConnOpened()
				}
			}
			for i, want := range []int{200, 400, 600} {
				if got[i] < want-tt.slack || got[i] > want+tt.slack {
					t.Fatalf("distribution %v, want 200/400/600 within %d", got, tt.slack)
				}
			}
			t.Logf("%s: %v", tt.policy, got)
		})
	}
	// Smooth: weight 3 of 6 never gets three in a row.
	p := &RoundRobin{}
	ts := upstream.NewSet([]string{"a:1=1", "b:1=2", "c:1=3"}).Targets()
	seq := ""
	for range 12 {
		seq += ts[p.Order(nil, ts, nil)[0]].Addr[:1]
	}
	if strings.Contains(seq, "ccc") || seq[:6] != seq[6:] {
		t.Fatalf("weighted round-robin sequence %s is not smooth", seq)
	}
}

// With OnHost, lists that name the same hosts on different ports choose the
// same host for every key; by address they would not always.
func TestHashOnHost(t *testing.T) {
	a := upstream.NewSet([]string{"10.0.0.1:443", "10.0.0.2:443", "10.0.0.3:443"}).Targets()
	b := upstream.NewSet([]string{"10.0.0.3:8443", "10.0.0.1:8443", "10.0.0.2:8443"}).Targets()
	host := func(ts []*upstream.Target, i int) string { h, _, _ := net.SplitHostPort(ts[i].Addr); return h }
	differ := 0
	for k := range 1000 {
		key := []byte(fmt.Sprintf("198.51.100.%d", k))
		if host(a, Hash{OnHost: true}.Order(nil, a, key)[0]) != host(b, Hash{OnHost: true}.Order(nil, b, key)[0]) {
			t.Fatalf("key %s: different hosts on the two ports", key)
		}
		if host(a, Hash{}.Order(nil, a, key)[0]) != host(b, Hash{}.Order(nil, b, key)[0]) {
			differ++
		}
	}
	if differ == 0 {
		t.Fatal("by address the two lists always agreed: the test shows nothing")
	}
	// Two ports of one host tie on the host: each port is still the first
	// choice of some clients.
	two := upstream.NewSet([]string{"10.0.0.1:443", "10.0.0.1:8443"}).Targets()
	firsts := map[string]int{}
	for k := range 1000 {
		firsts[two[Hash{OnHost: true}.Order(nil, two, []byte(fmt.Sprint(k)))[0]].Addr]++
	}
	if len(firsts) != 2 {
		t.Fatalf("two ports of one host: first choices %v", firsts)
	}
}
