package admin

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/certtest"
)

// request sends method path to w's server with the given headers and
// returns the status.
func (w *world) request(method, path string, headers map[string]string) int {
	w.t.Helper()
	var body io.Reader
	if ct := headers["Content-Type"]; ct != "" {
		body = strings.NewReader("{}")
	}
	req, err := http.NewRequest(method, w.url+path, body)
	if err != nil {
		w.t.Fatal(err)
	}
	for k, v := range headers {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Without a token, a change is accepted only from this host and only in a
// request a web page cannot make: a form POST (the CSRF a page opened in
// the operator's browser would send) and a cross-site request are refused.
func TestChangesWithoutTokenRefuseWhatAPageCanSend(t *testing.T) {
	w := newWorld(t, "")
	const drain = "/api/v1/targets/10.0.0.1:5170/drain"
	for _, tc := range []struct {
		name    string
		headers map[string]string
		want    int
	}{
		{"a form post", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, 403},
		{"text/plain, as fetch without preflight", map[string]string{"Content-Type": "text/plain"}, 403},
		{"no header at all", nil, 403},
		{"JSON from a foreign page", map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example"}, 403},
		{"JSON marked cross-site", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403},
		{"JSON", map[string]string{"Content-Type": "application/json; charset=utf-8"}, 200},
		{"curl with X-Requested-By", map[string]string{"X-Requested-By": "ops"}, 200},
		{"same origin", map[string]string{"X-Requested-By": "ops", "Origin": w.url, "Sec-Fetch-Site": "same-origin"}, 200},
	} {
		if got := w.request("POST", drain, tc.headers); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

// A Host header that names another site (DNS rebinding) is refused on every
// route but the probes; IP addresses and localhost are served.
func TestForeignHostRefused(t *testing.T) {
	w := newWorld(t, "")
	for host, want := range map[string]int{"rebind.evil.example": 403, "127.0.0.1:1": 200, "localhost": 200, "[::1]:80": 200} {
		for _, path := range []string{"/api/v1/targets", "/api/v1/listeners", "/"} {
			if got := w.request("GET", path, map[string]string{"Host": host}); got != want {
				t.Errorf("GET %s with Host %s: %d, want %d", path, host, got, want)
			}
		}
	}
	if got := w.request("GET", "/healthz", map[string]string{"Host": "rebind.evil.example"}); got != 200 {
		t.Errorf("healthz with a foreign Host: %d (probes answer anyone)", got)
	}
	// Names listed in Hosts are served; with the token, any name is.
	w.srv.cfg.Hosts = []string{"ndlb.monitoring.svc"}
	if got := w.request("GET", "/api/v1/targets", map[string]string{"Host": "NDLB.monitoring.svc:9900"}); got != 200 {
		t.Errorf("a listed host: %d", got)
	}
	tw := newWorld(t, "s3cret")
	if got := tw.request("GET", "/api/v1/targets", map[string]string{"Host": "ndlb.example", "Authorization": "Bearer s3cret"}); got != 200 {
		t.Errorf("any host with the token: %d", got)
	}
	if got := tw.request("GET", "/api/v1/targets", map[string]string{"Host": "ndlb.example", "Authorization": "Bearer guess"}); got != 403 {
		t.Errorf("any host with a wrong token: %d", got)
	}
}

// With TokenForReads, reads need the token too, but not the probes.
func TestTokenForReads(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tok, []byte("s3cret"), 0o600)
	srv, err := New(Config{Addr: "127.0.0.1:0", TokenFile: tok, TokenForReads: true, Logger: slog.New(slog.DiscardHandler),
		Listeners: func() []Listener { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer srv.Shutdown(context.Background())
	w := &world{t: t, url: "http://" + srv.Addr().String()}
	if got := w.request("GET", "/api/v1/targets", nil); got != 401 {
		t.Errorf("read without the token: %d", got)
	}
	if got := w.request("GET", "/api/v1/targets", map[string]string{"Authorization": "Bearer s3cret"}); got != 200 {
		t.Errorf("read with the token: %d", got)
	}
	if got := w.request("GET", "/readyz", nil); got != 200 {
		t.Errorf("readyz without the token: %d", got)
	}
}

// A token rotated in its file takes effect without a restart; a file
// emptied by mistake keeps the previous token.
func TestTokenRotation(t *testing.T) {
	w := newWorld(t, "first")
	const drain = "/api/v1/targets/10.0.0.1:5170/drain"
	auth := func(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }
	if got := w.request("POST", drain, auth("first")); got != 200 {
		t.Fatalf("the first token: %d", got)
	}
	rewrite := func(content string, age time.Duration) {
		os.WriteFile(w.srv.cfg.TokenFile, []byte(content), 0o600)
		at := time.Now().Add(age)
		os.Chtimes(w.srv.cfg.TokenFile, at, at)
	}
	rewrite("second\n", time.Second)
	if got := w.request("POST", drain, auth("first")); got != 401 {
		t.Errorf("the old token after rotation: %d", got)
	}
	if got := w.request("POST", drain, auth("second")); got != 200 {
		t.Errorf("the new token: %d", got)
	}
	rewrite("", 2*time.Second)
	if got := w.request("POST", drain, auth("second")); got != 200 {
		t.Errorf("an emptied token file dropped the token: %d", got)
	}
	// A token of the same length moved into place with the old file's time
	// (install -p, rsync): a new inode.
	staged := w.srv.cfg.TokenFile + ".new"
	os.WriteFile(staged, []byte("third\n"), 0o600)
	fi, _ := os.Stat(w.srv.cfg.TokenFile)
	os.WriteFile(w.srv.cfg.TokenFile, []byte("secnd\n"), 0o600)
	w.request("POST", drain, auth("secnd")) // read: same size as "third"
	os.Chtimes(staged, fi.ModTime(), fi.ModTime())
	os.Chtimes(w.srv.cfg.TokenFile, fi.ModTime(), fi.ModTime())
	os.Rename(staged, w.srv.cfg.TokenFile)
	if got := w.request("POST", drain, auth("third")); got != 200 {
		t.Errorf("a token moved into place with the same size and time: %d", got)
	}
}

// The admin server closes a connection that sends no request for its idle
// timeout: it holds no file for a client that went quiet.
func TestIdleConnectionsClosed(t *testing.T) {
	srv, err := New(Config{Addr: "127.0.0.1:0", IdleTimeout: 50 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
		Listeners: func() []Listener { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer srv.Shutdown(context.Background())
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %d, %v; want EOF once the idle timeout closed the connection", n, err)
	}
}

// With a TLS config, the admin API is served over HTTPS only.
func TestAdminTLS(t *testing.T) {
	server, client, err := certtest.Configs("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Addr: "127.0.0.1:0", TLS: server, Logger: slog.New(slog.DiscardHandler), Listeners: func() []Listener { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	defer srv.Shutdown(context.Background())
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: client}, Timeout: 10 * time.Second}
	resp, err := hc.Get("https://" + srv.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	hc.CloseIdleConnections()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz over HTTPS: %d", resp.StatusCode)
	}
	if url, err := Probe(srv.Addr().String(), true); err != nil {
		t.Fatalf("Probe over HTTPS: %s %v", url, err)
	}
	plain := &http.Client{Timeout: 10 * time.Second}
	if resp, err := plain.Get("http://" + srv.Addr().String() + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP served")
		}
	}
}

// Several peers holding idle keep-alive connections up to MaxConns cannot
// keep a probe out either: it takes the place of the longest idle one,
// which is closed.
func TestIdlePeersCannotHoldEveryConnection(t *testing.T) {
	srv := startIdleServer(t)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := range MaxConns {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i/MaxConnsPerPeer))}}
		c, err := d.Dial("tcp", srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if err := getOn(c); err != nil { // served, then idle: held
			t.Fatal(err)
		}
	}
	probe := &http.Client{Timeout: 5 * time.Second}
	for range 3 {
		resp, err := probe.Get("http://" + srv.Addr().String() + "/healthz")
		if err != nil {
			t.Fatalf("a probe was kept out by idle connections: %v", err)
		}
		resp.Body.Close()
		probe.CloseIdleConnections()
	}
}

// getOn sends GET /healthz on c and reads the answer.
func getOn(c net.Conn) error {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	return nil
}

// startIdleServer starts an admin server whose connections never time out
// idle, shut down when the test ends.
func startIdleServer(t *testing.T) *Server {
	t.Helper()
	srv, err := New(Config{Addr: "127.0.0.1:0", IdleTimeout: time.Hour, Logger: slog.New(slog.DiscardHandler),
		Listeners: func() []Listener { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv
}

// One peer holding idle connections cannot keep others (the probes) out:
// past MaxConnsPerPeer its new connections are closed at once.
func TestPeerCannotHoldEveryConnection(t *testing.T) {
	srv := startIdleServer(t)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for range MaxConnsPerPeer {
		c, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if err := getOn(c); err != nil { // served, then idle: held
			t.Fatal(err)
		}
	}
	extra, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if err := getOn(extra); err == nil {
		t.Fatal("a peer got more than MaxConnsPerPeer connections")
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	other, err := d.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := getOn(other); err != nil {
		t.Fatalf("another peer was kept out: %v", err)
	}
}
