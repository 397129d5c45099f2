package health

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/internal/certtest"
	"github.com/ndlb/ndlb/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// quick is a check config for one-off Check calls: a timeout long enough
// that a loaded machine does not fail a good check.
func quick(kind string) Config {
	cfg := DefaultConfig(kind)
	cfg.Interval, cfg.Timeout = 5*time.Second, 5*time.Second
	cfg.Logger = slog.New(slog.DiscardHandler)
	return cfg
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached in 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// An HTTP target goes down exactly at its fall-th failing check and up at
// its rise-th passing one. The checks run on a fake clock, one interval at a
// time, so every check is counted and none is missed.
func TestRiseAndFall(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" || r.Method != http.MethodHead {
			w.WriteHeader(404)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	set := upstream.NewSet([]string{addr})
	target := set.Targets()[0]
	clock := clockwork.NewFakeClock()
	cfg := DefaultConfig(KindHTTP)
	cfg.Logger, cfg.Clock = slog.New(slog.DiscardHandler), clock
	cfg.HTTP.Method, cfg.HTTP.Path = http.MethodHead, "/health"
	cfg.Rise, cfg.Fall = 2, 3
	cfg.Interval, cfg.Timeout = 10*time.Second, 5*time.Second // the timeout is real time: room for a loaded machine
	c, err := New(cfg, set)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// check lets one check run and waits until its result is recorded.
	check := func() {
		t.Helper()
		if err := clock.BlockUntilContext(ctx, 1); err != nil {
			t.Fatal(err)
		}
		clock.Advance(cfg.Interval)
		now := clock.Now()
		waitFor(t, "the check's result", func() bool { return target.LastCheck().At.Equal(now) })
	}
	for i := range 3 {
		check()
		if target.State() != upstream.StateUp || target.LastCheck().Err != nil {
			t.Fatalf("check %d: state %s, err %v", i, target.State(), target.LastCheck().Err)
		}
	}
	status.Store(503)
	for i := 1; i <= cfg.Fall; i++ {
		check()
		if down := target.State() == upstream.StateDown; down != (i == cfg.Fall) {
			t.Fatalf("after %d failing checks: state %s, want down only after %d", i, target.State(), cfg.Fall)
		}
	}
	if target.Accepts() || !errors.Is(target.LastCheck().Err, ErrStatus) {
		t.Fatalf("a down target accepts work, or its last check's error is not ErrStatus: %v", target.LastCheck().Err)
	}
	status.Store(200)
	for i := 1; i <= cfg.Rise; i++ {
		check()
		if up := target.State() == upstream.StateUp; up != (i == cfg.Rise) {
			t.Fatalf("after %d passing checks: state %s, want up only after %d", i, target.State(), cfg.Rise)
		}
	}
}

func TestCheckKinds(t *testing.T) {
	server, client, err := certtest.Configs("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("status: green"))
	}))
	tlsSrv.TLS = server
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	}))
	defer plain.Close()
	dead := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}()
	tests := []struct {
		name string
		cfg  func() Config
		addr string
		ok   bool
		want error // the failure expected, when not ok
	}{
		{name: "tcp up", cfg: func() Config { return quick(KindTCP) }, addr: plain.Listener.Addr().String(), ok: true},
		{name: "tcp refused", cfg: func() Config { return quick(KindTCP) }, addr: dead, want: syscall.ECONNREFUSED},
		{name: "https with body", addr: tlsSrv.Listener.Addr().String(), ok: true, cfg: func() Config {
			c := quick(KindHTTP)
			c.HTTP.Body = "green"
			c.HTTP.TLS = func() (*tls.Config, error) { return client, nil }
			return c
		}},
		{name: "body missing", addr: tlsSrv.Listener.Addr().String(), want: ErrBody, cfg: func() Config {
			c := quick(KindHTTP)
			c.HTTP.Body = "red"
			c.HTTP.TLS = func() (*tls.Config, error) { return client, nil }
			return c
		}},
		{name: "redirect is not 200", addr: plain.Listener.Addr().String(), want: ErrStatus, cfg: func() Config { return quick(KindHTTP) }},
		{name: "redirect expected", addr: plain.Listener.Addr().String(), ok: true, cfg: func() Config {
			c := quick(KindHTTP)
			c.HTTP.Status = http.StatusFound
			return c
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg(), upstream.NewSet(nil))
			if err != nil {
				t.Fatal(err)
			}
			err = c.Check(context.Background(), tt.addr)
			if (err == nil) != tt.ok || !tt.ok && !errors.Is(err, tt.want) {
				t.Fatalf("check: %v, want ok=%v (failure: %v)", err, tt.ok, tt.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
	}{
		{name: "kind", edit: func(c *Config) { c.Kind = "icmp" }},
		{name: "interval", edit: func(c *Config) { c.Interval = 0 }},
		{name: "interval below the least", edit: func(c *Config) { c.Interval, c.Timeout = time.Nanosecond, time.Nanosecond }},
		{name: "timeout over interval", edit: func(c *Config) { c.Timeout = time.Minute }},
		{name: "rise", edit: func(c *Config) { c.Rise = 0 }},
		{name: "path", edit: func(c *Config) { c.HTTP.Path = "health" }},
		{name: "status", edit: func(c *Config) { c.HTTP.Status = 99 }},
		{name: "method", edit: func(c *Config) { c.HTTP.Method = "GET /" }},
		{name: "path with a header in it", edit: func(c *Config) { c.HTTP.Path = "/\r\nX-Evil: 1" }},
		{name: "path with a space", edit: func(c *Config) { c.HTTP.Path = "/a b" }},
		{name: "HEAD expecting a body", edit: func(c *Config) { c.HTTP.Method, c.HTTP.Body = http.MethodHead, "ok" }},
	}
	if err := DefaultConfig(KindHTTP).Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		c := DefaultConfig(KindHTTP)
		tt.edit(&c)
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

// udpAnswerer answers every datagram with answer, until the test ends.
func udpAnswerer(t *testing.T, answer string) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == DefaultUDPSend || string(buf[:n]) == "\x00\x01" {
				_, _ = c.WriteToUDPAddrPort([]byte(answer), from)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().String()
}

// A udp check passes on an answer (with the expected text), fails on a
// closed port (ICMP), on silence and on the wrong answer; Port checks a
// side port of the target's host.
func TestUDPCheck(t *testing.T) {
	ok := udpAnswerer(t, "pong ready")
	closed := func() string {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}()
	check := func(cfg Config, addr string) error {
		t.Helper()
		c, err := New(cfg, upstream.NewSet(nil))
		if err != nil {
			t.Fatal(err)
		}
		return c.Check(context.Background(), addr)
	}
	cfg := quick(KindUDP)
	if err := check(cfg, ok); err != nil {
		t.Errorf("answering target: %v", err)
	}
	cfg.UDP.Expect = "ready"
	if err := check(cfg, ok); err != nil {
		t.Errorf("expected text: %v", err)
	}
	cfg.UDP.Expect = "missing"
	if err := check(cfg, ok); !errors.Is(err, ErrBody) {
		t.Errorf("wrong answer: %v, want ErrBody", err)
	}
	cfg.UDP.Expect = ""
	if err := check(cfg, closed); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("closed port: %v, want ECONNREFUSED", err)
	}
	cfg.UDP.Send = []byte("not answered")
	cfg.Timeout = 100 * time.Millisecond
	if err := check(cfg, ok); !errors.Is(err, ErrNoAnswer) {
		t.Errorf("silence: %v, want ErrNoAnswer", err)
	}
	cfg.UDP.Send = []byte{0, 1}
	_, port, _ := net.SplitHostPort(ok)
	cfg.Port, _ = net.LookupPort("udp", port)
	cfg.Timeout = 5 * time.Second // an answer is expected: room for a loaded machine
	if err := check(cfg, closed); err != nil {
		t.Errorf("side port: %v", err)
	}
	cfg.UDP.Send = make([]byte, MaxUDPSend+1)
	if _, err := New(cfg, upstream.NewSet(nil)); err == nil {
		t.Error("an oversize datagram was accepted")
	}
}
