package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeListener struct {
	info ListenerInfo
	set  *upstream.Set
}

func (f *fakeListener) Info() ListenerInfo     { return f.info }
func (f *fakeListener) Targets() *upstream.Set { return f.set }

// world is an admin server on loopback over two listeners sharing a target.
type world struct {
	t   *testing.T
	srv *Server
	url string
	ls  []Listener
}

func newWorld(t *testing.T, token string) *world {
	t.Helper()
	w := &world{t: t}
	w.ls = []Listener{
		&fakeListener{info: ListenerInfo{Name: "logs", Addr: "127.0.0.1:9000", Mode: "ndjson"}, set: upstream.NewSet([]string{"10.0.0.1:5170", "10.0.0.2:5170"})},
		&fakeListener{info: ListenerInfo{Name: "web", Addr: "127.0.0.1:8443", Mode: "passthrough", Balance: "leastconn"}, set: upstream.NewSet([]string{"10.0.0.2:5170"})},
	}
	cfg := Config{Addr: "127.0.0.1:0", Listeners: func() []Listener { return w.ls }, Logger: slog.New(slog.DiscardHandler)}
	if token != "" {
		cfg.TokenFile = filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(cfg.TokenFile, []byte(token+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	w.srv, w.url = srv, "http://"+srv.Addr().String()
	return w
}

// do makes a request and decodes the JSON answer into out (if not nil).
func (w *world) do(method, path, token string, out any) int {
	w.t.Helper()
	req, err := http.NewRequest(method, w.url+path, nil)
	if err != nil {
		w.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if method == "POST" {
		req.Header.Set("X-Requested-By", "test") // what curl users add; a web form cannot
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			w.t.Fatalf("%s %s: %v in %q", method, path, err, body)
		}
	}
	return resp.StatusCode
}

func TestRoutes(t *testing.T) {
	w := newWorld(t, "")
	var st map[string]string
	if code := w.do("GET", "/healthz", "", &st); code != 200 || st["status"] != "ok" {
		t.Fatalf("healthz %d %v", code, st)
	}
	var ready readiness
	if code := w.do("GET", "/readyz", "", &ready); code != 200 || !ready.Ready {
		t.Fatalf("readyz %d %+v", code, ready)
	}
	var ls []ListenerInfo
	if code := w.do("GET", "/api/v1/listeners", "", &ls); code != 200 || len(ls) != 2 || ls[1].Balance != "leastconn" {
		t.Fatalf("listeners %d %+v", code, ls)
	}
	var change stateChange
	if code := w.do("POST", "/api/v1/targets/10.0.0.2:5170/drain", "", &change); code != 200 || len(change.Changed) != 2 || change.State != "draining" {
		t.Fatalf("drain %d %+v", code, change)
	}
	// web's only target is draining: not ready.
	if code := w.do("GET", "/readyz", "", &ready); code != 503 || ready.Ready || ready.Listeners["web"] || !ready.Listeners["logs"] {
		t.Fatalf("readyz %d %+v", code, ready)
	}
	// With a spool that takes lines, a listener without a target up
	// stays ready (its clients keep sending into the spool); one that
	// is full (and waits for room) is not.
	web := w.ls[1].(*fakeListener)
	web.info.Spool = &SpoolInfo{Dir: "/spool", Open: true, Accepting: true}
	if code := w.do("GET", "/readyz", "", &ready); code != 200 || !ready.Ready || !ready.Listeners["web"] || !slices.Equal(ready.Spooling, []string{"web"}) {
		t.Fatalf("readyz with a spool %d %+v", code, ready)
	}
	web.info.Spool.Accepting = false
	ready = readiness{}
	if code := w.do("GET", "/readyz", "", &ready); code != 503 || ready.Ready || ready.Listeners["web"] || len(ready.Spooling) != 0 {
		t.Fatalf("readyz with a full spool %d %+v", code, ready)
	}
	web.info.Spool = nil
	if code := w.do("POST", "/api/v1/targets/10.0.0.2:5170/disable?listener=logs", "", &change); code != 200 || !slices.Equal(change.Changed, []string{"logs"}) {
		t.Fatalf("disable %d %+v", code, change)
	}
	var ts []targetInfo
	w.ls[0].Targets().Targets()[0].SetChecked(upstream.CheckResult{At: time.Now(), Err: errors.New("connection refused")}, false, true)
	if code := w.do("GET", "/api/v1/targets", "", &ts); code != 200 || len(ts) != 3 {
		t.Fatalf("targets %d %+v", code, ts)
	}
	want := []string{"logs 10.0.0.1:5170 down", "logs 10.0.0.2:5170 disabled", "web 10.0.0.2:5170 draining"}
	for i, ti := range ts {
		if got := ti.Listener + " " + ti.Addr + " " + ti.State; got != want[i] {
			t.Fatalf("target %d: %s, want %s", i, got, want[i])
		}
	}
	if ts[0].LastCheck == nil || ts[0].LastCheck.OK || ts[0].LastError != "connection refused" {
		t.Fatalf("last check %+v", ts[0])
	}
	if code := w.do("POST", "/api/v1/targets/10.0.0.2:5170/enable", "", &change); code != 200 || change.State != "up" {
		t.Fatalf("enable %d %+v", code, change)
	}
	if code := w.do("POST", "/api/v1/targets/10.9.9.9:1/drain", "", nil); code != 404 {
		t.Fatalf("unknown target: %d", code)
	}
	if code := w.do("POST", "/api/v1/targets/10.0.0.1:5170/reboot", "", nil); code != 404 {
		t.Fatalf("unknown action: %d", code)
	}
	if code := w.do("GET", "/api/v1/targets/10.0.0.1:5170/drain", "", nil); code != 405 {
		t.Fatalf("GET on a POST route: %d", code)
	}
	var doc map[string]any
	if code := w.do("GET", "/openapi.json", "", &doc); code != 200 || doc["openapi"] != "3.0.3" {
		t.Fatalf("openapi %d", code)
	}
}

func TestToken(t *testing.T) {
	w := newWorld(t, "s3cret")
	tests := []struct {
		name  string
		token string
		want  int
	}{
		{name: "none", want: 401},
		{name: "wrong", token: "guess", want: 401},
		{name: "right", token: "s3cret", want: 200},
	}
	for _, tt := range tests {
		if code := w.do("POST", "/api/v1/targets/10.0.0.1:5170/drain", tt.token, nil); code != tt.want {
			t.Fatalf("%s token: %d, want %d", tt.name, code, tt.want)
		}
	}
	// The scheme is case-insensitive; another scheme is not a bearer token.
	for header, want := range map[string]int{"bearer s3cret": 200, "BEARER  s3cret": 200, "Basic s3cret": 401, "s3cret": 401, "Bearer": 401} {
		req, _ := http.NewRequest("POST", w.url+"/api/v1/targets/10.0.0.1:5170/drain", nil)
		req.Header.Set("Authorization", header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Authorization: %q: %d, want %d", header, resp.StatusCode, want)
		}
	}
	// Reading needs no token.
	if code := w.do("GET", "/api/v1/targets", "", nil); code != 200 {
		t.Fatalf("GET with a token configured: %d", code)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, []byte(" \n"), 0o600)
	if _, err := New(Config{Addr: "127.0.0.1:0", TokenFile: empty, Listeners: func() []Listener { return nil }}); !errors.Is(err, ErrEmptyToken) {
		t.Fatalf("empty token file: %v", err)
	}
	// A token no header can carry would refuse every change.
	for _, bad := range []string{"a\nb\n", "a\r\nb", "nul\x00", "del\x7f"} {
		os.WriteFile(empty, []byte(bad), 0o600)
		if _, err := New(Config{Addr: "127.0.0.1:0", TokenFile: empty, Listeners: func() []Listener { return nil }}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "the token is one line") {
			t.Errorf("token file %q: %v", bad, err)
		}
	}
}

// Every route is in openapi.json, and every operation there is a route.
func TestSpecMatchesRoutes(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(spec, &doc); err != nil {
		t.Fatal(err)
	}
	inSpec := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			inSpec[strings.ToUpper(method)+" "+path] = true
		}
	}
	s := &Server{}
	for pattern := range s.routes() {
		pattern = strings.Replace(pattern, "/{$}", "/", 1) // the exact-match form of /
		if !inSpec[pattern] {
			t.Errorf("route %q is not in openapi.json", pattern)
		}
		delete(inSpec, pattern)
	}
	for op := range inSpec {
		t.Errorf("openapi.json has %q, which is no route", op)
	}
}
