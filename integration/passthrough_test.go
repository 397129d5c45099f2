package integration

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/ndlb/ndlb/internal/nettest"
)

// idBackend is a passthrough target that greets each connection with its
// name and a newline, then echoes until EOF and half-closes.
type idBackend struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{} // guarded by mu
	closed bool                  // guarded by mu
}

func newIDBackend(t *testing.T, name string, tlsCfg *tls.Config) *idBackend {
	t.Helper()
	return newIDBackendAt(t, name, "127.0.0.1:0", tlsCfg)
}

// newIDBackendAt is newIDBackend listening on addr.
func newIDBackendAt(t *testing.T, name, addr string, tlsCfg *tls.Config) *idBackend {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &idBackend{name: name, ln: ln, conns: map[net.Conn]struct{}{}}
	if tlsCfg != nil {
		b.ln = tls.NewListener(ln, tlsCfg)
	}
	b.wg.Go(b.serve)
	t.Cleanup(b.kill)
	return b
}

func (b *idBackend) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		b.wg.Go(func() {
			defer func() {
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
				c.Close()
			}()
			if b.name != "" {
				if _, err := c.Write([]byte(b.name + "\n")); err != nil {
					return
				}
			}
			io.Copy(c, c)
			halfClose(c)
			io.Copy(io.Discard, c)
		})
	}
}

func (b *idBackend) addr() string { return b.ln.Addr().String() }

// kill closes the listener and every connection: the target is gone.
func (b *idBackend) kill() {
	b.mu.Lock()
	b.closed = true
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.ln.Close()
	b.wg.Wait()
}

func halfClose(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		tc.CloseWrite()
		c = tc.NetConn()
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

func startPassthrough(t *testing.T, targets []string, args ...string) *proc {
	t.Helper()
	return startNDLB(t, append([]string{"--passthrough", "--target", strings.Join(targets, ",")}, args...)...)
}

// hello connects from source IP src (nil: any), reads the target's name,
// checks an echo, and returns the name. The connection is left open
// when hold is set (closed by the test's cleanup).
func hello(t *testing.T, addr string, src net.IP, hold bool) (string, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	if hold {
		t.Cleanup(func() { c.Close() })
	} else {
		defer c.Close()
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	name, err := r.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("greeting: %w", err)
	}
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return "", err
	}
	if echo, err := r.ReadString('\n'); err != nil || echo != "ping\n" {
		return "", fmt.Errorf("echo %q: %v", echo, err)
	}
	c.SetDeadline(time.Time{})
	return strings.TrimSpace(name), nil
}

// 100 MB of random bytes come back byte-identical through ndlb: plain TCP,
// TLS passed through untouched to a TLS target, and TLS terminated by ndlb.
func TestPassthroughEcho100MB(t *testing.T) {
	pk := newPKI(t)
	cert, key, pair := pk.files(t, "ndlb", "127.0.0.1")
	serverTLS := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	clientTLS := &tls.Config{RootCAs: pk.pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	payload := make([]byte, 100<<20)
	rand.Read(payload)
	want := sha256.Sum256(payload)
	tests := []struct {
		name       string
		backendTLS *tls.Config
		args       []string
	}{
		{name: "plain TCP"},
		{name: "TLS passthrough", backendTLS: serverTLS},
		{name: "TLS termination", args: []string{"--tls-cert", cert, "--tls-key", key}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newIDBackend(t, "", tt.backendTLS)
			p := startPassthrough(t, []string{b.addr()}, tt.args...)
			var c net.Conn
			var err error
			if tt.backendTLS != nil || tt.args != nil {
				c, err = tls.Dial("tcp", p.addr, clientTLS)
			} else {
				c, err = net.Dial("tcp", p.addr)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			start := time.Now()
			go func() {
				c.Write(payload)
				halfClose(c)
			}()
			h := sha256.New()
			n, err := io.Copy(h, c)
			if err != nil || [32]byte(h.Sum(nil)) != want {
				t.Fatalf("got %d bytes (%v), SHA-256 differs from the payload's", n, err)
			}
			t.Logf("%s: 100 MiB each way in %s", tt.name, time.Since(start).Round(time.Millisecond))
			cl := p.waitLog("connection closed", 10*time.Second)
			if cl["bytes_from_client"].(float64) < float64(len(payload)) || cl["closed_by"] != "client" {
				t.Fatalf("close log %v", cl)
			}
			p.stopOK()
			spliced := p.summary("bytes_spliced")
			// Only TLS termination needs the bytes in user space;
			// otherwise all but the first read each way is spliced.
			total := p.summary("bytes_from_client") + p.summary("bytes_from_target")
			termination := tt.args != nil
			if total < uint64(2*len(payload)) || !termination && spliced < total*99/100 || termination && spliced != 0 {
				t.Fatalf("bytes_spliced %d of %d (TLS termination: %v)", spliced, total, termination)
			}
		})
	}
}

// The client shuts its write side; the target's reply, sent after it read
// to EOF, still arrives in full.
func TestPassthroughHalfClose(t *testing.T) {
	reply := strings.Repeat("0123456789", 100000)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c) // until the client's half-close
		c.Write([]byte(reply))
	}()
	p := startPassthrough(t, []string{ln.Addr().String()})
	c := dial(t, p.addr)
	c.Write([]byte("request"))
	c.(*net.TCPConn).CloseWrite()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != reply {
		t.Fatalf("read %d of %d reply bytes (%v)", len(got), len(reply), err)
	}
	p.stopOK()
}

// 1000 connections over 3 targets with each policy.
func TestPassthroughDistribution(t *testing.T) {
	if testing.Short() {
		t.Skip("1000 connections per policy")
	}
	tests := []struct {
		policy string
		hold   bool // keep every connection open until the end
		check  func(got map[string]int) bool
	}{
		{policy: "roundrobin", check: func(g map[string]int) bool { return within(g, 333, 334) }},
		{policy: "first", check: func(g map[string]int) bool { return g["b0"] == 1000 }},
		{policy: "leastconn", hold: true, check: func(g map[string]int) bool { return within(g, 333, 334) }},
		{policy: "random", hold: true, check: func(g map[string]int) bool { return within(g, 300, 370) }},
		{policy: "hash", check: func(g map[string]int) bool { return within(g, 200, 480) }},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			var addrs []string
			for i := range 3 {
				addrs = append(addrs, newIDBackend(t, fmt.Sprintf("b%d", i), nil).addr())
			}
			args := []string{"--balance", tt.policy}
			if tt.policy == "hash" {
				args = append(args, "--hash-key", "ip-port") // one client IP: hash its ports
			}
			p := startPassthrough(t, addrs, args...)
			got := map[string]int{}
			for i := range 1000 {
				name, err := hello(t, p.addr, nil, tt.hold)
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				got[name]++
			}
			if !tt.check(got) {
				t.Fatalf("%s: distribution %v", tt.policy, got)
			}
			t.Logf("%s: %v", tt.policy, got)
		})
	}
}

func within(g map[string]int, lo, hi int) bool {
	for _, n := range []string{"b0", "b1", "b2"} {
		if g[n] < lo || g[n] > hi {
			return false
		}
	}
	return true
}

// first uses the first target until it dies; the second then takes over
// and no client connection fails.
func TestPassthroughFirstFailsOver(t *testing.T) {
	b0, b1 := newIDBackend(t, "b0", nil), newIDBackend(t, "b1", nil)
	p := startPassthrough(t, []string{b0.addr(), b1.addr()}, "--balance", "first")
	for i := range 200 {
		if i == 100 {
			b0.kill()
		}
		name, err := hello(t, p.addr, nil, false)
		if err != nil {
			t.Fatalf("connection %d failed: %v", i, err)
		}
		if want := map[bool]string{true: "b0", false: "b1"}[i < 100]; name != want {
			t.Fatalf("connection %d went to %s, want %s", i, name, want)
		}
	}
	p.stopOK()
	if p.summary("failed") != 0 {
		t.Fatal("a client connection failed")
	}
}

// Each client IP goes to the same target every time; when a target goes,
// only its clients move.
func TestPassthroughHashStickiness(t *testing.T) {
	var bs []*idBackend
	var addrs []string
	for i := range 3 {
		bs = append(bs, newIDBackend(t, fmt.Sprintf("b%d", i), nil))
		addrs = append(addrs, bs[i].addr())
	}
	p := startPassthrough(t, addrs, "--balance", "hash")
	const clients = 60
	src := func(i int) net.IP { return net.IPv4(127, 0, 1, byte(i+1)) }
	home := map[int]string{}
	for round := range 3 {
		for i := range clients {
			name, err := hello(t, p.addr, src(i), false)
			if err != nil {
				t.Fatal(err)
			}
			if round == 0 {
				home[i] = name
			} else if home[i] != name {
				t.Fatalf("client %s went to %s, then %s", src(i), home[i], name)
			}
		}
	}
	per := map[string]int{}
	for _, n := range home {
		per[n]++
	}
	if len(per) != 3 {
		t.Fatalf("clients per target %v: a target got none", per)
	}
	bs[1].kill()
	moved := 0
	for i := range clients {
		name, err := hello(t, p.addr, src(i), false)
		if err != nil {
			t.Fatalf("client %s after b1 left: %v", src(i), err)
		}
		switch {
		case home[i] == "b1":
			moved++
		case name != home[i]:
			t.Fatalf("client %s moved from %s to %s though its target stayed", src(i), home[i], name)
		}
	}
	t.Logf("clients per target %v; %d moved with b1", per, moved)
	p.stopOK()
}

// rstBackend accepts and resets every connection at once.
func rstBackend(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// A down target, one that accepts and resets, and one that black-holes
// SYNs: clients are served by the healthy one. Refused and timed-out dials
// are retried within the connection; the resetting target costs at most
// --max-fails clients before it is skipped.
func TestPassthroughBadTargets(t *testing.T) {
	live := newIDBackend(t, "live", nil)
	dead := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		a := ln.Addr().String()
		ln.Close()
		return a
	}()
	targets := []string{dead, rstBackend(t), nettest.SYNHole(t), live.addr()}
	p := startPassthrough(t, targets, "--connect-timeout", "300ms")
	failed := 0
	for i := range 60 {
		name, err := hello(t, p.addr, nil, false)
		switch {
		case err != nil:
			failed++
		case name != "live":
			t.Fatalf("connection %d served by %q", i, name)
		}
	}
	if failed > 3 {
		t.Fatalf("%d of 60 connections failed; the resetting target should cost at most --max-fails 3", failed)
	}
	skipped := p.findLogs("target skipped: its last attempts failed")
	if len(skipped) < 3 {
		t.Fatalf("%d targets were skipped, want the 3 bad ones", len(skipped))
	}
	t.Logf("%d of 60 connections failed (reset target, before it was skipped)", failed)
	p.stopOK()
}

// With every target down, the client is closed after the retries.
func TestPassthroughAllDownClosesClient(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	p := startPassthrough(t, []string{dead}, "--connect-retries", "3", "--backoff-max", "20ms")
	c := dial(t, p.addr)
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %v, want EOF", err)
	}
	l := p.waitLog("closing the client: no target accepted its connection", 5*time.Second)
	if l["attempts"].(float64) != 4 {
		t.Fatalf("log %v, want 4 attempts", l)
	}
	p.stopOK()
	if p.summary("failed") != 1 {
		t.Fatal("not counted")
	}
}

// The PROXY header ndlb sends carries the real client address, both when
// ndlb sees the client directly and when ndlb itself is behind a balancer
// that sends one (--accept-proxy); a malformed incoming header is rejected
// with a log line.
func TestPassthroughProxyProtocol(t *testing.T) {
	for _, v := range []string{"v1", "v2"} {
		t.Run(v, func(t *testing.T) {
			headers := make(chan *proxyproto.Header, 4)
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					h, _ := proxyproto.Read(bufio.NewReader(c))
					headers <- h
					c.Close()
				}
			}()
			direct := startPassthrough(t, []string{ln.Addr().String()}, "--send-proxy", v)
			c := dial(t, direct.addr)
			h := <-headers
			if h == nil || h.SourceAddr.String() != c.LocalAddr().String() {
				t.Fatalf("header %+v, want source %s", h, c.LocalAddr())
			}
			c.Close()
			direct.stopOK()

			behind := startPassthrough(t, []string{ln.Addr().String()}, "--send-proxy", v, "--accept-proxy")
			real := &net.TCPAddr{IP: net.ParseIP("203.0.113.50"), Port: 50123}
			front := dial(t, behind.addr)
			proxyproto.HeaderProxyFromAddrs(2, real, &net.TCPAddr{IP: net.ParseIP("198.51.100.7"), Port: 443}).WriteTo(front)
			if h := <-headers; h == nil || h.SourceAddr.String() != real.String() {
				t.Fatalf("header %+v, want source %s", h, real)
			}
			open := behind.waitLog("proxying", 5*time.Second)
			if open["client"] != real.String() {
				t.Fatalf("open log %v, want client %s", open, real)
			}
			front.Close()

			bad := dial(t, behind.addr)
			bad.Write([]byte("PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n"))
			bad.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := bad.Read(make([]byte, 1)); err == nil {
				t.Fatal("a malformed header was not rejected")
			}
			behind.waitLog("connection rejected: no valid PROXY protocol header", 5*time.Second)
			behind.stopOK()
			if behind.summary("proxy_rejected") != 1 {
				t.Fatal("rejection not counted")
			}
		})
	}
}

// With --accept-proxy-from, only the listed front balancer may send PROXY
// headers: a forged header from another address is refused before it is
// read, logged and counted, while the front balancer's clients are served
// with the address its header carries.
func TestAcceptProxyFromTrustedOnly(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--accept-proxy-from", "127.0.0.2/32")
	real := &net.TCPAddr{IP: net.ParseIP("203.0.113.9"), Port: 4000}
	header := proxyproto.HeaderProxyFromAddrs(1, real, &net.TCPAddr{IP: net.ParseIP("198.51.100.1"), Port: 9000})
	// A forger on 127.0.0.1.
	forged := dial(t, p.addr)
	header.WriteTo(forged)
	forged.Write([]byte("{\"forged\":1}\n"))
	forged.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := forged.Read(make([]byte, 1)); err == nil {
		t.Fatal("a header from an untrusted address was read")
	}
	forged.Close()
	p.waitLog("connection refused: its address may not send PROXY headers (--accept-proxy-from)", 5*time.Second)
	// The front balancer on 127.0.0.2.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
	front, err := d.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	header.WriteTo(front)
	front.Write([]byte("{\"a\":1}\n"))
	front.Close()
	if l := p.waitLog("client disconnected", 10*time.Second); l["client"] != real.String() || l["lines"].(float64) != 1 {
		t.Fatalf("log %v, want client %s and 1 line", l, real)
	}
	p.stopOK()
	if w.sinks[0].Lines() != 1 {
		t.Fatalf("the sink got %d lines, want only the front balancer's", w.sinks[0].Lines())
	}
}

// In NDJSON mode, --accept-proxy puts the real client address in the logs.
func TestNDJSONAcceptProxyLogsClient(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--accept-proxy")
	real := &net.TCPAddr{IP: net.ParseIP("2001:db8::77"), Port: 4000}
	c := dial(t, p.addr)
	proxyproto.HeaderProxyFromAddrs(1, real, &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 9000}).WriteTo(c)
	c.Write([]byte("{\"a\":1}\n{\"a\":2}\n"))
	c.Close()
	l := p.waitLog("client disconnected", 10*time.Second)
	if l["client"] != real.String() || l["lines"].(float64) != 2 {
		t.Fatalf("log %v, want client %s and 2 lines", l, real)
	}
	p.stopOK()
}

// A connection quiet for seconds carries on where it stopped, in both
// engines: with goroutines its streams park (both directions) and resume;
// in an event loop it holds no goroutine to begin with.
func TestPassthroughIdleConnectionResumes(t *testing.T) {
	for _, loop := range []bool{true, false} {
		t.Run(fmt.Sprintf("event-loop=%v", loop), func(t *testing.T) {
			b := newIDBackend(t, "b0", nil)
			p := startPassthrough(t, []string{b.addr()}, fmt.Sprintf("--event-loop=%v", loop))
			c := dial(t, p.addr)
			c.SetDeadline(time.Now().Add(30 * time.Second))
			r := bufio.NewReader(c)
			if name, err := r.ReadString('\n'); err != nil || name != "b0\n" {
				t.Fatalf("greeting %q %v", name, err)
			}
			time.Sleep(3 * time.Second) // parked by now: 0.25 s of quiet, then the sweeper's next tick, with room for a loaded machine
			c.Write([]byte("after the nap\n"))
			if got, err := r.ReadString('\n'); err != nil || got != "after the nap\n" {
				t.Fatalf("echo %q %v", got, err)
			}
			c.(*net.TCPConn).CloseWrite()
			if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
				t.Fatalf("after half-close: %q %v", rest, err)
			}
			cl := p.waitLog("connection closed", 5*time.Second)
			if cl["closed_by"] != "client" || cl["err"] != nil {
				t.Fatalf("close log %v", cl)
			}
			p.stopOK()
			if loop {
				if n := p.summary("event_loop"); n != 1 {
					t.Fatalf("%d connections in the event loop, want 1", n)
				}
				return
			}
			// Both directions were quiet for more than 0.25 s: both parked.
			if parks := p.summary("parks"); parks < 2 {
				t.Fatalf("%d streams parked, want both directions of the idle connection", parks)
			}
		})
	}
}

// Junk from clients that makes a target close silently is not held against
// the target: it stays in rotation, and the summary counts the closes as
// client_provoked.
func TestPassthroughClientJunkKeepsTarget(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { c.Read(make([]byte, 64)); c.Close() }() // refuses what it read, silently
		}
	}()
	p := startPassthrough(t, []string{ln.Addr().String()}, "--max-fails", "2", "--admin", "127.0.0.1:0")
	api := newAdminAPI(t, p, "")
	for range 10 {
		c := dial(t, p.addr)
		c.Write([]byte("\x16\x03\x01 not what the target speaks\n"))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, c)
		c.Close()
	}
	if code := api.call("GET", "/readyz", nil); code != 200 {
		t.Fatalf("readyz %d after clients sent junk", code)
	}
	if l := p.findLogs("target skipped: its last attempts failed"); len(l) != 0 {
		t.Fatalf("the target was skipped: %v", l)
	}
	p.stopOK()
	if p.summary("client_provoked") != 10 || p.summary("early_closed") != 0 {
		t.Fatalf("client_provoked %d, early_closed %d", p.summary("client_provoked"), p.summary("early_closed"))
	}
}

// With --hash-on host, two listeners whose targets are the same hosts on
// different ports send each client to the same host on both.
func TestHashOnHostAcrossListeners(t *testing.T) {
	h2a := newIDBackendAt(t, "host2", "127.0.0.2:0", nil)
	_, p1, _ := net.SplitHostPort(h2a.addr())
	h3a := newIDBackendAt(t, "host3", "127.0.0.3:"+p1, nil)
	h3b := newIDBackendAt(t, "host3", "127.0.0.3:0", nil)
	_, p2, _ := net.SplitHostPort(h3b.addr())
	h2b := newIDBackendAt(t, "host2", "127.0.0.2:"+p2, nil)
	path := writeConfig(t, t.TempDir(), fmt.Sprintf("log-format = \"json\"\n\n"+
		"[[listener]]\nname = \"https\"\npassthrough = true\naddr = \"127.0.0.1\"\nport = 0\nbalance = \"hash\"\nhash-on = \"host\"\ntarget = [%q, %q]\n\n"+
		"[[listener]]\nname = \"grpc\"\npassthrough = true\naddr = \"127.0.0.1\"\nport = 0\nbalance = \"hash\"\nhash-on = \"host\"\ntarget = [%q, %q]\n",
		h2a.addr(), h3a.addr(), h3b.addr(), h2b.addr()))
	p := startCmd(t, command(bin, "--config", path))
	addrs := listening(t, p, 2)
	seen := map[string]int{}
	for i := range 30 {
		src := net.IPv4(127, 0, 1, byte(10+i))
		a, err := hello(t, addrs["https"], src, false)
		if err != nil {
			t.Fatal(err)
		}
		b, err := hello(t, addrs["grpc"], src, false)
		if err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Fatalf("client %s: %s on one port, %s on the other", src, a, b)
		}
		seen[a]++
	}
	if len(seen) != 2 {
		t.Fatalf("clients reached %v: want both hosts used", seen)
	}
	p.stopOK()
}

// Behind one NAT, 40 clients share an address. With --hash-key
// ip+first:START:END they spread over the targets by the user name at the
// start of their stream, and each name sticks to its target over
// reconnects; the bytes reach the target unchanged.
func TestHashKeyFromFirstBytes(t *testing.T) {
	var backends []*idBackend
	var addrs []string
	for _, name := range []string{"t0", "t1", "t2"} {
		b := newIDBackend(t, name, nil)
		backends = append(backends, b)
		addrs = append(addrs, b.addr())
	}
	p := startPassthrough(t, addrs, "--balance", "hash", "--hash-key", "ip+first:5:12")
	// ask sends "user=NAME...\n" first, as a client of such a protocol
	// does, then reads the target's name and the echo of its line.
	ask := func(user string) string {
		c := dial(t, p.addr)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line := fmt.Sprintf("user=%-7s hello\n", user)
		c.Write([]byte(line))
		r := bufio.NewReader(c)
		name, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		if echo, err := r.ReadString('\n'); err != nil || echo != line {
			t.Fatalf("%s: echo %q %v, want the line unchanged", user, echo, err)
		}
		return strings.TrimSpace(name)
	}
	first := map[string]string{}
	spread := map[string]int{}
	for i := range 40 {
		user := fmt.Sprintf("u%03d", i)
		first[user] = ask(user)
		spread[first[user]]++
	}
	for user, target := range first {
		if again := ask(user); again != target {
			t.Fatalf("%s went to %s, then to %s", user, target, again)
		}
	}
	if len(spread) != 3 {
		t.Fatalf("40 clients behind one address reached %v: want all three targets", spread)
	}
	t.Logf("40 users over 3 targets: %v", spread)
	p.stopOK()
}
