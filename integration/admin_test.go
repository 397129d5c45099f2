package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// adminAPI talks to a running ndlb's admin API.
type adminAPI struct {
	t     *testing.T
	url   string
	token string
}

func newAdminAPI(t *testing.T, p *proc, token string) *adminAPI {
	l := p.waitLog("admin API listening", 10*time.Second)
	return &adminAPI{t: t, url: "http://" + l["addr"].(string), token: token}
}

// call makes a request and decodes the answer into out.
func (a *adminAPI) call(method, path string, out any) int {
	a.t.Helper()
	req, err := http.NewRequest(method, a.url+path, nil)
	if err != nil {
		a.t.Fatal(err)
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	if method == "POST" {
		req.Header.Set("X-Requested-By", "test") // what curl users add; a web form cannot
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			a.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.StatusCode
}

type apiTarget struct {
	Addr      string `json:"addr"`
	State     string `json:"state"`
	Active    int64  `json:"active_connections"`
	Removed   bool   `json:"removed"`
	LastCheck *struct {
		At time.Time `json:"at"`
	} `json:"last_check"`
}

// target returns the API's view of addr.
func (a *adminAPI) target(addr string) apiTarget {
	a.t.Helper()
	t, ok := a.find(addr)
	if !ok {
		a.t.Fatalf("no target %s", addr)
	}
	return t
}

// find looks addr up among the targets.
func (a *adminAPI) find(addr string) (apiTarget, bool) {
	a.t.Helper()
	var ts []apiTarget
	a.call("GET", "/api/v1/targets", &ts)
	for _, t := range ts {
		if t.Addr == addr {
			return t, true
		}
	}
	return apiTarget{}, false
}

// waitTarget polls until addr is a target and cond holds for it.
func (a *adminAPI) waitTarget(addr string, what string, cond func(apiTarget) bool) {
	a.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if t, ok := a.find(addr); ok && cond(t) {
			return
		}
		if time.Now().After(deadline) {
			t, ok := a.find(addr)
			a.t.Fatalf("target %s: %s not reached: %+v (listed: %v)", addr, what, t, ok)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Three NDJSON targets are restarted one by one, each drained through the
// admin API first, while 8 clients send: no line is lost or torn.
func TestRollingRestartWithDrain(t *testing.T) {
	w := newWorld(t, 3)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("rolling\n"), 0o600)
	p := startNDLB(t, "--target", w.targets(), "--admin", "127.0.0.1:0", "--admin-token-file", tokenFile)
	api := newAdminAPI(t, p, "rolling")
	wait := pacedClients(p.addr, 8, 30000, 6*time.Second)
	for _, s := range w.sinks {
		addr := s.Addr()
		if code := api.call("POST", "/api/v1/targets/"+addr+"/drain", nil); code != 200 {
			t.Fatalf("drain %s: %d", addr, code)
		}
		api.waitTarget(addr, "drained", func(x apiTarget) bool { return x.State == "draining" && x.Active == 0 })
		if !s.WaitDrained(10 * time.Second) {
			t.Fatalf("%s: connections still open after the drain", addr)
		}
		// Nothing is outstanding, so a hard kill loses nothing.
		if r := s.Kill(false); r.UnreadBytes != 0 {
			t.Fatalf("%s held %d unread bytes after the drain", addr, r.UnreadBytes)
		}
		if err := s.Restart(); err != nil {
			t.Fatal(err)
		}
		api.call("POST", "/api/v1/targets/"+addr+"/enable", nil)
		api.waitTarget(addr, "back", func(x apiTarget) bool { return x.State == "up" && x.Active > 0 })
	}
	sent, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	p.stopOK()
	// A drain waits for acknowledgement before it leaves: nothing is sent
	// twice.
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	w.checkLedger(p, true)
}

// healthz, readyz and the token check through the real binary, and the
// healthcheck subcommand against the admin API.
func TestAdminAPIProbes(t *testing.T) {
	w := newWorld(t, 1)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("t0ken"), 0o600)
	p := startNDLB(t, "--target", w.targets(), "--admin", "127.0.0.1:0", "--admin-token-file", tokenFile)
	api := newAdminAPI(t, p, "")
	if code := api.call("GET", "/healthz", nil); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	api.waitTarget(w.sinks[0].Addr(), "connected", func(x apiTarget) bool { return x.Active > 0 })
	if code := api.call("GET", "/readyz", nil); code != 200 {
		t.Fatalf("readyz %d", code)
	}
	if code := api.call("POST", "/api/v1/targets/"+w.sinks[0].Addr()+"/disable", nil); code != 401 {
		t.Fatalf("POST without the token: %d", code)
	}
	api.token = "t0ken"
	if code := api.call("POST", "/api/v1/targets/"+w.sinks[0].Addr()+"/disable", nil); code != 200 {
		t.Fatalf("POST with the token: %d", code)
	}
	if code := api.call("GET", "/readyz", nil); code != 503 {
		t.Fatalf("readyz with the only target disabled: %d", code)
	}
	adminAddr := strings.TrimPrefix(api.url, "http://")
	out, err := command(bin, "healthcheck", "--admin", adminAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "/healthz") {
		t.Fatalf("healthcheck: %v %s", err, out)
	}
	p.stopOK()
	out, err = command(bin, "healthcheck", "--admin", adminAddr).CombinedOutput()
	if err == nil {
		t.Fatalf("healthcheck after exit passed: %s", out)
	}
	fmt.Fprintln(io.Discard, out)
}

// A listener with a spool stays ready while no target is up: its clients
// keep sending into the spool rather than being taken out of rotation
// (Kubernetes' readiness probe) at the outage the spool is for.
func TestReadyWhileSpooling(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--admin", "127.0.0.1:0", "--spool-dir", t.TempDir())
	api := newAdminAPI(t, p, "")
	api.waitTarget(w.sinks[0].Addr(), "connected", func(x apiTarget) bool { return x.Active > 0 })
	if code := api.call("POST", "/api/v1/targets/"+w.sinks[0].Addr()+"/disable", nil); code != 200 {
		t.Fatalf("disable: %d", code)
	}
	var ready struct {
		Ready    bool     `json:"ready"`
		Spooling []string `json:"spooling"`
	}
	if code := api.call("GET", "/readyz", &ready); code != 200 || !ready.Ready || len(ready.Spooling) != 1 {
		t.Fatalf("readyz with the only target disabled and a spool: %d %+v", code, ready)
	}
	p.stopOK()
}

// `ndlb healthcheck` in a container that configures ndlb with NDLB_CONFIG
// asks what the file names: its admin API, or else every listener.
func TestHealthcheckReadsTheConfigFile(t *testing.T) {
	w := newWorld(t, 1)
	dir := t.TempDir()
	ports := []string{freePort(t), freePort(t), freePort(t)}
	listeners := fmt.Sprintf("log-format = \"json\"\n\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = %s\ntarget = [%q]\n\n"+
		"[[listener]]\nname = \"audit\"\naddr = \"127.0.0.1\"\nport = %s\ntarget = [%q]\n", ports[0], w.sinks[0].Addr(), ports[1], w.sinks[0].Addr())
	for _, tc := range []struct{ name, top, want string }{
		{"admin API", fmt.Sprintf("admin = \"127.0.0.1:%s\"\n", ports[2]), "/healthz"},
		{"listeners", "", "127.0.0.1:" + ports[1] + " accepts connections"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, dir, tc.top+listeners)
			env := append(os.Environ(), "NDLB_CONFIG="+path)
			p := startCmd(t, func() *exec.Cmd { c := command(bin); c.Env = env; return c }())
			listening(t, p, 2)
			hc := command(bin, "healthcheck")
			hc.Env = env
			if out, err := hc.CombinedOutput(); err != nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("healthcheck: %v %s", err, out)
			}
			p.stopOK()
			hc = command(bin, "healthcheck")
			hc.Env = env
			if out, err := hc.CombinedOutput(); err == nil {
				t.Fatalf("healthcheck passed with ndlb stopped: %s", out)
			}
		})
	}
}

// The admin API of the real binary refuses what a hostile web page can
// send: a form POST (CSRF), a request from a foreign origin, and a Host
// header of another site (DNS rebinding); and a rotated token takes effect
// without a restart.
func TestAdminRefusesWebPages(t *testing.T) {
	w := newWorld(t, 1)
	tokenFile := filepath.Join(t.TempDir(), "token")
	for _, withToken := range []bool{false, true} {
		args := []string{"--target", w.targets(), "--admin", "127.0.0.1:0"}
		if withToken {
			os.WriteFile(tokenFile, []byte("first\n"), 0o600)
			args = append(args, "--admin-token-file", tokenFile)
		}
		p := startNDLB(t, args...)
		api := newAdminAPI(t, p, "")
		send := func(method, path string, headers ...string) int {
			req, _ := http.NewRequest(method, api.url+path, strings.NewReader("{}"))
			for i := 0; i+1 < len(headers); i += 2 {
				if headers[i] == "Host" {
					req.Host = headers[i+1]
				} else {
					req.Header.Set(headers[i], headers[i+1])
				}
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		drain := "/api/v1/targets/" + w.sinks[0].Addr() + "/drain"
		enable := "/api/v1/targets/" + w.sinks[0].Addr() + "/enable"
		if got := send("POST", drain, "Content-Type", "application/x-www-form-urlencoded"); got == 200 {
			t.Errorf("token %v: a form POST was accepted", withToken)
		}
		if got := send("POST", drain, "Content-Type", "application/json", "Origin", "http://evil.example", "Authorization", "Bearer first"); got != 403 {
			t.Errorf("token %v: a foreign origin: %d", withToken, got)
		}
		if got := send("GET", "/api/v1/targets", "Host", "rebind.evil.example"); got != 403 {
			t.Errorf("token %v: a foreign Host: %d", withToken, got)
		}
		if !withToken {
			if got := send("POST", drain, "X-Requested-By", "ops"); got != 200 {
				t.Errorf("curl's request: %d", got)
			}
			send("POST", enable, "X-Requested-By", "ops")
			p.stopOK()
			continue
		}
		if got := send("POST", drain, "Authorization", "Bearer first"); got != 200 {
			t.Errorf("the token: %d", got)
		}
		os.WriteFile(tokenFile, []byte("second\n"), 0o600)
		later := time.Now().Add(2 * time.Second)
		os.Chtimes(tokenFile, later, later)
		if got := send("POST", enable, "Authorization", "Bearer first"); got != 401 {
			t.Errorf("the old token after rotation: %d", got)
		}
		if got := send("POST", enable, "Authorization", "Bearer second"); got != 200 {
			t.Errorf("the rotated token: %d", got)
		}
		p.waitLog("admin token rotated", 5*time.Second)
		p.stopOK()
	}
}

// With --state-file, a target drained through the admin API is still
// draining after ndlb restarts, and a disabled one still disabled.
func TestStateSurvivesRestart(t *testing.T) {
	w := newWorld(t, 3)
	state := filepath.Join(t.TempDir(), "state.json")
	run := func() (*proc, *adminAPI) {
		p := startNDLB(t, "--target", w.targets(), "--admin", "127.0.0.1:0", "--state-file", state)
		return p, newAdminAPI(t, p, "")
	}
	p, api := run()
	drained, disabled := w.sinks[0].Addr(), w.sinks[1].Addr()
	if code := api.call("POST", "/api/v1/targets/"+drained+"/drain", nil); code != 200 {
		t.Fatalf("drain: %d", code)
	}
	if code := api.call("POST", "/api/v1/targets/"+disabled+"/disable", nil); code != 200 {
		t.Fatalf("disable: %d", code)
	}
	p.stopOK()
	p, api = run()
	api.waitTarget(drained, "still draining", func(x apiTarget) bool { return x.State == "draining" })
	api.waitTarget(disabled, "still disabled", func(x apiTarget) bool { return x.State == "disabled" })
	api.waitTarget(w.sinks[2].Addr(), "up", func(x apiTarget) bool { return x.State == "up" })
	p.waitLog("target state restored", 5*time.Second)
	p.stopOK()
}
