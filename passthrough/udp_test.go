package passthrough

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ndlb/ndlb/listener"
)

// udpBackend is a loopback UDP target that answers every datagram with
// its name, a space and the datagram, until the test ends or stop is
// called.
type udpBackend struct {
	name string
	c    *net.UDPConn
	wg   sync.WaitGroup
	mu   sync.Mutex
	from map[netip.AddrPort]int // datagrams by sender (ndlb's flow sockets)
}

func newUDPBackend(t *testing.T, name string) *udpBackend {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	b := &udpBackend{name: name, c: c, from: map[netip.AddrPort]int{}}
	b.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			b.mu.Lock()
			b.from[from]++
			b.mu.Unlock()
			_, _ = c.WriteToUDPAddrPort(append([]byte(name+" "), buf[:n]...), from)
		}
	})
	t.Cleanup(b.stop)
	return b
}

func (b *udpBackend) addr() string { return b.c.LocalAddr().String() }

// stop closes the backend's socket: datagrams to it then draw ICMP port
// unreachable errors.
func (b *udpBackend) stop() { b.c.Close(); b.wg.Wait() }

func (b *udpBackend) flows() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.from)
}

func udpConfig(targets ...string) Config {
	cfg := testConfig(targets...)
	cfg.UDP = true
	cfg.DrainTimeout = 100 * time.Millisecond // flows that wait for answers
	return cfg
}

func startUDP(t *testing.T, cfg Config) *UDPServer {
	t.Helper()
	s, err := NewUDP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s.Start(listener.NewPacket(c, nil))
	t.Cleanup(func() { s.Shutdown() })
	return s
}

// udpClient is a client socket on 127.0.0.host.
func udpClient(t *testing.T, host byte, server net.Addr) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, host)}, server.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// exchange sends msg and returns the answer, or an error after 10 s (an
// answer comes at once; the wait is for a loaded machine).
func exchange(c *net.UDPConn, msg string) (string, error) {
	return exchangeWithin(c, msg, 10*time.Second)
}

// exchangeWithin is exchange, waiting up to wait: a short wait where no
// answer is expected.
func exchangeWithin(c *net.UDPConn, msg string, wait time.Duration) (string, error) {
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 64<<10)
	_ = c.SetReadDeadline(time.Now().Add(wait))
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// TestUDPEchoAndPolicies: 50 client addresses send 1000 datagrams each
// (100 for the policies after the first), every answer comes back whole from
// one backend per client, and the backends share the flows as the policy
// says.
func TestUDPEchoAndPolicies(t *testing.T) {
	for _, policy := range []string{"roundrobin", "first", "leastconn", "random", "hash"} {
		t.Run(policy, func(t *testing.T) {
			a, b := newUDPBackend(t, "A"), newUDPBackend(t, "B")
			cfg := udpConfig(a.addr(), b.addr())
			cfg.Balance = policy
			s := startUDP(t, cfg)
			perClient := 100
			if policy == "roundrobin" {
				perClient = 1000 // the load, once
			}
			const clients = 50
			var mu sync.Mutex
			byBackend := map[string]int{}
			var wg sync.WaitGroup
			errs := make(chan error, clients)
			for i := range clients {
				c := udpClient(t, byte(10+i), s.Addr())
				wg.Go(func() {
					seen := ""
					for j := range perClient {
						msg := fmt.Sprintf("client %d datagram %d %s", i, j, strings.Repeat("x", j%300))
						got, err := exchange(c, msg)
						if err != nil {
							errs <- fmt.Errorf("client %d datagram %d: %w", i, j, err)
							return
						}
						name, body, _ := strings.Cut(got, " ")
						if body != msg {
							errs <- fmt.Errorf("client %d: answer %q to %q", i, got, msg)
							return
						}
						if seen != "" && name != seen {
							errs <- fmt.Errorf("client %d moved from %s to %s", i, seen, name)
							return
						}
						seen = name
					}
					mu.Lock()
					byBackend[seen]++
					mu.Unlock()
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			switch policy {
			case "first":
				if byBackend["A"] != clients {
					t.Errorf("first: %v, want every client on A", byBackend)
				}
			case "roundrobin", "leastconn":
				if byBackend["A"] != clients/2 || byBackend["B"] != clients/2 {
					t.Errorf("%s: %v, want 25 and 25", policy, byBackend)
				}
			default:
				if byBackend["A"] < 10 || byBackend["B"] < 10 {
					t.Errorf("%s: %v, want both used", policy, byBackend)
				}
			}
			want := uint64(clients * perClient)
			// A reply is counted after its send returns, which may be
			// after the client read it.
			waitFor(t, "replies counted", func() bool { return s.Stats().ToClients >= want })
			st := s.Stats()
			if st.Flows != clients || st.FromClients != want || st.ToClients != want || st.Dropped() != 0 {
				t.Errorf("stats %+v: want %d flows, %d datagrams each way, none dropped", st, clients, want)
			}
			if a.flows()+b.flows() != clients {
				t.Errorf("backends saw %d flow sockets, want %d", a.flows()+b.flows(), clients)
			}
		})
	}
}

// TestUDPHashSticksAcrossFlows: with hash, a client address reaches the
// same target again after its flow expired, and ip+first spreads one
// address's flows by their first bytes.
func TestUDPHashSticksAcrossFlows(t *testing.T) {
	backends := []*udpBackend{newUDPBackend(t, "A"), newUDPBackend(t, "B"), newUDPBackend(t, "C")}
	cfg := udpConfig(backends[0].addr(), backends[1].addr(), backends[2].addr())
	cfg.Balance, cfg.HashFirst = "hash", ByteRange{Offset: 0, Length: 8}
	clock := clockwork.NewFakeClock()
	cfg.Clock = clock
	s := startUDP(t, cfg)
	first := map[string]string{}
	for round := range 2 {
		var open []net.Conn // kept open for the round, so that no two share a port (and a flow)
		for i := range 40 {
			key := fmt.Sprintf("user%04d", i)
			c := udpClient(t, 7, s.Addr()) // one address, as behind a NAT
			open = append(open, c)
			got, err := exchange(c, key+" hello")
			if err != nil {
				t.Fatal(err)
			}
			name, _, _ := strings.Cut(got, " ")
			if round == 0 {
				first[key] = name
			} else if first[key] != name {
				t.Fatalf("%s moved from %s to %s", key, first[key], name)
			}
		}
		for _, c := range open {
			c.Close()
		}
		clock.Advance(2 * cfg.UDPIdleTimeout)
		waitFor(t, "flows expire", func() bool { clock.Advance(time.Second); return s.Stats().ActiveFlows == 0 })
	}
	used := map[string]int{}
	for _, n := range first {
		used[n]++
	}
	if len(used) != 3 {
		t.Errorf("40 keys from one address used %v, want all three targets", used)
	}
	if st := s.Stats(); st.Flows != 80 || st.IdleClosed != 80 {
		t.Errorf("stats %+v: want 80 flows opened and expired", st)
	}
}

// TestUDPFlowLimit: beyond Listener.MaxConns flows, datagrams that would
// open one are dropped and counted.
func TestUDPFlowLimit(t *testing.T) {
	a := newUDPBackend(t, "A")
	cfg := udpConfig(a.addr())
	cfg.Listener.MaxConns = 3
	s := startUDP(t, cfg)
	for i := range 3 {
		if _, err := exchange(udpClient(t, byte(20+i), s.Addr()), "hi"); err != nil {
			t.Fatal(err)
		}
	}
	extra := udpClient(t, 30, s.Addr())
	for range 5 {
		if _, err := exchangeWithin(extra, "over", 50*time.Millisecond); err == nil {
			t.Fatal("a fourth flow was served")
		}
	}
	// The drops are counted when the loop reads them, which may be after
	// the short waits above.
	waitFor(t, "drops counted", func() bool { return s.Stats().FlowLimit >= 5 })
	if st := s.Stats(); st.Flows != 3 || st.FlowLimit != 5 || st.ActiveFlows != 3 {
		t.Errorf("stats %+v: want 3 flows and 5 datagrams over the limit", st)
	}
}

// TestUDPICMPFailsOver: a target whose port is closed draws ICMP errors;
// its flows end, it is skipped after MaxFails, and the client's next
// datagrams reach the live target.
func TestUDPICMPFailsOver(t *testing.T) {
	dead, live := newUDPBackend(t, "dead"), newUDPBackend(t, "live")
	dead.stop()
	cfg := udpConfig(dead.addr(), live.addr())
	cfg.Balance, cfg.MaxFails = "first", 1
	s := startUDP(t, cfg)
	c := udpClient(t, 40, s.Addr())
	var got string
	for i := 0; i < 20 && !strings.HasPrefix(got, "live "); i++ {
		got, _ = exchangeWithin(c, "ping", 100*time.Millisecond)
	}
	if got != "live ping" {
		t.Fatalf("never reached the live target: last answer %q", got)
	}
	st := s.Stats()
	if st.ICMPClosed == 0 {
		t.Errorf("stats %+v: want a flow ended by ICMP", st)
	}
	if tg := s.Targets()[0]; tg.Failures == 0 {
		t.Errorf("dead target %+v: want its failures counted", tg)
	}
}

// TestUDPHandoverAndShutdown: a replacement server takes the socket and
// serves the same clients; the old one's flows end at its shutdown.
func TestUDPHandoverAndShutdown(t *testing.T) {
	a := newUDPBackend(t, "A")
	old := startUDP(t, udpConfig(a.addr()))
	c := udpClient(t, 50, old.Addr())
	if _, err := exchange(c, "one"); err != nil {
		t.Fatal(err)
	}
	ln := old.Handover()
	if ln == nil {
		t.Fatal("no socket handed over")
	}
	cfg := udpConfig(a.addr())
	cfg.UDPIdleTimeout = 50 * time.Millisecond
	next, err := NewUDP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	next.Start(ln)
	if got, err := exchange(c, "two"); err != nil || got != "A two" {
		t.Fatalf("after handover: %q, %v", got, err)
	}
	sum := old.Shutdown()
	if sum.Flows != 1 || sum.ActiveFlows != 0 || sum.IdleClosed+sum.ShutdownClosed != 1 {
		t.Errorf("old summary %+v", sum)
	}
	if got, err := exchange(c, "three"); err != nil || got != "A three" {
		t.Fatalf("after the old server's shutdown: %q, %v", got, err)
	}
	sum = next.Shutdown()
	if sum.FromClients != 2 || sum.ToClients != 2 || sum.ActiveFlows != 0 {
		t.Errorf("new summary %+v", sum)
	}
	if _, err := c.Write([]byte("late")); err == nil {
		// The socket is closed: nothing answers, and nothing leaks.
		buf := make([]byte, 16)
		_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if n, err := c.Read(buf); err == nil {
			t.Errorf("answer after shutdown: %q", buf[:n])
		}
	}
}

// TestUDPNoTarget: with every target draining, datagrams are dropped and
// counted.
func TestUDPNoTarget(t *testing.T) {
	a := newUDPBackend(t, "A")
	s := startUDP(t, udpConfig(a.addr()))
	s.Set().Targets()[0].Drain()
	c := udpClient(t, 60, s.Addr())
	if _, err := exchangeWithin(c, "x", 50*time.Millisecond); err == nil {
		t.Fatal("a draining target got a new flow")
	}
	waitFor(t, "the drop counted", func() bool { return s.Stats().NoTarget >= 1 })
	if st := s.Stats(); st.NoTarget != 1 || st.Flows != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestUDPBigDatagram: the largest datagram passes whole both ways, and so
// does an empty one.
func TestUDPBigDatagram(t *testing.T) {
	a := newUDPBackend(t, "A")
	s := startUDP(t, udpConfig(a.addr()))
	c := udpClient(t, 61, s.Addr())
	if got, err := exchange(c, ""); err != nil || got != "A " {
		t.Fatalf("empty datagram: %q, %v", got, err)
	}
	msg := bytes.Repeat([]byte("z"), 65000)
	got, err := exchange(c, string(msg))
	if err != nil || got != "A "+string(msg) {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
}

func TestUDPConfig(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"idle":        func(c *Config) { c.UDPIdleTimeout = 0 },
		"send-proxy":  func(c *Config) { c.SendProxy = 2 },
		"accept-prox": func(c *Config) { c.Listener.AcceptProxy = true },
		"per-source":  func(c *Config) { c.Listener.MaxConnsPerSource = 3 },
	} {
		cfg := udpConfig("127.0.0.1:1")
		mutate(&cfg)
		if _, err := NewUDP(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewUDP(testConfig("127.0.0.1:1")); err == nil {
		t.Error("NewUDP without UDP accepted")
	}
}

// startUDPOn is startUDP on a socket bound to addr.
func startUDPOn(t *testing.T, cfg Config, addr *net.UDPAddr) *UDPServer {
	t.Helper()
	s, err := NewUDP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s.Start(listener.NewPacket(c, nil))
	t.Cleanup(func() { s.Shutdown() })
	return s
}

// On a wildcard listener, answers leave from the address the client sent
// to: a connected client socket, which takes datagrams from that address
// only, gets them.
func TestUDPWildcardAnswersFromTheAddressAsked(t *testing.T) {
	a := newUDPBackend(t, "A")
	for _, wild := range []string{"0.0.0.0", "::"} {
		s := startUDPOn(t, udpConfig(a.addr()), &net.UDPAddr{IP: net.ParseIP(wild)})
		port := s.Addr().(*net.UDPAddr).Port
		for _, local := range []string{"127.0.0.1", "127.0.0.2"} {
			c, err := net.DialUDP("udp", nil, &net.UDPAddr{IP: net.ParseIP(local), Port: port})
			if err != nil {
				t.Fatal(err)
			}
			got, err := exchange(c, "hi")
			c.Close()
			if err != nil || got != "A hi" {
				t.Errorf("listening on %s, asking %s: %q, %v", wild, local, got, err)
			}
		}
	}
}

// A flow whose target stops taking new work (here: disabled) moves at the
// next sweep, though its client never pauses.
func TestUDPFlowsLeaveADisabledTarget(t *testing.T) {
	a, b := newUDPBackend(t, "A"), newUDPBackend(t, "B")
	cfg := udpConfig(a.addr(), b.addr())
	cfg.Balance = "first"
	cfg.UDPIdleTimeout = time.Hour
	s := startUDP(t, cfg)
	c := udpClient(t, 70, s.Addr())
	if got, _ := exchange(c, "x"); got != "A x" {
		t.Fatalf("first answer %q", got)
	}
	s.Set().Targets()[0].Disable()
	waitFor(t, "the flow moves to B", func() bool { got, _ := exchangeWithin(c, "y", time.Second); return got == "B y" })
	if st := s.Stats(); st.MovedClosed != 1 {
		t.Errorf("stats %+v: want one flow moved", st)
	}
}

// A datagram too long for the target's path (EMSGSIZE: a 65 520-byte IPv6
// datagram to an IPv4 target) is dropped and counted; the target is not
// held at fault, and the flow goes on.
func TestUDPTooLongIsNotTheTargetsFault(t *testing.T) {
	a := newUDPBackend(t, "A")
	cfg := udpConfig(a.addr())
	cfg.MaxFails = 1
	s := startUDPOn(t, cfg, &net.UDPAddr{IP: net.IPv6loopback})
	c, err := net.DialUDP("udp", nil, s.Addr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, _ := exchange(c, "small"); got != "A small" {
		t.Fatalf("answer %q", got)
	}
	for range 3 {
		_, _ = c.Write(make([]byte, 65520))
	}
	if got, _ := exchange(c, "after"); got != "A after" {
		t.Fatalf("after the long datagrams: %q", got)
	}
	st := s.Stats()
	if st.SendErrors != 3 || st.ICMPClosed != 0 || st.Flows != 1 || s.Targets()[0].Failures != 0 {
		t.Errorf("stats %+v, target %+v", st, s.Targets()[0])
	}
}

// A target named by host is looked up in the background and then used.
func TestUDPTargetByName(t *testing.T) {
	a := newUDPBackend(t, "A")
	_, port, _ := net.SplitHostPort(a.addr())
	s := startUDP(t, udpConfig("localhost:"+port))
	c := udpClient(t, 71, s.Addr())
	waitFor(t, "an answer through localhost", func() bool {
		got, _ := exchangeWithin(c, "n", 100*time.Millisecond)
		return got == "A n"
	})
}

// At shutdown, flows still relay the answers that come within the drain.
func TestUDPShutdownRelaysLateAnswers(t *testing.T) {
	late, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	go func() {
		buf := make([]byte, 64)
		n, from, err := late.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		time.Sleep(300 * time.Millisecond) // the answer comes during the drain
		_, _ = late.WriteToUDPAddrPort(buf[:n], from)
	}()
	cfg := udpConfig(late.LocalAddr().String())
	cfg.DrainTimeout, cfg.UDPIdleTimeout = 5*time.Second, 2*time.Second // quiet for 2 s: done
	s := startUDP(t, cfg)
	c := udpClient(t, 72, s.Addr())
	if _, err := c.Write([]byte("q")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the flow", func() bool { return s.Stats().Flows == 1 })
	done := make(chan UDPSummary)
	go func() { done <- s.Shutdown() }()
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "q" {
		t.Fatalf("late answer: %q, %v", buf[:n], err)
	}
	// The flow the drain ended counts as closed by the shutdown, not idle.
	if sum := <-done; sum.ToClients != 1 || sum.ReplyErrors != 0 || sum.ShutdownClosed != 1 || sum.IdleClosed != 0 {
		t.Errorf("summary %+v", sum)
	}
}

// Datagrams the kernel drops for want of room in the listening socket's
// buffer are all counted, those after the last one read too: what was
// read and what was dropped add up to what was sent (Stats asks the
// socket, SO_MEMINFO, not only the count a datagram carries).
func TestUDPKernelDropsAddUp(t *testing.T) {
	sink, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	s, err := NewUDP(udpConfig(sink.LocalAddr().String()))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s.Start(listener.NewPacket(ln, nil))
	defer s.Shutdown()
	_ = ln.SetReadBuffer(64 << 10) // after Start's own: room for a datagram or two
	c := udpClient(t, 62, s.Addr())
	msg := bytes.Repeat([]byte("d"), 60<<10)
	const sent = 3000
	for range sent {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for st := s.Stats(); st.FromClients+st.Overflows != sent; st = s.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("%d read, %d dropped by the kernel, of %d sent", st.FromClients, st.Overflows, sent)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if sum := s.Shutdown(); sum.FromClients+sum.Overflows != sent || sum.Overflows == 0 {
		t.Fatalf("summary: %d read, %d dropped by the kernel, of %d sent", sum.FromClients, sum.Overflows, sent)
	}
}
