package listener

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// One address over its connection or rate limit is refused while another
// is served; a connection that ends gives its place back.
func TestSourceLimits(t *testing.T) {
	s := newSources(Config{MaxConnsPerSource: 2, ConnRatePerSource: 3})
	a := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 1000}
	b := &net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.2"), Port: 1000}
	now := time.Now()
	k1, _, _ := s.admit(a, now)
	k2, _, _ := s.admit(a, now)
	var why string
	if _, why, _ = s.admit(a, now); why != overConns {
		t.Fatalf("a third connection at once: %q", why)
	}
	s.release(k1)
	if _, why, _ = s.admit(a, now); why != "" {
		t.Fatalf("after one ended: %q", why) // the third of the burst of 3
	}
	s.release(k2)
	if _, why, _ = s.admit(a, now); why != overRate {
		t.Fatalf("a fourth new connection in the same second: %q", why)
	}
	if _, why, _ = s.admit(a, now.Add(time.Second)); why != "" {
		t.Fatalf("a second later: %q", why)
	}
	if _, why, _ = s.admit(b, now); why != "" {
		t.Fatalf("another address: %q", why)
	}
	if s.size() != 2 {
		t.Fatalf("%d addresses kept", s.size())
	}
	if newSources(Config{}) != nil {
		t.Fatal("no limits, yet a table")
	}
	// Addresses of one IPv6 /64 are one source.
	v6 := newSources(Config{MaxConnsPerSource: 1})
	v6.admit(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2::1"), Port: 1}, now)
	if _, why, _ := v6.admit(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::9"), Port: 1}, now); why != overConns {
		t.Fatalf("another address of the same /64: %q", why)
	}
	if _, why, _ := v6.admit(&net.TCPAddr{IP: net.ParseIP("2001:db8:1:3::1"), Port: 1}, now); why != "" {
		t.Fatalf("another /64: %q", why)
	}
}

// The table is bounded: when full, idle addresses are forgotten, and if
// none is idle a new address is served unlimited rather than refused (and
// the costly sweep is not tried again for a second).
func TestSourceTableBounded(t *testing.T) {
	s := newSources(Config{MaxConnsPerSource: 1})
	now := time.Now()
	for i := range MaxSources {
		ip := net.IPv4(10, byte(i>>16), byte(i>>8), byte(i))
		if _, why, untracked := s.admit(&net.TCPAddr{IP: ip, Port: 1}, now); why != "" || untracked {
			t.Fatalf("address %d: %q %v", i, why, untracked)
		}
	}
	extra := &net.TCPAddr{IP: net.ParseIP("192.0.2.9"), Port: 1}
	if _, why, untracked := s.admit(extra, now); why != "" || !untracked {
		t.Fatalf("a new address with a full table of busy ones: %q, untracked %v", why, untracked)
	}
	s.mu.Lock()
	for _, e := range s.m {
		e.conns = 0 // every connection ended
	}
	s.mu.Unlock()
	if _, _, untracked := s.admit(extra, now); !untracked {
		t.Fatal("a sweep right after one that found nothing")
	}
	if _, _, untracked := s.admit(extra, now.Add(time.Second)); untracked || s.size() != 1 {
		t.Fatalf("idle addresses were not forgotten: untracked %v, %d kept", untracked, s.size())
	}
}

// Through a real listener: a client address at its limit gets its
// connection closed and counted.
func TestListenerSourceLimit(t *testing.T) {
	h := &holdConn{served: make(chan struct{}, 4), release: make(chan struct{})}
	l := start(t, h, Config{MaxConnsPerSource: 1})
	first, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	<-h.served
	second, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	second.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := second.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the second connection from one address: %v, want it closed", err)
	}
	second.Close()
	close(h.release)
	first.Close()
	l.Shutdown(context.Background())
	if st := l.Stats(); st.SourceConns != 1 || st.Accepted != 2 {
		t.Fatalf("stats %+v", st)
	}
}
