package integration

import (
	"net"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/dnstest"
	"github.com/ndlb/ndlb/internal/linetest"
)

// sinksOnOnePort starts sinks on 127.0.0.2, .3 and .4 with one port, as a
// DNS name with one port and three addresses needs.
func sinksOnOnePort(t *testing.T, w *world) (port string) {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ = net.SplitHostPort(ln.Addr().String())
		ln.Close()
		var sinks []*linetest.Sink
		for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
			s, err := linetest.NewSink(net.JoinHostPort(ip, port), w.ledger)
			if err != nil {
				break
			}
			sinks = append(sinks, s)
		}
		if len(sinks) == 3 {
			for _, s := range sinks {
				t.Cleanup(s.Close)
			}
			w.sinks = sinks
			return port
		}
		for _, s := range sinks {
			s.Close()
		}
	}
	t.Fatal("no port free on all three addresses")
	return ""
}

// A name's records change from {A, B} to {B, C} under traffic: A is
// drained, C gets traffic, and nothing is lost or torn.
func TestDNSDiscoveryChange(t *testing.T) {
	dns, err := dnstest.New()
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()
	w := newWorld(t, 0)
	port := sinksOnOnePort(t, w)
	a, b, c := w.sinks[0], w.sinks[1], w.sinks[2]
	dns.SetIPs("logs.test", "127.0.0.2", "127.0.0.3")
	p := startNDLB(t, "--target-dns", "logs.test.:"+port, "--dns-resolver", dns.Addr(), "--dns-interval", "200ms")
	wait := pacedClients(p.addr, 8, 20000, 3*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for a.Lines() == 0 || b.Lines() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("A and B do not both get lines: %d %d", a.Lines(), b.Lines())
		}
		time.Sleep(10 * time.Millisecond)
	}
	dns.SetIPs("logs.test", "127.0.0.3", "127.0.0.4")
	gone := p.waitLog("target gone from DNS: draining", 10*time.Second)
	if gone["target"] != a.Addr() {
		t.Fatalf("drained %v, want %s", gone["target"], a.Addr())
	}
	p.waitLog("target left the set: drained", 10*time.Second)
	if !a.WaitDrained(10 * time.Second) {
		t.Fatal("A's connections stay open")
	}
	aLines := a.Lines()
	sent, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	p.stopOK()
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	w.checkLedger(p, true)
	if c.Lines() == 0 || a.Lines() != aLines {
		t.Fatalf("C got %d lines; A got %d more after it was drained", c.Lines(), a.Lines()-aLines)
	}
	t.Logf("lines: A %d, B %d, C %d", a.Lines(), b.Lines(), c.Lines())
}
