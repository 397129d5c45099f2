package integration

import (
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/dnstest"
	"github.com/ndlb/ndlb/internal/linetest"
)

// startDNS starts a DNS server on loopback, stopped when the test ends.
func startDNS(t *testing.T) *dnstest.Server {
	t.Helper()
	dns, err := dnstest.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dns.Close)
	return dns
}

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
	dns := startDNS(t)
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

// A reload while the DNS server does not answer: the reload neither waits
// for DNS nor forgets the targets DNS gave before, so the lines sent after
// it are delivered, and SIGTERM right after is served at once.
func TestReloadDuringDNSOutage(t *testing.T) {
	dns := startDNS(t)
	w := newWorld(t, 0)
	port := sinksOnOnePort(t, w)
	dns.SetIPs("logs.test", "127.0.0.2", "127.0.0.3")
	dir := t.TempDir()
	doc := func(interval string) string {
		return fmt.Sprintf("log-format = \"json\"\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\n"+
			"target-dns = [\"logs.test.:%s\"]\ndns-resolver = %q\ndns-interval = %q\n", port, dns.Addr(), interval)
	}
	path := writeConfig(t, dir, doc("200ms"))
	p := startCmd(t, command(bin, "--config", path))
	addr := listening(t, p, 1)["logs"]
	dns.Mute(true) // lookups now take Go's resolver 10 s to fail
	os.WriteFile(path, []byte(doc("300ms")), 0o600)
	p.waitLog("config reloaded", 10*time.Second)
	conn := dial(t, addr)
	if _, err := linetest.Send(conn, 1, 0, 5000, 8<<10); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for w.sinks[0].Lines()+w.sinks[1].Lines() < 5000 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 5000 lines delivered after the reload", w.sinks[0].Lines()+w.sinks[1].Lines())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if gone := p.findLogs("target gone from DNS: draining"); len(gone) > 0 {
		t.Fatalf("the reload drained DNS targets: %v", gone)
	}
	// The stop is not held up behind a lookup (Go's resolver gives up
	// after 10 s; the drain takes far less).
	start := time.Now()
	if code := p.stop(syscall.SIGTERM, 8*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("the stop took %v", d)
	}
	if l := p.ledger("logs"); l.received != 5000 || l.delivered != 5000 {
		t.Fatalf("ledger %+v", l)
	}
}
