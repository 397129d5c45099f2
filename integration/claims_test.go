package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// Claims the README makes, each with a test that fails when the claim stops
// holding.

// /readyz answers 503 from the moment shutdown begins, while /healthz stays
// 200 until the process exits.
func TestReadyzFailsDuringShutdown(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--admin", "127.0.0.1:0", "--log-level", "debug")
	api := newAdminAPI(t, p, "")
	api.waitTarget(w.sinks[0].Addr(), "connected", func(x apiTarget) bool { return x.Active > 0 })
	if code := api.call("GET", "/readyz", nil); code != 200 {
		t.Fatalf("readyz before shutdown: %d", code)
	}
	held := dial(t, p.addr) // the drain waits for it
	held.Write(linetest.AppendLine(nil, 1, 0))
	p.waitLog("client connected", 5*time.Second)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitLog("shutting down: no new connections; draining clients", 10*time.Second)
	if code := api.call("GET", "/readyz", nil); code != 503 {
		t.Fatalf("readyz while draining: %d, want 503", code)
	}
	if code := api.call("GET", "/healthz", nil); code != 200 {
		t.Fatalf("healthz while draining: %d, want 200", code)
	}
	held.Close()
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	w.checkLedger(p, true)
}

// --max-conns holds the clients beyond it in the accept backlog: the third
// client's line arrives only once one of the first two has gone.
func TestMaxConnsHoldsClientsInTheBacklog(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--max-conns", "2")
	first, second := dial(t, p.addr), dial(t, p.addr)
	first.Write(linetest.AppendLine(nil, 1, 0))
	second.Write(linetest.AppendLine(nil, 2, 0))
	w.waitLines(2)
	third := dial(t, p.addr) // completes in the kernel, not served
	third.Write(linetest.AppendLine(nil, 3, 0))
	p.waitLog("--max-conns reached; new clients wait in the accept backlog", 10*time.Second)
	time.Sleep(300 * time.Millisecond) // the third line must not arrive meanwhile
	if got := w.sinks[0].Lines(); got != 2 {
		t.Fatalf("%d lines arrived with the third client beyond --max-conns, want 2", got)
	}
	first.Close()
	w.waitLines(3)
	second.Close()
	third.Close()
	p.stopOK()
	if r := w.check(map[uint32]uint32{1: 1, 2: 1, 3: 1}); r.Lost != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	w.checkLedger(p, true)
}

// A client sending 200 oversize lines gets every one counted and dropped,
// but the warning is logged once a second, not 200 times.
func TestOversizeDropLogIsRateLimited(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--max-line-bytes", "1KiB")
	conn := dial(t, p.addr)
	long := append(bytes.Repeat([]byte("o"), 2048), '\n')
	var b []byte
	for range 200 {
		b = append(b, long...)
	}
	b = linetest.AppendLine(b, 1, 0)
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	p.waitLog("client disconnected", 10*time.Second)
	p.stopOK()
	if got := p.summary("dropped_oversize"); got != 200 {
		t.Fatalf("dropped_oversize %d, want 200", got)
	}
	if n := len(p.findLogs("line longer than --max-line-bytes dropped")); n < 1 || n > 3 {
		t.Fatalf("%d warnings for 200 drops within a second or two, want 1 to 3", n)
	}
	if g := w.checkLedger(p, true); g.received != 201 || g.byReason["oversize"] != 200 {
		t.Fatalf("ledger %+v", g)
	}
}

// Without failures, each client's lines arrive in order on every upstream
// connection: a worker writes a client's batches in queue order.
func TestLinesOfAClientStayInOrderPerConnection(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--target", w.targets())
	sent, err := clients(4, 40000, func(c uint32) error {
		conn, err := dialClient(p.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = linetest.Send(conn, c, 0, 40000, 8<<10)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	p.stopOK()
	if r := w.check(sent); r.Lost != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	for _, s := range w.sinks {
		if n := s.OutOfOrder(); n != 0 {
			t.Fatalf("sink %s: %d lines out of order on their connection", s.Addr(), n)
		}
	}
}

// A PROXY header comes before the TLS handshake: the client behind the
// front balancer is the one logged, and its lines arrive.
func TestProxyHeaderBeforeTLS(t *testing.T) {
	pk := newPKI(t)
	cert, key, _ := pk.files(t, "ndlb", "127.0.0.1")
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--accept-proxy", "--tls-cert", cert, "--tls-key", key, "--log-level", "debug")
	raw := dial(t, p.addr)
	if _, err := raw.Write([]byte("PROXY TCP4 203.0.113.7 127.0.0.1 51234 9000\r\n")); err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, &tls.Config{RootCAs: pk.pool(), ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS after the PROXY header: %v", err)
	}
	if _, err := linetest.Send(tc, 1, 0, 100, 4096); err != nil {
		t.Fatal(err)
	}
	tc.Close()
	l := p.waitLog("client connected", 5*time.Second)
	if l["client"] != "203.0.113.7:51234" {
		t.Fatalf("client %v, want the PROXY header's 203.0.113.7:51234", l["client"])
	}
	p.stopOK()
	if r := w.check(map[uint32]uint32{1: 100}); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// With --accept-proxy, hash balancing uses the address the header carries:
// one claimed client always reaches the same target, though every
// connection comes from the same real address.
func TestHashOnTheProxyAddress(t *testing.T) {
	var backends []*idBackend
	var addrs []string
	for i := range 3 {
		b := newIDBackend(t, fmt.Sprintf("b%d", i), nil)
		backends = append(backends, b)
		addrs = append(addrs, b.addr())
	}
	p := startPassthrough(t, addrs, "--balance", "hash", "--accept-proxy")
	via := func(ip string) string {
		t.Helper()
		c := dial(t, p.addr)
		defer c.Close()
		fmt.Fprintf(c, "PROXY TCP4 %s 127.0.0.1 40000 9000\r\n", ip)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		name, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatalf("via %s: %v", ip, err)
		}
		return strings.TrimSpace(name)
	}
	seen := map[string]bool{}
	for i := range 30 {
		ip := fmt.Sprintf("198.51.100.%d", i+1)
		first := via(ip)
		seen[first] = true
		for range 3 {
			if got := via(ip); got != first {
				t.Fatalf("client %s reached %s, then %s", ip, first, got)
			}
		}
	}
	if len(seen) < 2 {
		t.Fatalf("30 claimed clients all reached %v: the PROXY address is not what is hashed", seen)
	}
	p.stopOK()
}

// --check tcp moves NDJSON workers: a target whose listener closes (its
// existing connections still work) fails its checks, its workers leave it
// once what they wrote is acknowledged, and lines go to the other target.
func TestTCPCheckMovesNDJSONWorkers(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--target", w.targets(), "--check", "tcp", "--check-interval", "300ms",
		"--check-timeout", "250ms", "--check-fall", "2", "--admin", "127.0.0.1:0")
	api := newAdminAPI(t, p, "")
	failing := w.sinks[1]
	api.waitTarget(failing.Addr(), "checked", func(x apiTarget) bool { return x.LastCheck != nil && x.Active > 0 })
	failing.StopAccepting()
	api.waitTarget(failing.Addr(), "down by its checks", func(x apiTarget) bool { return x.State == "down" && x.Active == 0 })
	before := failing.Lines()
	conn := dial(t, p.addr)
	if _, err := linetest.Send(conn, 1, 0, 20000, 16<<10); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	p.stopOK()
	if r := w.check(map[uint32]uint32{1: 20000}); r.Lost != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	if got := failing.Lines() - before; got != 0 {
		t.Fatalf("the target failing its checks got %d lines", got)
	}
	w.checkLedger(p, true)
}

// A name with only an AAAA record is a target; when the name stops
// existing (NXDOMAIN) its target is drained and lines go elsewhere.
func TestDNSAAAAAndNXDOMAIN(t *testing.T) {
	dns := startDNS(t)
	w := &world{t: t, ledger: linetest.NewLedger()}
	v6, err := linetest.NewSink("[::1]:0", w.ledger)
	if err != nil {
		t.Fatalf("IPv6 loopback: %v", err)
	}
	t.Cleanup(v6.Close)
	v4, err := linetest.NewSink("127.0.0.1:0", w.ledger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v4.Close)
	w.sinks = []*linetest.Sink{v6, v4}
	_, port, _ := net.SplitHostPort(v6.Addr())
	dns.SetIPs("six.test", "::1")
	p := startNDLB(t, "--target", v4.Addr(), "--target-dns", "six.test:"+port, "--dns-resolver", dns.Addr(),
		"--dns-interval", "300ms")
	deadline := time.Now().Add(10 * time.Second)
	for c := uint32(1); v6.Lines() == 0; c++ {
		if time.Now().After(deadline) {
			t.Fatal("the AAAA target never got a line")
		}
		conn := dial(t, p.addr)
		linetest.Send(conn, c, 0, 1000, 8<<10)
		conn.Close()
		time.Sleep(50 * time.Millisecond)
	}
	dns.Remove("six.test")
	gone := p.waitLog("target gone from DNS: draining", 10*time.Second)
	if gone["target"] != v6.Addr() {
		t.Fatalf("drained %v, want %s", gone["target"], v6.Addr())
	}
	p.waitLog("target left the set: drained", 10*time.Second)
	if !v6.WaitDrained(10 * time.Second) { // it has read what it was sent
		t.Fatal("the drained target's connections stay open")
	}
	before := v6.Lines()
	conn := dial(t, p.addr)
	if _, err := linetest.Send(conn, 100, 0, 5000, 8<<10); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	p.stopOK()
	if v6.Lines() != before {
		t.Fatalf("the drained AAAA target got %d more lines", v6.Lines()-before)
	}
	w.drained()
	if r := w.ledger.Check(map[uint32]uint32{100: 5000}); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
	w.checkLedger(p, true)
}

// NDLB_CONFIG names the file, and a flag overrides the file's value: the
// file's 1 KiB line limit would drop a 1.5 KiB line, the flag's 4 KiB
// lets it through.
func TestEnvConfigAndFlagOverFile(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, 1)
	path := writeConfig(t, dir, fmt.Sprintf("log-format = \"json\"\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\nmax-line-bytes = \"1KiB\"\ntarget = [%q]\n", w.sinks[0].Addr()))
	for _, tt := range []struct {
		name    string
		args    []string
		dropped uint64
	}{
		{name: "file alone", dropped: 1},
		{name: "flag over file", args: []string{"--max-line-bytes", "4KiB"}, dropped: 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := command(bin, tt.args...)
			cmd.Env = append(os.Environ(), "NDLB_CONFIG="+path)
			p := startCmd(t, cmd)
			addr := listening(t, p, 1)["logs"]
			conn := dial(t, addr)
			conn.Write(append(bytes.Repeat([]byte("m"), 1536), '\n'))
			conn.Close()
			p.waitLog("client disconnected", 10*time.Second)
			p.stopOK()
			if g := p.ledger("logs"); g.received != 1 || g.byReason["oversize"] != tt.dropped {
				t.Fatalf("ledger %+v, want %d oversize", g, tt.dropped)
			}
		})
	}
}

// A config file replaced the way editors save (write a temporary file,
// rename it over) and the way Kubernetes updates a ConfigMap (a new
// directory, then the ..data symlink swapped) is reloaded without a signal.
func TestConfigReloadOnRenameAndConfigMapSwap(t *testing.T) {
	w := newWorld(t, 1)
	doc := func(level string) string {
		return fmt.Sprintf("log-format = \"json\"\nlog-level = %q\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\ntarget = [%q]\n", level, w.sinks[0].Addr())
	}
	waitLevel := func(p *proc, n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for len(p.findLogs("log level changed")) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d log level changes, want %d; reloads: %v", len(p.findLogs("log level changed")), n, p.findLogs("config reloaded"))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Run("editor rename", func(t *testing.T) {
		dir := t.TempDir()
		path := writeConfig(t, dir, doc("info"))
		p := startCmd(t, command(bin, "--config", path))
		tmp := filepath.Join(dir, ".ndlb.toml.swp")
		os.WriteFile(tmp, []byte(doc("debug")), 0o600)
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		waitLevel(p, 1)
		p.stopOK()
	})
	t.Run("ConfigMap swap", func(t *testing.T) {
		dir := t.TempDir()
		write := func(version, level string) {
			d := filepath.Join(dir, "..2026_"+version)
			os.Mkdir(d, 0o700)
			os.WriteFile(filepath.Join(d, "ndlb.toml"), []byte(doc(level)), 0o600)
			tmp := filepath.Join(dir, "..data_tmp")
			os.Symlink("..2026_"+version, tmp)
			if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
				t.Fatal(err)
			}
		}
		write("01", "info")
		path := filepath.Join(dir, "ndlb.toml")
		if err := os.Symlink(filepath.Join("..data", "ndlb.toml"), path); err != nil {
			t.Fatal(err)
		}
		p := startCmd(t, command(bin, "--config", path))
		write("02", "debug")
		waitLevel(p, 1)
		write("03", "info") // a change logged at info, so it shows
		waitLevel(p, 2)
		p.stopOK()
	})
}

// A reload changes a listener's DNS name, turns on health checks and
// removes another listener: the new name's address takes the lines, the
// checks run, and the removed listener's port stops accepting.
func TestReloadDNSNameChecksAndRemovedListener(t *testing.T) {
	dns := startDNS(t)
	w := newWorld(t, 0)
	port := sinksOnOnePort(t, w)
	a, b := w.sinks[0], w.sinks[1]
	dns.SetIPs("a.test", "127.0.0.2")
	dns.SetIPs("b.test", "127.0.0.3")
	echo := newIDBackend(t, "echo", nil)
	dir := t.TempDir()
	doc := func(name, check string, web bool) string {
		d := fmt.Sprintf("log-format = \"json\"\nadmin = \"127.0.0.1:0\"\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\n"+
			"target-dns = [\"%s:%s\"]\ndns-resolver = %q\ndns-interval = \"300ms\"\n%s", name, port, dns.Addr(), check)
		if web {
			d += fmt.Sprintf("[[listener]]\nname = \"web\"\npassthrough = true\naddr = \"127.0.0.1\"\nport = 0\ntarget = [%q]\n", echo.addr())
		}
		return d
	}
	path := writeConfig(t, dir, doc("a.test", "", true))
	p := startCmd(t, command(bin, "--config", path))
	addrs := listening(t, p, 2)
	api := newAdminAPI(t, p, "")
	send := func(c uint32) {
		t.Helper()
		conn := dial(t, addrs["logs"])
		if _, err := linetest.Send(conn, c, 0, 2000, 8<<10); err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	send(1)
	// The name changes.
	os.WriteFile(path, []byte(doc("b.test", "", true)), 0o600)
	api.waitTarget(b.Addr(), "up", func(x apiTarget) bool { return x.State == "up" && x.Active > 0 })
	p.waitLog("target left the set: drained", 10*time.Second)
	if !a.WaitDrained(10 * time.Second) { // it has read what it was sent
		t.Fatal("the drained target's connections stay open")
	}
	before := a.Lines()
	send(2)
	// Checks turn on.
	os.WriteFile(path, []byte(doc("b.test", "check = \"tcp\"\ncheck-interval = \"300ms\"\ncheck-timeout = \"250ms\"\n", true)), 0o600)
	p.waitLog("health checks changed", 10*time.Second)
	api.waitTarget(b.Addr(), "checked", func(x apiTarget) bool { return x.LastCheck != nil })
	// The web listener goes.
	os.WriteFile(path, []byte(doc("b.test", "check = \"tcp\"\ncheck-interval = \"300ms\"\ncheck-timeout = \"250ms\"\n", false)), 0o600)
	p.waitLog("listener removed; draining", 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addrs["web"], time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the removed listener's port still accepts")
		}
		time.Sleep(20 * time.Millisecond)
	}
	send(3)
	p.stopOK()
	if a.Lines() != before {
		t.Fatalf("the old name's target got %d lines after it left", a.Lines()-before)
	}
	if r := w.check(map[uint32]uint32{1: 2000, 2: 2000, 3: 2000}); r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
	if g := p.ledger("logs"); g.received != 6000 || g.delivered != 6000 {
		t.Fatalf("ledger %+v", g)
	}
}
