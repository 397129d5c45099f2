package integration

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"sigs.k8s.io/yaml"

	"github.com/ndlb/ndlb/internal/linetest"
)

// scrape returns the samples of metric whose labels contain every label,
// by the value of label key.
func scrape(t *testing.T, url, metric, key string, labels ...string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	keyRe := regexp.MustCompile(key + `="([^"]*)"`)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, metric+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		m := keyRe.FindStringSubmatch(line)
		if !ok || m == nil {
			continue
		}
		v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		out[m[1]] = v
	}
	return out
}

// /metrics, scraped while ndlb runs, shows per-target line counters that
// match what the sinks received, and the other instruments are there.
func TestMetricsMatchSinks(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--target", w.targets(), "--admin", "127.0.0.1:0", "--check", "tcp", "--check-interval", "100ms", "--check-timeout", "100ms")
	api := newAdminAPI(t, p, "")
	c := dial(t, p.addr)
	if _, err := linetest.Send(c, 1, 0, 20000, 16<<10); err != nil {
		t.Fatal(err)
	}
	c.Close()
	p.waitLog("client disconnected", 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := scrape(t, api.url, "ndlb_target_lines_total", "server_address", `network_io_direction="transmit"`)
		a, b := w.sinks[0].Lines(), w.sinks[1].Lines()
		if got[w.sinks[0].Addr()] == float64(a) && got[w.sinks[1].Addr()] == float64(b) && a+b == 20000 {
			t.Logf("per target: %v; sinks %d and %d", got, a, b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics %v, sinks %d and %d", got, a, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get(api.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{
		"ndlb_connections_accepted_total", "ndlb_lines_received_total", "ndlb_lines_delivered_total",
		"ndlb_lines_dropped_total", "ndlb_queue_bytes", "ndlb_dial_duration_seconds_bucket",
		"ndlb_batch_delivery_duration_seconds_bucket", "ndlb_target_state", "ndlb_config_reloads_total",
	} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if !strings.Contains(string(body), fmt.Sprintf(`ndlb_lines_received_total{ndlb_listener="default",ndlb_mode="ndjson"} %d`, 20000)) {
		t.Errorf("lines received not 20000:\n%s", grepLines(string(body), "ndlb_lines_received"))
	}
	for deadline := time.Now().Add(10 * time.Second); scrape(t, api.url, "ndlb_health_checks_total", "ndlb_listener")["default"] == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("no health checks with the listener label:\n%s", grepLines(string(body), "ndlb_health_checks"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Every metric family ndlb exports is in the README's table, under its
	// OpenTelemetry name.
	documented := readmeMetrics(t)
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (ndlb_[a-z_]+) `).FindAllStringSubmatch(string(body), -1) {
		if !documentedAs(m[1], documented) {
			t.Errorf("/metrics has %s, which the README's metric table does not list", m[1])
		}
	}
	p.stopOK()
}

// readmeMetrics is the metric names of the README's table, as dotted
// OpenTelemetry names ("`ndlb.connections.active`, `.accepted`" is two).
func readmeMetrics(t *testing.T) []string {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, row := range regexp.MustCompile("(?m)^\\| (`ndlb\\.[^|]*)\\|").FindAllStringSubmatch(string(readme), -1) {
		cell := regexp.MustCompile(` \([^)]*\)`).ReplaceAllString(row[1], "") // attributes in parentheses
		base := ""
		for _, name := range regexp.MustCompile("`([a-z._]+)`").FindAllStringSubmatch(cell, -1) {
			if n := name[1]; strings.HasPrefix(n, ".") {
				out = append(out, base+n)
			} else {
				out = append(out, n)
				base = n[:strings.LastIndexByte(n, '.')]
			}
		}
	}
	if len(out) < 20 {
		t.Fatalf("only %d metrics found in the README's table: %v", len(out), out)
	}
	return out
}

// documentedAs reports whether the Prometheus family is one of the dotted
// names: dots become underscores, and the exporter adds a unit and _total.
func documentedAs(family string, names []string) bool {
	for _, n := range names {
		rest, ok := strings.CutPrefix(family, strings.ReplaceAll(n, ".", "_"))
		if ok && (rest == "" || rest == "_total" || rest == "_seconds" || rest == "_seconds_total" || rest == "_bytes" || rest == "_bytes_total") {
			return true
		}
	}
	return false
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// otlpReceiver is an OTLP/HTTP endpoint that keeps the spans it receives.
type otlpReceiver struct {
	srv   *httptest.Server
	mu    sync.Mutex
	spans []*tracepb.Span
	attrs map[string]string // resource attributes seen
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	r := &otlpReceiver{attrs: map[string]string{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if req.URL.Path == "/v1/traces" {
			var msg coltracepb.ExportTraceServiceRequest
			if err := proto.Unmarshal(body, &msg); err != nil {
				t.Errorf("OTLP traces: %v", err)
			}
			r.mu.Lock()
			for _, rs := range msg.ResourceSpans {
				for _, a := range rs.GetResource().GetAttributes() {
					r.attrs[a.Key] = a.GetValue().GetStringValue()
				}
				for _, ss := range rs.ScopeSpans {
					r.spans = append(r.spans, ss.Spans...)
				}
			}
			r.mu.Unlock()
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// The real binary exports spans over OTLP/HTTP when
// OTEL_EXPORTER_OTLP_ENDPOINT is set, and its log lines carry the trace id.
func TestOTLPSpansFromTheBinary(t *testing.T) {
	rcv := newOTLPReceiver(t)
	b := newIDBackend(t, "b0", nil)
	cmd := command(bin, "--passthrough", "--addr", "127.0.0.1", "--port", "0", "--log-format", "json", "--target", b.addr())
	cmd.Env = append(os.Environ(), "OTEL_EXPORTER_OTLP_ENDPOINT="+rcv.srv.URL, "OTEL_BSP_SCHEDULE_DELAY=50", "OTEL_METRIC_EXPORT_INTERVAL=200")
	p := startCmd(t, cmd)
	if name, err := hello(t, p.addr, nil, false); err != nil || name != "b0" {
		t.Fatalf("%q %v", name, err)
	}
	open := p.waitLog("proxying", 5*time.Second)
	p.stopOK() // flushes
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	var connect, dial bool
	for _, s := range rcv.spans {
		attrs := map[string]string{}
		for _, a := range s.Attributes {
			attrs[a.Key] = a.GetValue().GetStringValue()
		}
		switch s.Name {
		case "ndlb.passthrough.connect":
			connect = attrs["ndlb.conn.id"] == open["conn"] && attrs["server.address"] == b.addr() &&
				hex.EncodeToString(s.TraceId) == open["trace_id"]
		case "ndlb.upstream.dial":
			dial = attrs["server.address"] == b.addr()
		}
	}
	if !connect || !dial || rcv.attrs["service.name"] != "ndlb" {
		t.Fatalf("connect span %v, dial span %v, resource %v; %d spans; log %v", connect, dial, rcv.attrs, len(rcv.spans), open)
	}
}

// Every metric the Grafana dashboard and the alert rules in deploy/ ask for
// is one the running binary exports (both modes, UDP, checks, a reload), and the
// rules file has the shape Prometheus loads.
func TestDashboardAndAlertsUseExportedMetrics(t *testing.T) {
	w := newWorld(t, 1)
	echo := newIDBackend(t, "echo", nil)
	udpEcho := newUDPEcho(t, "udp")
	dir := t.TempDir()
	doc := func(interval string) string {
		return fmt.Sprintf("log-format = \"json\"\nadmin = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\n"+
			"target = [%q]\ncheck = \"tcp\"\ncheck-interval = %q\ncheck-timeout = \"100ms\"\nspool-dir = %q\n\n[[listener]]\nname = \"web\"\npassthrough = true\n"+
			"addr = \"127.0.0.1\"\nport = 0\ntarget = [%q]\n\n[[listener]]\nname = \"dns\"\npassthrough = true\nproto = \"udp\"\n"+
			"addr = \"127.0.0.1\"\nport = 0\ntarget = [%q]\n\n[[listener]]\nname = \"routed\"\naddr = \"127.0.0.1\"\nport = 0\n"+
			"route-key = \"json:service\"\ntarget = [%q]\n", w.sinks[0].Addr(), interval, filepath.Join(dir, "spool"), echo.addr(), udpEcho.addr(), w.sinks[0].Addr())
	}
	path := writeConfig(t, dir, doc("100ms"))
	p := startCmd(t, command(bin, "--config", path))
	addrs := listening(t, p, 4)
	api := newAdminAPI(t, p, "")
	if got := udpAsk(udpDial(t, 1, addrs["dns"]), "q", 2*time.Second); got != "udp q" {
		t.Fatalf("dns: %q", got)
	}
	c := dial(t, addrs["logs"])
	if _, err := linetest.Send(c, 1, 0, 1000, 4096); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if name, err := hello(t, addrs["web"], nil, false); err != nil || name != "echo" {
		t.Fatalf("web: %q %v", name, err)
	}
	os.WriteFile(path, []byte(doc("200ms")), 0o600) // a live reload
	p.waitLog("config reloaded", 10*time.Second)
	used := map[string]bool{}
	for _, f := range []string{"../deploy/grafana/ndlb.json", "../deploy/prometheus/alerts.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range regexp.MustCompile(`\bndlb_[a-z_]+\b`).FindAllString(string(b), -1) {
			if !strings.HasSuffix(m, "_listener") && m != "ndlb_drop_reason" && m != "ndlb_outcome" && m != "ndlb_reason" && m != "ndlb_target_state" &&
				m != "ndlb_group" { // a label (upstream.TestObserveMetricsLabelsGroups)
				used[m] = true
			}
		}
	}
	used["ndlb_target_state"] = true // a metric and a label of it
	exported := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(api.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, m := range regexp.MustCompile(`(?m)^(ndlb_[a-z_]+)[{ ]`).FindAllStringSubmatch(string(body), -1) {
			exported[m[1]] = true
		}
		missing := []string{}
		for m := range used {
			if !exported[m] {
				missing = append(missing, m)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dashboard or the alerts use metrics /metrics does not have: %v", missing)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(used) < 15 {
		t.Fatalf("only %d metrics found in the dashboard and the alerts", len(used))
	}
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	b, _ := os.ReadFile("../deploy/prometheus/alerts.yaml")
	if err := yaml.UnmarshalStrict(b, &rules); err != nil || len(rules.Groups) != 1 || len(rules.Groups[0].Rules) < 4 {
		t.Fatalf("alerts.yaml: %v %+v", err, rules)
	}
	for _, r := range rules.Groups[0].Rules {
		if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
			t.Errorf("rule %+v lacks a name, an expression, a severity or a summary", r)
		}
	}
	p.stopOK()
}

// A reload that replaces listeners: the replacements count from zero and
// the old instances drain and go, yet /metrics goes on from where they
// stood, in both modes. Before, each counter fell back to the
// replacement's own count (a reset, to Prometheus, in a process that did
// not restart).
func TestMetricsGoOnAcrossAReload(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, 2)
	doc := func(connections int, idle string) string {
		return fmt.Sprintf("log-format = \"json\"\nadmin = \"127.0.0.1:0\"\n"+
			"[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\ndrain-timeout = \"1s\"\nconnections = %d\ntarget = %s\n"+
			"[[listener]]\nname = \"pt\"\npassthrough = true\naddr = \"127.0.0.1\"\nport = 0\ndrain-timeout = \"1s\"\nidle-timeout = %q\ntarget = [%q]\n",
			connections, tomlList([]string{w.sinks[0].Addr(), w.sinks[1].Addr()}), idle, w.sinks[0].Addr())
	}
	path := writeConfig(t, dir, doc(2, "1m"))
	p := startCmd(t, command(bin, "--config", path))
	api := newAdminAPI(t, p, "")
	addrs := listening(t, p, 2)
	const lines = 1000
	var ptBytes int
	round := func(r uint32) {
		t.Helper()
		for i, name := range []string{"logs", "pt"} {
			var buf bytes.Buffer
			linetest.Send(&buf, 2*r+uint32(i), 0, lines, 1<<20)
			if name == "pt" {
				ptBytes += buf.Len()
			}
			c := dial(t, addrs[name])
			if _, err := c.Write(buf.Bytes()); err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		w.waitLines(uint64(2 * lines * (r + 1)))
	}
	sum := func(m map[string]float64) (n float64) {
		for _, v := range m {
			n += v
		}
		return n
	}
	check := func(r int) {
		t.Helper()
		want := map[string]float64{"logs": float64(r), "pt": float64(r)}
		deadline := time.Now().Add(10 * time.Second)
		for {
			accepted := scrape(t, api.url, "ndlb_connections_accepted_total", "ndlb_listener")
			proxied := scrape(t, api.url, "ndlb_passthrough_connections_total", "ndlb_listener", `ndlb_outcome="proxied"`)
			delivered := sum(scrape(t, api.url, "ndlb_target_lines_total", "server_address", `ndlb_listener="logs"`))
			forwarded := sum(scrape(t, api.url, "ndlb_target_bytes_total", "server_address", `ndlb_listener="pt"`, `network_io_direction="transmit"`))
			// The admin API's target counts go on too (the status page's
			// rates come from them).
			var targets []struct {
				Listener string `json:"listener"`
				LinesOut uint64 `json:"lines_out"`
				BytesOut uint64 `json:"bytes_out"`
			}
			api.call("GET", "/api/v1/targets", &targets)
			var apiLines, apiBytes uint64
			for _, tg := range targets {
				switch tg.Listener {
				case "logs":
					apiLines += tg.LinesOut
				case "pt":
					apiBytes += tg.BytesOut
				}
			}
			var ls []struct {
				Name     string `json:"name"`
				Accepted uint64 `json:"accepted_connections"`
			}
			api.call("GET", "/api/v1/listeners", &ls)
			apiAccepted := map[string]float64{}
			for _, l := range ls {
				apiAccepted[l.Name] = float64(l.Accepted)
			}
			if maps.Equal(accepted, want) && proxied["pt"] == float64(r) && delivered == float64(r*lines) && forwarded == float64(ptBytes) &&
				apiLines == uint64(r*lines) && apiBytes == uint64(ptBytes) && maps.Equal(apiAccepted, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("after round %d: accepted %v, proxied %v, target lines %v (want %d), target bytes %v (want %d); the admin API: lines %d, bytes %d, accepted %v",
					r, accepted, proxied, delivered, r*lines, forwarded, ptBytes, apiLines, apiBytes, apiAccepted)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	round(0)
	check(1)
	os.WriteFile(path, []byte(doc(3, "2m")), 0o600) // both listeners replaced
	p.waitLogs("listener replaced; the old one drains", 2, 10*time.Second)
	p.waitLogs("summary", 2, 10*time.Second) // the old instances are gone
	check(1)
	round(1)
	check(2)

	// A refused reload: the file and what runs differ until a good one.
	lastOK := func() float64 {
		resp, err := http.Get(api.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`(?m)^ndlb_config_last_reload_successful(?:\{[^}]*\})? (\S+)$`).FindSubmatch(body)
		if m == nil {
			t.Fatalf("no ndlb_config_last_reload_successful in /metrics")
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	if v := lastOK(); v != 1 {
		t.Errorf("ndlb_config_last_reload_successful %v after a reload that applied", v)
	}
	os.WriteFile(path, []byte(doc(0, "2m")), 0o600) // connections = 0: refused
	p.waitLog("config reload refused; the running config stays", 10*time.Second)
	if v := lastOK(); v != 0 {
		t.Errorf("ndlb_config_last_reload_successful %v after a refused reload", v)
	}
	os.WriteFile(path, []byte(doc(3, "2m")), 0o600)
	p.waitLogs("config reloaded", 2, 10*time.Second)
	if v := lastOK(); v != 1 {
		t.Errorf("ndlb_config_last_reload_successful %v once the file is good again", v)
	}
	p.stopOK()
}
