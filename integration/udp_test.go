package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// udpEcho is a loopback UDP target that answers each datagram with its
// name, a space and the datagram, until it is told to go silent.
type udpEcho struct {
	name   string
	c      *net.UDPConn
	silent atomic.Bool // read, answer nothing (no ICMP either)
	got    atomic.Uint64
	wg     sync.WaitGroup
}

func newUDPEcho(t *testing.T, name string) *udpEcho {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	e := &udpEcho{name: name, c: c}
	e.wg.Go(func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			e.got.Add(1)
			if !e.silent.Load() {
				_, _ = c.WriteToUDPAddrPort(append([]byte(name+" "), buf[:n]...), from)
			}
		}
	})
	t.Cleanup(func() { c.Close(); e.wg.Wait() })
	return e
}

func (e *udpEcho) addr() string { return e.c.LocalAddr().String() }

// udpAsk sends msg from c and returns the answer, or "" after wait.
func udpAsk(c *net.UDPConn, msg string, wait time.Duration) string {
	if _, err := c.Write([]byte(msg)); err != nil {
		return ""
	}
	buf := make([]byte, 64<<10)
	_ = c.SetReadDeadline(time.Now().Add(wait))
	n, err := c.Read(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

func udpDial(t *testing.T, host byte, addr string) *net.UDPConn {
	t.Helper()
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, host)}, ra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// UDP passthrough through the binary: 50 client addresses exchange 100
// datagrams each over two targets with udp health checks, every answer
// whole and from one target per client; the admin API shows the listener's
// flows; a target that goes silent fails its checks and new flows, and
// those of expired ones, go to the other; the exit summary counts it all.
func TestUDPPassthrough(t *testing.T) {
	a, b := newUDPEcho(t, "A"), newUDPEcho(t, "B")
	p := startNDLB(t, "--passthrough", "--udp", "--target", a.addr()+","+b.addr(), "--admin", "127.0.0.1:0",
		"--check", "udp", "--check-udp-expect", "ping", "--check-interval", "1s", "--check-timeout", "1s",
		"--check-rise", "1", "--check-fall", "2", "--udp-idle-timeout", "500ms")
	l := p.findLogs("listening")[0]
	if l["proto"] != "udp" {
		t.Fatalf("listening line %v", l)
	}
	api := newAdminAPI(t, p, "")
	const clients, perClient = 50, 100
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	var mu sync.Mutex
	on := map[string]int{}
	for i := range clients {
		c := udpDial(t, byte(10+i), p.addr)
		wg.Go(func() {
			seen := ""
			for j := range perClient {
				msg := fmt.Sprintf("client %d datagram %d %s", i, j, strings.Repeat("p", j*7))
				got := udpAsk(c, msg, 2*time.Second)
				name, body, _ := strings.Cut(got, " ")
				if body != msg || seen != "" && name != seen {
					errs <- fmt.Errorf("client %d datagram %d: answer %.40q (was on %q)", i, j, got, seen)
					return
				}
				seen = name
			}
			mu.Lock()
			on[seen]++
			mu.Unlock()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if on["A"] != clients/2 || on["B"] != clients/2 {
		t.Fatalf("round-robin flows: %v", on)
	}
	var ls []struct {
		Proto    string `json:"proto"`
		Accepted uint64 `json:"accepted_connections"`
	}
	api.call("GET", "/api/v1/listeners", &ls)
	if len(ls) != 1 || ls[0].Proto != "udp" || ls[0].Accepted != clients {
		t.Fatalf("listeners %+v", ls)
	}
	resp, err := http.Get(api.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"ndlb_udp_flows_total", "ndlb_udp_datagrams_total", `network_io_direction="receive"`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// B goes silent: its checks fail, and every client, once its flow has
	// expired, is answered by A.
	b.silent.Store(true)
	api.waitTarget(b.addr(), "down", func(t apiTarget) bool { return t.State == "down" })
	time.Sleep(600 * time.Millisecond) // every flow idles past --udp-idle-timeout
	for i := range clients {
		c := udpDial(t, byte(10+i), p.addr)
		if got := udpAsk(c, "after", 2*time.Second); got != "A after" {
			t.Fatalf("client %d after B went silent: %q", i, got)
		}
	}
	if code := p.stop(syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if n := p.summary("flows"); n < 2*clients {
		t.Errorf("summary flows %d, want at least %d", n, 2*clients)
	}
	if n := p.summary("datagrams_to_clients"); n != clients*perClient+clients {
		t.Errorf("summary datagrams to clients %d, want %d", n, clients*perClient+clients)
	}
}

// NDJSON lines in datagrams from 20 client addresses reach the targets
// whole; an oversize line and a binary datagram are counted; the exit
// ledger closes against what the sinks received.
func TestUDPNDJSON(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--udp", "--target", w.targets(), "--max-line-bytes", "2KiB")
	sent := map[uint32]uint32{}
	const clients, perClient = 20, 500
	for i := range uint32(clients) {
		c := udpDial(t, byte(10+i), p.addr)
		for s := uint32(0); s < perClient; s += 5 {
			var b []byte
			for k := range uint32(5) {
				b = linetest.AppendLine(b, i+1, s+k)
			}
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
			if s%50 == 0 {
				w.waitLines(uint64(i)*perClient + uint64(s) + 5) // lockstep now and then
			}
		}
		sent[i+1] = perClient
	}
	w.waitLines(clients * perClient)
	c := udpDial(t, 99, p.addr)
	c.Write(append(bytes.Repeat([]byte("y"), 3000), '\n'))
	c.Write([]byte("\x1e\x0fchunked GELF\x00"))
	if code := p.stop(syscall.SIGTERM, 20*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	w.drained()
	g := w.checkLedger(p, true)
	if g.delivered != clients*perClient || g.byReason["oversize"] != 1 || g.byReason["binary"] != 1 {
		t.Fatalf("ledger %+v", g)
	}
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

// A TCP and a UDP listener share a port (syslog's 514 is both); a reload
// that changes the UDP listener replaces it on its socket; an upgrade
// passes both sockets on; healthcheck finds both.
func TestUDPBesideTCPReloadAndUpgrade(t *testing.T) {
	w := newWorld(t, 1)
	port := freePort(t)
	dir := t.TempDir()
	doc := func(idle string) string {
		return fmt.Sprintf(`log-format = "json"
pid-file = %q

[[listener]]
name = "tcp"
addr = "127.0.0.1"
port = %s
target = [%q]

[[listener]]
name = "udp"
proto = "udp"
addr = "127.0.0.1"
port = %s
target = [%q]
line-timeout = %q
`, filepath.Join(dir, "pid"), port, w.targets(), port, w.targets(), idle)
	}
	path := writeConfig(t, dir, doc("1m"))
	if out, err := command(bin, "check-config", path).CombinedOutput(); err == nil || !strings.Contains(string(out), "line-timeout") {
		t.Fatalf("line-timeout on a UDP listener: %v: %s", err, out)
	}
	path = writeConfig(t, dir, strings.Replace(doc(""), "line-timeout = \"\"\n", "max-line-bytes = \"64KiB\"\n", 1))
	p := startCmd(t, command(bin, "--config", path))
	listening(t, p, 2)
	addr := "127.0.0.1:" + port
	u := udpDial(t, 1, addr)
	tc := dial(t, addr)
	var seq uint32
	send := func() {
		t.Helper()
		u.Write(linetest.AppendLine(nil, 1, seq))
		tc.Write(linetest.AppendLine(nil, 2, seq))
		seq++
		w.waitLines(2 * uint64(seq))
	}
	send()
	out, err := command(bin, "healthcheck", "--config", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "(udp) is held") {
		t.Fatalf("healthcheck: %v: %s", err, out)
	}
	// A reload that changes the UDP listener: it is replaced on its socket.
	writeConfig(t, dir, strings.Replace(doc(""), "line-timeout = \"\"\n", "max-line-bytes = \"32KiB\"\n", 1))
	p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog("listener replaced; the old one drains", 10*time.Second)
	send()
	// An upgrade passes both sockets on.
	oldPID := readPID(t, filepath.Join(dir, "pid"), 0)
	p.cmd.Process.Signal(syscall.SIGUSR2)
	newPID := readPID(t, filepath.Join(dir, "pid"), oldPID)
	p.waitLog("upgrade: client connections handed over; this process delivers what it read and exits", time.Minute)
	send() // tc moved to the new process; u's datagrams reach it
	tc.Close()
	syscall.Kill(newPID, syscall.SIGTERM)
	p.wait(30 * time.Second) // both processes gone: their stderr closes
	w.drained()
	if r := w.check(map[uint32]uint32{1: seq, 2: seq}); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
}
