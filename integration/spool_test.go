package integration

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// killedWhileTargetsDown sends clients×perClient lines to an ndlb whose only
// target is down, waits until ndlb has read them all, kills it with
// SIGKILL, and returns the address of its dead target. args are ndlb's.
func killedWhileTargetsDown(t *testing.T, sink *linetest.Sink, clients, perClient uint32, args ...string) {
	t.Helper()
	p := startNDLB(t, append([]string{"--target", sink.Addr(), "--admin", "127.0.0.1:0", "--backoff-max", "100ms"}, args...)...)
	api := newAdminAPI(t, p, "")
	if err := linetest.SendClients(p.addr, clients, 0, perClient, 64<<10); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ls []struct {
			Ledger struct {
				Received uint64 `json:"received"`
			} `json:"ledger"`
		}
		api.call("GET", "/api/v1/listeners", &ls)
		if len(ls) == 1 && ls[0].Ledger.Received == uint64(clients*perClient) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ndlb did not read every line: %+v", ls)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = p.cmd.Process.Kill() // kill -9
	p.wait(10 * time.Second)
}

// Every target down; clients send far more than the queue holds; ndlb is
// killed with SIGKILL; started again on the same spool with the target up,
// it delivers every line, none torn, none twice (nothing had reached a
// target). Without a spool the same kill loses lines; the test says how
// many.
func TestSpoolSurvivesKill(t *testing.T) {
	for _, spooled := range []bool{true, false} {
		t.Run(fmt.Sprint("spool=", spooled), func(t *testing.T) {
			// With a spool, about 25 MiB, 6 times --buffer-bytes: the
			// clients are not held back. Without one, what fits in
			// memory (more would wait in TCP, never read).
			clients, perClient := uint32(4), uint32(50000)
			if !spooled {
				perClient = 2000
			}
			sent := map[uint32]uint32{}
			for c := range clients {
				sent[c+1] = perClient
			}
			ledger := linetest.NewLedger()
			sink := linetest.StartSink(t, ledger)
			sink.Kill(false)
			var args []string
			if spooled {
				args = []string{"--spool-dir", t.TempDir()}
			}
			args = append(args, "--buffer-bytes", "4MiB")
			killedWhileTargetsDown(t, sink, clients, perClient, args...)
			if err := sink.Restart(); err != nil {
				t.Fatal(err)
			}
			if !spooled {
				r := ledger.Check(sent)
				t.Logf("without a spool, kill -9 lost %d of %d lines read", r.Lost, clients*perClient)
				if r.Lost == 0 {
					t.Fatal("nothing lost without a spool: the test does not show what the spool is for")
				}
				return
			}
			p := startNDLB(t, append([]string{"--target", sink.Addr()}, args...)...)
			deadline := time.Now().Add(60 * time.Second)
			for sink.Lines() < uint64(clients*perClient) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			p.stopOK()
			sink.WaitDrained(10 * time.Second)
			r := ledger.Check(sent)
			if r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
				t.Fatal(r)
			}
			if p.summary("spool_replayed") == 0 || p.summary("spool_records") != 0 {
				t.Fatalf("spool_replayed %d, spool_records %d", p.summary("spool_replayed"), p.summary("spool_records"))
			}
			g := p.ledger("default")
			if g.delivered != uint64(clients*perClient) || g.dropped != 0 {
				t.Fatalf("ledger after the restart %+v", g)
			}
		})
	}
}

// A reload that replaces a spooled listener (its buffer changes) while its
// target is down: the new instance takes the spool over once the old one
// let it go, and when the target returns every line arrives once.
func TestSpoolAcrossReload(t *testing.T) {
	ledger := linetest.NewLedger()
	sink := linetest.StartSink(t, ledger)
	sink.Kill(false)
	dir := t.TempDir()
	doc := func(buffer string) string {
		return fmt.Sprintf(`log-format = "json"

[[listener]]
name = "logs"
addr = "127.0.0.1"
port = 0
target = [%q]
spool-dir = %q
buffer-bytes = %q
drain-timeout = "1s"
deliver-timeout = "1s"
backoff-max = "100ms"
`, sink.Addr(), filepath.Join(dir, "spool"), buffer)
	}
	path := writeConfig(t, dir, doc("4MiB"))
	p := startCmd(t, command(bin, "--config", path))
	addr := listening(t, p, 1)["logs"]
	send := func(c, n uint32) {
		conn := dial(t, addr)
		defer conn.Close()
		if _, err := linetest.Send(conn, c, 0, n, 64<<10); err != nil {
			t.Fatal(err)
		}
	}
	send(1, 20000)
	writeConfig(t, dir, doc("8MiB"))
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog("config reloaded", 10*time.Second)
	send(2, 20000)
	p.waitLog("spool open: lines are spooled again", 20*time.Second)
	if err := sink.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for sink.Lines() < 40000 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	p.stopOK()
	sink.WaitDrained(10 * time.Second)
	if r := ledger.Check(map[uint32]uint32{1: 20000, 2: 20000}); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
}

// Every target down; clients send 320 MiB, 40 times --buffer-bytes, and
// are not held back (the spool takes it); ndlb's memory stays within the
// bound its buffers set (the static build, as production runs it); then the
// target returns and every line arrives once, whole.
func TestSpoolBoundsMemory(t *testing.T) {
	ledger := linetest.NewLedger()
	sink := linetest.StartSink(t, ledger)
	sink.Kill(false)
	p := startCmd(t, cmdStatic("--addr", "127.0.0.1", "--port", "0", "--log-format", "json", "--target", sink.Addr(),
		"--spool-dir", t.TempDir(), "--buffer-bytes", "8MiB", "--client-buffer-bytes", "16MiB", "--backoff-max", "100ms",
		"--admin", "127.0.0.1:0"))
	api := newAdminAPI(t, p, "")
	const clients, perClient = 4, 600000 // about 320 MiB of 130-byte lines
	sent := map[uint32]uint32{}
	var wg sync.WaitGroup
	start := time.Now()
	for c := range uint32(clients) {
		sent[c+1] = perClient
		wg.Go(func() {
			conn := dial(t, p.addr)
			defer conn.Close()
			if _, err := linetest.Send(conn, c+1, 0, perClient, 64<<10); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	hwm := p.vmHWM()
	t.Logf("%d clients sent %d lines to a dead target in %s; peak RSS %d MiB", clients, clients*perClient, took.Round(time.Millisecond), hwm>>20)
	// 40 MiB + 2 × (8 MiB + 16 MiB), the formula of the README's Memory.
	if limit := uint64(40+2*(8+16)) << 20; hwm > limit {
		t.Fatalf("peak RSS %d MiB with the spool, over %d MiB", hwm>>20, limit>>20)
	}
	// The spool's metrics are exported, each in the README's table.
	resp, err := http.Get(api.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "ndlb_spool_bytes{") || !strings.Contains(string(body), "ndlb_spool_appends_total{") {
		t.Errorf("/metrics lacks the spool's:\n%s", grepLines(string(body), "ndlb_spool"))
	}
	documented := readmeMetrics(t)
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (ndlb_spool_[a-z_]+) `).FindAllStringSubmatch(string(body), -1) {
		if !documentedAs(m[1], documented) {
			t.Errorf("/metrics has %s, which the README's metric table does not list", m[1])
		}
	}
	if err := sink.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for sink.Lines() < clients*perClient && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	p.stopOK()
	sink.WaitDrained(10 * time.Second)
	if r := ledger.Check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	if g := p.ledger("default"); g.delivered != clients*perClient || g.dropped != 0 {
		t.Fatalf("ledger %+v", g)
	}
}

// A spool directory ndlb cannot make, and bad spool settings, stop it at
// start with one line naming the problem (exit 2).
func TestSpoolBadSettings(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--spool-dir", filepath.Join(file, "spool")}, "not a directory"},
		{[]string{"--spool-dir", t.TempDir(), "--spool-max-bytes", "1MiB"}, "--spool-max-bytes"},
		{[]string{"--spool-dir", t.TempDir(), "--spool-full", "panic"}, "--spool-full"},
		{[]string{"--spool-dir", t.TempDir(), "--spool-sync", "sometimes"}, "--spool-sync"},
		{[]string{"--spool-sync", "always"}, "needs --spool-dir"},
	} {
		out, err := command(bin, append([]string{"--addr", "127.0.0.1", "--port", "0", "--target", "127.0.0.1:9"}, tt.args...)...).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), tt.want) {
			t.Errorf("%v: exit %v, %q; want exit 2 naming %q", tt.args, err, out, tt.want)
		}
	}
}

// The disk fills (a file size limit makes every write past 2 MiB fail, as
// a full disk does): appends fail, are logged and counted, and their lines
// go to the queue in memory and are delivered; the admin API shows the
// error. Nothing is lost and the ledger closes.
func TestSpoolDiskFull(t *testing.T) {
	w := newWorld(t, 2)
	dir := t.TempDir()
	// ulimit -f counts 512-byte blocks; Go ignores SIGXFSZ, so a write
	// past the limit fails with EFBIG.
	p := startCmd(t, exec.Command("sh", "-c", `ulimit -f 4096 && exec "$0" "$@"`, bin,
		"--addr", "127.0.0.1", "--port", "0", "--log-format", "json",
		"--target", w.targets(), "--admin", "127.0.0.1:0", "--spool-dir", dir))
	api := newAdminAPI(t, p, "")
	sent, err := pacedClients(p.addr, 4, 40000, 2*time.Second)()
	if err != nil {
		t.Fatal(err)
	}
	var ls []struct {
		Spool struct {
			Appends   uint64 `json:"appends"`
			Errors    uint64 `json:"errors"`
			LastError string `json:"last_error"`
		} `json:"spool"`
	}
	api.call("GET", "/api/v1/listeners", &ls)
	if len(ls) != 1 || ls[0].Spool.Errors == 0 || ls[0].Spool.Appends == 0 || !strings.Contains(ls[0].Spool.LastError, "file too large") {
		t.Fatalf("listeners %+v: want appends, then errors with the reason", ls)
	}
	if len(p.findLogs("spool: cannot append; lines go to the queue in memory, without the spool's protection")) == 0 {
		t.Fatal("the failed appends were not logged")
	}
	p.stopOK()
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	w.checkLedger(p, true)
	if p.summary("spool_errors") == 0 {
		t.Fatal("the summary does not count the failed appends")
	}
}
