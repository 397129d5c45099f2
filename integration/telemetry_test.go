package integration

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

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
	p := startNDLB(t, "--target", w.targets(), "--admin", "127.0.0.1:0")
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
	p.stopOK()
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
