package ndjson

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/internal/linetest"
	"github.com/ndlb/ndlb/route"
	"github.com/ndlb/ndlb/routekey"
)

// routedServer starts a server routing by json:k over targets.
func routedServer(t *testing.T, targets []string, edit func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Targets = targets
	cfg.Logger = slog.New(slog.DiscardHandler)
	if os.Getenv("ROUTE_DEBUG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg.Pool.Connections = 2
	key, err := routekey.Parse("json:k")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Route = route.Config{Key: key, MaxLoad: route.DefaultMaxLoad}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(newLocalListener(t))
	return srv
}

// sendKeyed sends lines from clients concurrent connections: line s of
// client c has key keyOf(c, s). It returns how many lines each key got.
func sendKeyed(t *testing.T, addr string, clients, lines int, keyOf func(c, s int) string) map[string]int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	perKey := map[string]int{}
	for c := range clients {
		wg.Go(func() {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			var buf []byte
			local := map[string]int{}
			for s := range lines {
				k := keyOf(c, s)
				local[k]++
				buf = linetest.AppendKeyed(buf, k, uint32(c), uint32(s))
				if len(buf) > 32<<10 || s == lines-1 {
					if _, err := conn.Write(buf); err != nil {
						t.Error(err)
						return
					}
					buf = buf[:0]
				}
			}
			mu.Lock()
			for k, n := range local {
				perKey[k] += n
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	return perKey
}

// owners maps each key to the sinks that received it.
func owners(sinks []*linetest.KeySink) map[string][]string {
	out := map[string][]string{}
	for _, s := range sinks {
		for k := range s.Stats().Keys {
			out[k] = append(out[k], s.Addr())
		}
	}
	return out
}

func waitLines(t *testing.T, sinks []*linetest.KeySink, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := 0
		for _, s := range sinks {
			got += s.Stats().Lines
		}
		if got >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sinks got %d lines, want %d", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// 1000 keys from 8 clients over 4 targets: each key on exactly one target,
// the one rendezvous hashing names (so any instance with the same targets,
// in any order, agrees), in order per client, and no target over the bound.
func TestRouteByKey(t *testing.T) {
	sinks, _ := linetest.NewKeySinks(t, 4)
	const clients, lines, keys = 8, 3000, 1000
	keyOf := func(c, s int) string { return fmt.Sprintf("tenant-%d", (c*7919+s)%keys) }
	for _, order := range [][]int{{0, 1, 2, 3}, {3, 1, 0, 2}} {
		var targets []string
		for _, i := range order {
			targets = append(targets, sinks[i].Addr())
		}
		srv := routedServer(t, targets, nil)
		sent := sendKeyed(t, srv.Addr().String(), clients, lines, keyOf)
		sum := srv.Shutdown()
		if !sum.Clean || sum.Ledger.Delivered != clients*lines || !sum.Ledger.Closed() {
			t.Fatalf("summary %+v", sum)
		}
		waitLines(t, sinks, clients*lines)
		total, most := 0, 0
		for _, s := range sinks {
			st := s.Stats()
			if st.Bad != 0 || st.OutOfOrder != 0 || st.Dups != 0 {
				t.Fatalf("sink %s: %+v", s.Addr(), st)
			}
			total += st.Lines
			most = max(most, st.Lines)
		}
		if len(sent) != keys {
			t.Fatalf("%d keys sent", len(sent))
		}
		for k, on := range owners(sinks) {
			if len(on) != 1 || on[0] != linetest.KeyOwner(k, targets) {
				t.Fatalf("key %s went to %v, want only %s", k, on, linetest.KeyOwner(k, targets))
			}
		}
		if mean := float64(total) / 4; float64(most) > route.DefaultMaxLoad*mean {
			t.Fatalf("largest target took %d lines, over %.2f × the mean %.0f", most, route.DefaultMaxLoad, mean)
		}
		rs := srv.RouteStats()
		if rs.Groups[0].Messages["keyed"] != clients*lines || rs.MovedDown != 0 || rs.MovedLoad != 0 {
			t.Fatalf("route stats %+v", rs)
		}
		for _, s := range sinks {
			s.Reset()
		}
	}
}

// A hot key (half of all messages) is held to the bound: its overflow goes
// to its next choices, and no target takes more than the bound.
func TestRouteHotKeyBounded(t *testing.T) {
	sinks, targets := linetest.NewKeySinks(t, 4)
	srv := routedServer(t, targets, nil)
	const clients, lines = 4, 20000
	keyOf := func(c, s int) string {
		if s%2 == 0 {
			return "hot"
		}
		return fmt.Sprintf("k%d", s%500)
	}
	sendKeyed(t, srv.Addr().String(), clients, lines, keyOf)
	sum := srv.Shutdown()
	if !sum.Clean || sum.Ledger.Delivered != clients*lines {
		t.Fatalf("summary %+v", sum)
	}
	waitLines(t, sinks, clients*lines)
	most, total := 0, 0
	for _, s := range sinks {
		st := s.Stats()
		most = max(most, st.Lines)
		total += st.Lines
	}
	mean := float64(total) / 4
	// The bound holds over each window of keyed messages, with a small
	// slack per window.
	if float64(most) > route.DefaultMaxLoad*mean+200 {
		t.Fatalf("largest target took %d lines, mean %.0f: over the bound", most, mean)
	}
	if on := owners(sinks)["hot"]; len(on) < 2 {
		t.Fatalf("the hot key stayed on %v", on)
	}
	if rs := srv.RouteStats(); rs.MovedLoad == 0 {
		t.Fatalf("route stats %+v", rs)
	}
}

// Killing a target moves only its keys, each to its next choice; they
// come back once it returns; nothing is lost.
func TestRouteFailoverAndBack(t *testing.T) {
	sinks, targets := linetest.NewKeySinks(t, 4)
	srv := routedServer(t, targets, func(c *Config) {
		c.Pool.BackoffInitial, c.Pool.BackoffMax = 10*time.Millisecond, 50*time.Millisecond
		// 200 keys over 3 targets can be skewed past 1.25 by chance; this
		// test is about where keys move, not about the bound.
		c.Route.MaxLoad = 0
	})
	const keys = 200
	keyOf := func(c, s int) string { return fmt.Sprintf("svc-%d", s%keys) }
	addr := srv.Addr().String()
	sendKeyed(t, addr, 2, 2000, keyOf)
	waitLines(t, sinks, 4000)
	for _, s := range sinks {
		s.Reset()
	}

	victim := sinks[1]
	victim.Kill()
	waitFor(t, func() bool { return !eligible(srv, victim.Addr()) }, "keys routed away from the killed target")
	sendKeyed(t, addr, 2, 2000, keyOf)
	waitLines(t, []*linetest.KeySink{sinks[0], sinks[2], sinks[3]}, 4000)
	rest := []string{targets[0], targets[2], targets[3]}
	for k, on := range owners(sinks) {
		want := linetest.KeyOwner(k, targets)
		if want == victim.Addr() {
			want = linetest.KeyOwner(k, rest)
		}
		if len(on) != 1 || on[0] != want {
			t.Fatalf("while down: key %s went to %v, want %s", k, on, want)
		}
	}
	if rs := srv.RouteStats(); rs.MovedDown == 0 {
		t.Fatalf("route stats %+v", rs)
	}
	for _, s := range sinks {
		s.Reset()
	}

	t.Log("restarting")
	if err := victim.Restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return eligible(srv, victim.Addr()) }, "keys routed to the target again")
	t.Log("sending phase 3")
	sendKeyed(t, addr, 2, 2000, keyOf)
	sum := srv.Shutdown()
	if !sum.Clean || !sum.Ledger.Closed() || sum.Ledger.Delivered < 12000 {
		t.Fatalf("summary %+v", sum)
	}
	waitLines(t, sinks, 4000)
	for k, on := range owners(sinks) {
		if want := linetest.KeyOwner(k, targets); len(on) != 1 || on[0] != want {
			t.Fatalf("after failback: key %s went to %v, want %s", k, on, want)
		}
	}
}

// eligible reports whether the server routes keys to addr.
func eligible(srv *Server, addr string) bool {
	for _, g := range srv.RouteStats().Groups {
		for _, ts := range g.Targets {
			if ts.Addr == addr {
				return ts.Eligible
			}
		}
	}
	return false
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Groups: messages go to the group that lists their value, the rest to the
// default; without a default, they are dropped and counted as unrouted.
func TestRouteGroups(t *testing.T) {
	for _, withDefault := range []bool{true, false} {
		t.Run(fmt.Sprint("default=", withDefault), func(t *testing.T) {
			sinks, _ := linetest.NewKeySinks(t, 4)
			srv := routedServer(t, nil, func(c *Config) {
				gk, _ := routekey.Parse("json:k")
				c.Route = route.Config{Key: nil, GroupKey: gk, Groups: []route.Group{
					{Name: "audit", Values: []string{"audit", "security"}, Targets: []string{sinks[0].Addr(), sinks[1].Addr()}},
					{Name: "rest", Default: withDefault, Values: []string{"app"}, Targets: []string{sinks[2].Addr(), sinks[3].Addr()}},
				}}
			})
			names := []string{"audit", "security", "app", "debug"}
			sent := sendKeyed(t, srv.Addr().String(), 4, 2000, func(c, s int) string { return names[s%4] })
			sum := srv.Shutdown()
			wantDelivered := uint64(sent["audit"] + sent["security"] + sent["app"])
			wantUnrouted := uint64(0)
			if withDefault {
				wantDelivered += uint64(sent["debug"])
			} else {
				wantUnrouted = uint64(sent["debug"])
			}
			if !sum.Clean || sum.Ledger.Delivered != wantDelivered || sum.Ledger.Dropped[dispatch.DropUnrouted] != wantUnrouted || !sum.Ledger.Closed() {
				t.Fatalf("summary %+v", sum.Ledger)
			}
			waitLines(t, sinks, int(wantDelivered))
			for k, on := range owners(sinks) {
				for _, a := range on {
					inAudit := a == sinks[0].Addr() || a == sinks[1].Addr()
					if inAudit != (k == "audit" || k == "security") {
						t.Fatalf("key %s reached %s", k, a)
					}
				}
			}
			if ts := srv.Targets(); ts[0].Group != "audit" || ts[3].Group != "rest" {
				t.Fatalf("targets %+v", ts)
			}
		})
	}
}
