package passthrough

import (
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"testing"
	"time"
)

// Idle connections park, resume in any order when they have data, and
// park again, round after round: the parker's slots are reused, no stream
// is lost or woken for another's data, and every stream parks again each
// round.
func TestParkResumeRounds(t *testing.T) {
	b := newBackend(t, nil, echo)
	cfg := testConfig(b.addr())
	cfg.EventLoop = false // parking is for streams on goroutines
	s := start(t, cfg)
	// Many rounds: a stream that once parked with a park request left
	// standing was never asked again, and showed in about one run in
	// five of thirty rounds on a loaded machine (parker.ask).
	const n, rounds = 40, 30
	conns := make([]net.Conn, n)
	for i := range conns {
		c := dialTest(t, s.Addr().String())
		c.SetDeadline(time.Now().Add(20 * time.Second))
		conns[i] = c
	}
	for round := range rounds {
		for _, i := range mrand.Perm(n) {
			msg := fmt.Sprintf("round %d conn %d", round, i)
			if _, err := conns[i].Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(conns[i], got); err != nil || string(got) != msg {
				t.Fatalf("round %d conn %d: %q, %v", round, i, got, err)
			}
		}
		// Both streams of every connection park before the next round.
		for deadline := time.Now().Add(10 * time.Second); s.parker.Parked() != 2*n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d streams parked, want %d", round, s.parker.Parked(), 2*n)
			}
		}
	}
	s.parker.mu.Lock()
	slots := len(s.parker.slots)
	s.parker.mu.Unlock()
	if slots > 2*n {
		t.Errorf("%d parker slots for %d streams: freed slots are not reused", slots, 2*n)
	}
	for _, c := range conns {
		c.Close()
	}
	sum := s.Shutdown()
	if sum.Proxied != n || sum.Parks < rounds*2*n {
		t.Fatalf("summary %+v", sum)
	}
}
