package integration

import (
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// httpBackend answers /health with a status that the test sets, and any
// other path with its name.
type httpBackend struct {
	name   string
	status atomic.Int32
	checks atomic.Int32
	srv    *http.Server
	addr   string
}

func newHTTPBackend(t *testing.T, name string) *httpBackend {
	t.Helper()
	b := &httpBackend{name: name}
	b.status.Store(200)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.addr = ln.Addr().String()
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			b.checks.Add(1)
			w.WriteHeader(int(b.status.Load()))
			return
		}
		io.WriteString(w, b.name)
	})}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// get asks ndlb for / on a new connection and returns who answered.
func get(t *testing.T, addr string) string {
	t.Helper()
	client := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET through ndlb: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A target whose HTTP check starts failing goes down after --check-fall
// checks and comes back after --check-rise; meanwhile passthrough
// connections avoid it.
func TestHTTPCheckSteersPassthrough(t *testing.T) {
	b0, b1 := newHTTPBackend(t, "b0"), newHTTPBackend(t, "b1")
	p := startPassthrough(t, []string{b0.addr, b1.addr}, "--check", "http", "--check-http-path", "/health",
		"--check-interval", "300ms", "--check-timeout", "250ms", "--check-fall", "3", "--check-rise", "2")
	seen := map[string]int{}
	for range 10 {
		seen[get(t, p.addr)]++
	}
	if seen["b0"] == 0 || seen["b1"] == 0 {
		t.Fatalf("both targets should serve while healthy: %v", seen)
	}
	b0.status.Store(503)
	from := b0.checks.Load()
	down := p.waitLog("target down: health checks fail", 10*time.Second)
	if n := b0.checks.Load() - from; n < 3 || down["target"] != b0.addr {
		t.Fatalf("down after %d failing checks (%v), want 3 on %s", n, down, b0.addr)
	}
	for i := range 20 {
		if who := get(t, p.addr); who != "b1" {
			t.Fatalf("request %d went to %s, which is down", i, who)
		}
	}
	b0.status.Store(200)
	from = b0.checks.Load()
	p.waitLog("target up: health checks pass", 10*time.Second)
	if n := b0.checks.Load() - from; n < 2 {
		t.Fatalf("up after %d passing checks, want 2", n)
	}
	seen = map[string]int{}
	for range 10 {
		seen[get(t, p.addr)]++
	}
	if seen["b0"] == 0 {
		t.Fatalf("b0 gets no traffic after it came back: %v", seen)
	}
	p.stopOK()
	if strings.Contains(p.stderr.String(), "closing the client") {
		t.Fatal("a client connection failed")
	}
}
