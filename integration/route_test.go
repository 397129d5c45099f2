package integration

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// sendKeys sends lines lines from each of clients connections to addr,
// clients first, first+1, ...; line s of client c has key keyOf(c, s) and
// sequence number base+s.
func sendKeys(t *testing.T, addr string, first, clients, lines, base int, keyOf func(c, s int) string) {
	t.Helper()
	var wg sync.WaitGroup
	for c := first; c < first+clients; c++ {
		wg.Go(func() {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			var buf []byte
			for s := range lines {
				buf = linetest.AppendKeyed(buf, keyOf(c, s), uint32(c), uint32(base+s))
				if len(buf) > 32<<10 || s == lines-1 {
					if _, err := conn.Write(buf); err != nil {
						t.Error(err)
						return
					}
					buf = buf[:0]
				}
			}
		})
	}
	wg.Wait()
}

// waitKeyLines waits until sinks hold want lines between them.
func waitKeyLines(t *testing.T, sinks []*linetest.KeySink, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := 0
		for _, s := range sinks {
			got += s.Stats().Lines
		}
		if got >= want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sinks got %d lines, want %d", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// keyOwners maps each key to the sinks that received it.
func keyOwners(sinks []*linetest.KeySink) map[string][]string {
	out := map[string][]string{}
	for _, s := range sinks {
		for k := range s.Stats().Keys {
			out[k] = append(out[k], s.Addr())
		}
	}
	return out
}

// 1 000 keys from 8 clients over 4 targets, through two ndlb processes
// that list the targets in different orders: each key lands on exactly
// one target, the same from both; the largest target is within the load
// bound; killing a target moves only its keys, and they come back after it
// returns. Nothing is lost or torn.
func TestRouteByKeyAcrossInstances(t *testing.T) {
	sinks, addrs := linetest.NewKeySinks(t, 4)
	reversed := []string{addrs[3], addrs[2], addrs[1], addrs[0]}
	common := []string{"--route-key", "json:k", "--connections", "2", "--backoff-max", "200ms"}
	a := startNDLB(t, append(common, "--target", strings.Join(addrs, ","))...)
	b := startNDLB(t, append(common, "--target", strings.Join(reversed, ","))...)

	const clients, lines, keys = 8, 2500, 1000
	keyOf := func(c, s int) string { return fmt.Sprintf("tenant-%03d", (c*131+s)%keys) }
	sendKeys(t, a.addr, 0, clients/2, lines, 0, keyOf)
	sendKeys(t, b.addr, clients/2, clients/2, lines, 0, keyOf)
	waitKeyLines(t, sinks, clients*lines)
	owners := keyOwners(sinks)
	if len(owners) != keys {
		t.Fatalf("%d keys arrived, want %d", len(owners), keys)
	}
	total, most := 0, 0
	for _, s := range sinks {
		st := s.Stats()
		if st.Bad != 0 || st.Dups != 0 || st.OutOfOrder != 0 {
			t.Fatalf("sink %s: %d torn, %d duplicated, %d out of order", s.Addr(), st.Bad, st.Dups, st.OutOfOrder)
		}
		total += st.Lines
		most = max(most, st.Lines)
	}
	for k, on := range owners {
		if len(on) != 1 || on[0] != linetest.KeyOwner(k, addrs) {
			t.Fatalf("key %s reached %v, want only %s", k, on, linetest.KeyOwner(k, addrs))
		}
	}
	if mean := float64(total) / 4; float64(most) > 1.25*mean {
		t.Fatalf("the largest target took %d lines, over 1.25 × the mean %.0f", most, mean)
	}
	t.Logf("largest target: %.3f × the mean", float64(most)/(float64(total)/4))

	// A target dies: only its keys move, each to its next choice.
	victim := sinks[2]
	for _, s := range sinks {
		s.Reset()
	}
	victim.Kill()
	rest := []string{addrs[0], addrs[1], addrs[3]}
	a.waitLog("routing keys away from target", 10*time.Second)
	sendKeys(t, a.addr, 0, 2, 2000, lines, keyOf)
	waitKeyLines(t, sinks, 4000)
	for k, on := range keyOwners(sinks) {
		want := linetest.KeyOwner(k, addrs)
		if want == victim.Addr() {
			want = linetest.KeyOwner(k, rest)
		}
		if len(on) != 1 || on[0] != want {
			t.Fatalf("with %s down: key %s reached %v, want %s", victim.Addr(), k, on, want)
		}
	}

	// It returns: its keys come back.
	for _, s := range sinks {
		s.Reset()
	}
	if err := victim.Restart(); err != nil {
		t.Fatal(err)
	}
	a.waitLog("routing keys to target again", 15*time.Second)
	sendKeys(t, a.addr, 0, 2, 2000, 2*lines, keyOf)
	waitKeyLines(t, sinks, 4000)
	for k, on := range keyOwners(sinks) {
		if want := linetest.KeyOwner(k, addrs); len(on) != 1 || on[0] != want {
			t.Fatalf("after the target returned: key %s reached %v, want %s", k, on, want)
		}
	}
	a.stopOK()
	b.stopOK()
	for _, p := range []*proc{a, b} {
		if g := p.ledger("default"); g.dropped != 0 {
			t.Fatalf("dropped %d lines: %+v", g.dropped, g)
		}
	}
	if a.summary("moved_down") == 0 {
		t.Fatal("the summary counts no keyed message moved by the failure")
	}
}

// Target groups from a config file: messages go to the group that lists
// their value, the others to the default group; a listener without a
// default drops and counts them as unrouted.
func TestRouteGroupsFromConfigFile(t *testing.T) {
	sinks, _ := linetest.NewKeySinks(t, 4)
	dir := t.TempDir()
	doc := fmt.Sprintf(`log-format = "json"

[[listener]]
name = "logs"
addr = "127.0.0.1"
port = 0
group-key = "json:k"

[[listener.group]]
name = "audit"
target = ["%s", "%s"]
values = ["audit", "security"]

[[listener.group]]
name = "rest"
target = ["%s"]
default = true

[[listener]]
name = "strict"
addr = "127.0.0.1"
port = 0
group-key = "json:k"

[[listener.group]]
name = "app"
target = ["%s"]
values = ["app"]
`, sinks[0].Addr(), sinks[1].Addr(), sinks[2].Addr(), sinks[3].Addr())
	p := startCmd(t, command(bin, "--config", writeConfig(t, dir, doc)))
	addrs := listening(t, p, 2)
	names := []string{"audit", "security", "app", "debug"}
	keyOf := func(_, s int) string { return names[s%4] }
	sendKeys(t, addrs["logs"], 0, 4, 1000, 0, keyOf)
	sendKeys(t, addrs["strict"], 4, 4, 1000, 0, keyOf)
	waitKeyLines(t, sinks, 4000+1000)
	for k, on := range keyOwners(sinks) {
		for _, a := range on {
			audit := a == sinks[0].Addr() || a == sinks[1].Addr()
			if audit != (k == "audit" || k == "security") || a == sinks[3].Addr() && k != "app" {
				t.Fatalf("%s reached %s", k, a)
			}
		}
	}
	p.stopOK()
	if g := p.ledger("logs"); g.delivered != 4000 || g.dropped != 0 {
		t.Fatalf("logs: %+v", g)
	}
	if g := p.ledger("strict"); g.delivered != 1000 || g.byReason["unrouted"] != 3000 {
		t.Fatalf("strict: %+v", g)
	}
}
