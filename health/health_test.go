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
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/internal/certtest"
	"github.com/ndlb/ndlb/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func fast(kind string) Config {
	cfg := DefaultConfig(kind)
	cfg.Interval, cfg.Timeout = 10*time.Millisecond, 10*time.Millisecond
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

// An HTTP target goes down after fall failing checks and up after rise
// passing ones.
func TestRiseAndFall(t *testing.T) {
	var status atomic.Int32
	status.Store(200)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
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
	cfg := fast(KindHTTP)
	cfg.HTTP.Method, cfg.HTTP.Path = http.MethodHead, "/health"
	c, err := New(cfg, set)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor(t, "first checks", func() bool { return hits.Load() >= 3 })
	if target.State() != upstream.StateUp {
		t.Fatalf("state %s", target.State())
	}
	status.Store(503)
	from := hits.Load()
	waitFor(t, "down", func() bool { return target.State() == upstream.StateDown })
	if n := hits.Load() - from; n < int32(cfg.Fall) {
		t.Fatalf("down after %d failing checks, want %d", n, cfg.Fall)
	}
	if target.Accepts() || target.LastCheck().Err == nil {
		t.Fatal("a down target accepts work, or its last check shows no error")
	}
	status.Store(200)
	from = hits.Load()
	waitFor(t, "up", func() bool { return target.State() == upstream.StateUp })
	if n := hits.Load() - from; n < int32(cfg.Rise) {
		t.Fatalf("up after %d passing checks, want %d", n, cfg.Rise)
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
	}{
		{name: "tcp up", cfg: func() Config { return fast(KindTCP) }, addr: plain.Listener.Addr().String(), ok: true},
		{name: "tcp refused", cfg: func() Config { return fast(KindTCP) }, addr: dead},
		{name: "https with body", addr: tlsSrv.Listener.Addr().String(), ok: true, cfg: func() Config {
			c := fast(KindHTTP)
			c.Timeout = time.Second
			c.Interval = time.Second
			c.HTTP.Body = "green"
			c.HTTP.TLS = func() (*tls.Config, error) { return client, nil }
			return c
		}},
		{name: "body missing", addr: tlsSrv.Listener.Addr().String(), cfg: func() Config {
			c := fast(KindHTTP)
			c.Timeout, c.Interval = time.Second, time.Second
			c.HTTP.Body = "red"
			c.HTTP.TLS = func() (*tls.Config, error) { return client, nil }
			return c
		}},
		{name: "redirect is not 200", addr: plain.Listener.Addr().String(), cfg: func() Config { return fast(KindHTTP) }},
		{name: "redirect expected", addr: plain.Listener.Addr().String(), ok: true, cfg: func() Config {
			c := fast(KindHTTP)
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
			if err := c.Check(context.Background(), tt.addr); (err == nil) != tt.ok {
				t.Fatalf("check: %v, want ok=%v", err, tt.ok)
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
		{name: "timeout over interval", edit: func(c *Config) { c.Timeout = time.Minute }},
		{name: "rise", edit: func(c *Config) { c.Rise = 0 }},
		{name: "path", edit: func(c *Config) { c.HTTP.Path = "health" }},
		{name: "status", edit: func(c *Config) { c.HTTP.Status = 99 }},
		{name: "method", edit: func(c *Config) { c.HTTP.Method = "GET /" }},
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
