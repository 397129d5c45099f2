package integration

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// A reload adds a listener, removes a target, changes the algorithm and
// replaces a listener (a setting that needs a new one), under traffic and
// without resetting any connection; a broken file then changes nothing and
// is logged and counted.
func TestReloadUnderTraffic(t *testing.T) {
	dir := t.TempDir()
	b0, b1, b2 := newIDBackend(t, "b0", nil), newIDBackend(t, "b1", nil), newIDBackend(t, "b2", nil)
	w := newWorld(t, 1)
	web := func(balance, idle string, targets ...string) string {
		return fmt.Sprintf(`
[[listener]]
name = "web"
passthrough = true
addr = "127.0.0.1"
port = 0
drain-timeout = "20s"
balance = %q
idle-timeout = %q
target = %s
`, balance, idle, tomlList(targets))
	}
	head := "log-format = \"json\"\nadmin = \"127.0.0.1:0\"\n"
	path := writeConfig(t, dir, head+web("roundrobin", "1h", b0.addr(), b1.addr(), b2.addr()))
	p := startCmd(t, command(bin, "--config", path))
	addr := listening(t, p, 1)["web"]
	api := newAdminAPI(t, p, "")

	// Long-lived connections, one to each target, that must survive.
	var held []*bufio.ReadWriter
	var heldConns []net.Conn
	for range 3 {
		c := dial(t, addr)
		heldConns = append(heldConns, c)
		rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
		if _, err := rw.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		held = append(held, rw)
	}
	ping := func(when string) {
		t.Helper()
		for i, rw := range held {
			rw.WriteString("ping\n")
			rw.Flush()
			if got, err := rw.ReadString('\n'); err != nil || got != "ping\n" {
				t.Fatalf("%s: held connection %d: %q %v", when, i, got, err)
			}
		}
	}
	ping("before the reload")

	logs := fmt.Sprintf("\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\ntarget = [%q]\n", w.sinks[0].Addr())
	// Step 1, applied in place: a listener added, b2 removed, "first".
	os.WriteFile(path, []byte(head+web("first", "1h", b0.addr(), b1.addr())+logs), 0o600)
	p.waitLog("config reloaded", 10*time.Second)
	p.waitLog("target removed; draining", time.Second)
	if l := p.findLogs("listener replaced; the old one drains"); len(l) != 0 {
		t.Fatalf("a live change replaced the listener: %v", l)
	}
	ping("after the live reload")
	for i := range 10 {
		if name, err := hello(t, addr, nil, false); err != nil || name != "b0" {
			t.Fatalf("new connection %d after the reload: %q %v, want b0 (first)", i, name, err)
		}
	}
	// Step 2: a setting that needs a new listener; the old one drains.
	os.WriteFile(path, []byte(head+web("first", "30m", b0.addr(), b1.addr())+logs), 0o600)
	p.waitLog("listener replaced; the old one drains", 10*time.Second)
	ping("after the listener was replaced") // on the old, draining listener
	// For its last 100ms the old listener still takes connections from its
	// backlog (the kernel shares the port); then only the new one serves.
	deadline := time.Now().Add(10 * time.Second)
	for inRow := 0; inRow < 10; {
		name, err := hello(t, addr, nil, false)
		if err != nil {
			t.Fatalf("new connection after the reload: %v", err)
		}
		if inRow++; name != "b0" {
			inRow = 0
		}
		if time.Now().After(deadline) {
			t.Fatal("new connections do not all go to b0 (first) after the reload")
		}
	}
	var added map[string]any
	for _, l := range p.findLogs("listener added") {
		added = l
	}
	lc := dial(t, added["addr"].(string))
	if _, err := linetest.Send(lc, 1, 0, 500, 4096); err != nil {
		t.Fatal(err)
	}
	lc.Close()

	// A broken file: refused, logged, counted; everything keeps serving.
	os.WriteFile(path, []byte(head+web("first", "30m", b0.addr())+"\nbogus-key = 1\n"), 0o600)
	refused := p.waitLog("config reload refused; the running config stays", 10*time.Second)
	t.Logf("refused: %v", refused["err"])
	var info struct {
		Applied, Refused uint64
		LastOutcome      string `json:"last_outcome"`
		LastError        string `json:"last_error"`
	}
	api.call("GET", "/api/v1/config", &info)
	if info.Applied != 2 || info.Refused != 1 || info.LastError == "" || info.LastOutcome != "refused" {
		t.Fatalf("reload counters %+v", info)
	}
	if name, err := hello(t, addr, nil, false); err != nil || name != "b0" {
		t.Fatalf("after the refused reload: %q %v", name, err)
	}
	ping("after the refused reload")
	// SIGHUP reloads too (the file is fixed first).
	os.WriteFile(path, []byte(head+web("first", "30m", b0.addr(), b1.addr())+logs), 0o600)
	p.cmd.Process.Signal(syscall.SIGHUP)
	deadline = time.Now().Add(10 * time.Second)
	for api.call("GET", "/api/v1/config", &info); info.Applied < 3; api.call("GET", "/api/v1/config", &info) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload after SIGHUP: %+v", info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if info.LastOutcome != "applied" || info.LastError == "" {
		t.Fatalf("after an applied reload the refused one's error is forgotten: %+v", info)
	}
	// The file watcher would also reload, after its debounce: the signal's
	// own reload must come first and say so. (Its log line may reach this
	// test a moment after the API counts it.)
	bySIGHUP := func(l map[string]any) bool { return l["trigger"] == "SIGHUP" }
	for deadline := time.Now().Add(10 * time.Second); !slices.ContainsFunc(p.findLogs("config reloaded"), bySIGHUP); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no reload triggered by SIGHUP: %v", p.findLogs("config reloaded"))
		}
	}
	for _, c := range heldConns {
		c.Close()
	}
	p.stopOK()
	if r := w.check(map[uint32]uint32{1: 500}); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	if g := p.ledger("logs"); g.received != 500 || g.delivered != 500 {
		t.Fatalf("ledger %+v", g)
	}
	if n := len(p.findLogs("connection closed")); n == 0 {
		t.Fatal("no connection was logged closed")
	}
	for _, l := range p.findLogs("connection closed") {
		if l["closed_by"] == "shutdown" && l["err"] != nil {
			t.Fatalf("a connection was cut: %v", l)
		}
	}
}

func tomlList(xs []string) string {
	s := "["
	for i, x := range xs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%q", x)
	}
	return s + "]"
}

// A reload that replaces an NDJSON listener (a setting that needs a new
// one) hands its long-lived clients over to the replacement, as an
// upgrade hands them to a new process: the clients' connections carry on
// past the old listener's drain timeout, nothing in their sockets is
// lost, and the listener's ledger over the process adds up to what they
// sent.
func TestReloadHandsClientsToTheReplacement(t *testing.T) {
	reloadHandsOver(t, false, false)
}

// Two replacing reloads in a row while every target is down and the
// clients are held back: when the targets come back, the clients move to
// the newest listener (the first replacement is draining by then), and
// none is cut.
func TestReloadTwiceWhileClientsAreHeldBack(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, 2)
	for _, s := range w.sinks {
		s.Kill(false)
	}
	logs := func(connections int) string {
		return fmt.Sprintf("log-format = \"json\"\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\n"+
			"drain-timeout = \"20s\"\nbuffer-bytes = \"2MiB\"\nmax-line-bytes = \"64KiB\"\nbackoff-max = \"100ms\"\nconnections = %d\ntarget = %s\n",
			connections, tomlList([]string{w.sinks[0].Addr(), w.sinks[1].Addr()}))
	}
	path := writeConfig(t, dir, logs(4))
	p := startCmd(t, command(bin, "--config", path))
	addr := listening(t, p, 1)["logs"]
	const clients, perClient = 4, 20000 // about 10 MiB: far more than the queue holds
	wait := pacedClients(addr, clients, perClient, time.Second)
	p.waitLog("target down: dial failed", 10*time.Second)
	os.WriteFile(path, []byte(logs(2)), 0o600)
	p.waitLog("listener replaced; the old one drains", 10*time.Second)
	os.WriteFile(path, []byte(logs(3)), 0o600)
	p.waitLogs("listener replaced; the old one drains", 2, 10*time.Second)
	for _, s := range w.sinks {
		if err := s.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	sent, err := wait()
	if err != nil {
		t.Fatal(err) // a client cut at a drain sees an error
	}
	w.waitLines(clients * perClient)
	p.stopOK()
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	if l := p.findLogs("client connection not handed over; this listener serves it on"); len(l) != 0 {
		t.Fatalf("a client was refused by a draining replacement: %v", l[0])
	}
}

// A reload that replaces two listeners at once hands each one's clients
// to its own replacement, though the first's clients move while the
// reload is still replacing the second.
func TestReloadReplacingTwoListenersHandsBothOver(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, 2)
	doc := func(connections int) string {
		out := "log-format = \"json\"\n"
		for _, name := range []string{"a", "b"} {
			out += fmt.Sprintf("[[listener]]\nname = %q\naddr = \"127.0.0.1\"\nport = 0\ndrain-timeout = \"1s\"\nconnections = %d\ntarget = %s\n",
				name, connections, tomlList([]string{w.sinks[0].Addr(), w.sinks[1].Addr()}))
		}
		return out
	}
	path := writeConfig(t, dir, doc(4))
	p := startCmd(t, command(bin, "--config", path))
	addrs := listening(t, p, 2)
	const clients, perClient = 3, 20000
	waitA := pacedClients(addrs["a"], clients, perClient, 3*time.Second)
	waitB := pacedClients(addrs["b"], clients, perClient, 3*time.Second)
	w.waitLines(2 * clients * perClient / 10)
	os.WriteFile(path, []byte(doc(2)), 0o600)
	for _, l := range p.waitLogs("reload: client connections handed over to the listener's replacement", 2, 15*time.Second) {
		if l["connections"] != float64(clients) {
			t.Errorf("listener %v handed over %v of %d clients", l["listener"], l["connections"], clients)
		}
	}
	for _, wait := range []func() (map[uint32]uint32, error){waitA, waitB} {
		if _, err := wait(); err != nil {
			t.Fatal(err) // a client cut at the old listener's drain
		}
	}
	w.waitLines(2 * clients * perClient)
	p.stopOK()
	if l := p.findLogs("client connection not handed over; this listener serves it on"); len(l) != 0 {
		t.Fatalf("a client stayed on the old listener: %v", l[0])
	}
	if a, b := p.ledger("a"), p.ledger("b"); a.received+b.received != 2*clients*perClient || a.delivered+b.delivered != w.lines() {
		t.Fatalf("ledgers %+v and %+v; the sinks got %d", a, b, w.lines())
	}
}

// Every target down past the replaced listener's drain and delivery
// deadlines, and the reload names a live target instead of the dead one:
// the old listener's undelivered lines move to its replacement, which
// delivers them to the target the config names now. Twice in a row with
// a spool, the dead target kept: the middle listener, which never opened
// the spool (the first held it until its deadline), hands its lines on
// too, and they are delivered when the target comes back. A third
// reload, once the third listener opened the spool, keeps what it read
// before then (in memory only) by writing it to the spool.
func TestReloadDuringOutageKeepsWhatTheOldListenerRead(t *testing.T) {
	for _, spooled := range []bool{false, true} {
		t.Run(map[bool]string{false: "memory", true: "spool"}[spooled], func(t *testing.T) {
			dir := t.TempDir()
			w := newWorld(t, 2)
			w.sinks[0].Kill(false)
			w.sinks[1].Kill(false)
			doc := func(buffer string, target *linetest.Sink) string {
				d := fmt.Sprintf("log-format = \"json\"\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\n"+
					"drain-timeout = \"1s\"\ndeliver-timeout = \"1s\"\nbackoff-max = \"100ms\"\nbuffer-bytes = %q\ntarget = [%q]\n",
					buffer, target.Addr())
				if spooled {
					d += fmt.Sprintf("spool-dir = %q\n", filepath.Join(dir, "spool"))
				}
				return d
			}
			path := writeConfig(t, dir, doc("4MiB", w.sinks[0]))
			p := startCmd(t, command(bin, "--config", path))
			addr := listening(t, p, 1)["logs"]
			sent := map[uint32]uint32{}
			send := func(c uint32) {
				conn := dial(t, addr)
				defer conn.Close()
				if _, err := linetest.Send(conn, c, 0, 2000, 16<<10); err != nil {
					t.Fatal(err)
				}
				sent[c] = 2000
			}
			send(1)
			reloads := 1
			reload := func(buffer string, target *linetest.Sink) {
				writeConfig(t, dir, doc(buffer, target))
				_ = p.cmd.Process.Signal(syscall.SIGHUP)
				p.waitLogs("listener replaced; the old one drains", reloads, 10*time.Second)
				reloads++
			}
			var total uint64 = 4000
			if !spooled {
				if err := w.sinks[1].Restart(); err != nil {
					t.Fatal(err)
				}
				reload("8MiB", w.sinks[1])
				send(2)
				p.waitLog("replaced listener: deadline passed with lines undelivered; they move to its replacement", 10*time.Second)
			} else {
				reload("8MiB", w.sinks[0])
				send(2)
				reload("6MiB", w.sinks[0]) // at once: the second listener has not opened the spool yet
				send(3)
				total += 2000
				p.waitLog("spool open: lines are spooled again", 20*time.Second)
				reload("5MiB", w.sinks[0])
				p.waitLogs("spool open: lines are spooled again", 2, 20*time.Second)
				if err := w.sinks[0].Restart(); err != nil {
					t.Fatal(err)
				}
			}
			w.waitLines(total)
			p.stopOK()
			if r := w.check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
				t.Fatal(r)
			}
			if g := p.ledger("logs"); g.received != total || g.delivered != total || g.spooled != 0 {
				t.Fatalf("exit ledger %+v, want %d lines received and delivered", g, total)
			}
		})
	}
}

// A listener a reload removed during an outage that never ends has no
// replacement to hand its lines to: it goes on trying while the process
// runs, holds up the process's stop by --deliver-timeout at most, as
// every listener does, and counts what it could not deliver.
func TestStopWhileARemovedListenerWaitsForItsTargets(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, 1)
	w.sinks[0].Kill(false)
	listener := func(name string) string {
		return fmt.Sprintf("[[listener]]\nname = %q\naddr = \"127.0.0.1\"\nport = 0\n"+
			"drain-timeout = \"1s\"\ndeliver-timeout = \"1s\"\nbackoff-max = \"100ms\"\ntarget = [%q]\n", name, w.sinks[0].Addr())
	}
	path := writeConfig(t, dir, "log-format = \"json\"\n"+listener("logs")+listener("keep"))
	p := startCmd(t, command(bin, "--config", path))
	conn := dial(t, listening(t, p, 2)["logs"])
	if _, err := linetest.Send(conn, 1, 0, 2000, 16<<10); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	writeConfig(t, dir, "log-format = \"json\"\n"+listener("keep"))
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog("replaced listener: deadline passed with lines undelivered; it goes on delivering them until the process stops", 10*time.Second)
	start := time.Now()
	if code := p.stop(syscall.SIGTERM, 10*time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1 (lines dropped)", code)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the stop took %s with a 1s deliver timeout", d)
	}
	if g := p.ledger("logs"); g.byReason["shutdown"] != 2000 || g.received != 2000 {
		t.Fatalf("ledger %+v, want the 2000 lines dropped at the stop", g)
	}
}

// A reload during an outage does not deliver again, with the spool, the
// lines delivered before it: their records share the spool's segment with
// the undelivered ones, and the old listener cuts them out of it as it
// closes the spool, before its replacement replays it.
func TestReloadWithSpoolDoesNotDeliverTwice(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, 1)
	doc := func(buffer string) string {
		return fmt.Sprintf("log-format = \"json\"\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\n"+
			"drain-timeout = \"1s\"\ndeliver-timeout = \"1s\"\nbackoff-max = \"100ms\"\nbuffer-bytes = %q\ntarget = [%q]\nspool-dir = %q\n",
			buffer, w.sinks[0].Addr(), filepath.Join(dir, "spool"))
	}
	path := writeConfig(t, dir, doc("4MiB"))
	p := startCmd(t, command(bin, "--config", path))
	addr := listening(t, p, 1)["logs"]
	send := func(c uint32) {
		conn := dial(t, addr)
		defer conn.Close()
		if _, err := linetest.Send(conn, c, 0, 2000, 16<<10); err != nil {
			t.Fatal(err)
		}
	}
	send(1)
	w.waitLines(2000)
	w.sinks[0].Kill(false)
	send(2)
	writeConfig(t, dir, doc("8MiB"))
	_ = p.cmd.Process.Signal(syscall.SIGHUP)
	p.waitLog("spool open: lines are spooled again", 20*time.Second)
	if err := w.sinks[0].Restart(); err != nil {
		t.Fatal(err)
	}
	w.waitLines(4000)
	p.stopOK()
	if r := w.check(map[uint32]uint32{1: 2000, 2: 2000}); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
}

// TLS clients move too: a reload that replaces the listener hands each
// one, session and all, to the replacement, so a shipper's TLS
// connection carries on past the old listener's drain timeout, with no
// line lost, torn or duplicated, and none cut.
func TestReloadHandsTLSClientsToTheReplacement(t *testing.T) {
	reloadHandsOver(t, true, false)
}

// Octet-counted clients move as well, plain and TLS, each from wherever it
// was in a frame (the clients here write each frame in two pieces): the
// replacement reads on from the start of the frame in progress.
func TestReloadHandsOctetClientsToTheReplacement(t *testing.T) {
	t.Run("plain", func(t *testing.T) { reloadHandsOver(t, false, true) })
	t.Run("tls", func(t *testing.T) { reloadHandsOver(t, true, true) })
}

// reloadHandsOver runs paced clients (TLS, octet-counted, or neither)
// through a reload that replaces their listener, and checks that every one
// moved to the replacement, none was cut at the old one's drain, every
// line arrived once, and the listener's ledger adds up to what they sent.
func reloadHandsOver(t *testing.T, withTLS, octet bool) {
	dir := t.TempDir()
	p := newPKI(t)
	cert, key, _ := p.files(t, "ndlb", "127.0.0.1", "localhost")
	w := newWorld(t, 2)
	extra := ""
	if withTLS {
		extra += fmt.Sprintf("tls-cert = %q\ntls-key = %q\n", cert, key)
	}
	if octet {
		extra += "framing = \"octet-counted\"\ntarget-framing = \"newline\"\n"
	}
	logs := func(connections int) string {
		return fmt.Sprintf("log-format = \"json\"\n[[listener]]\nname = \"logs\"\naddr = \"127.0.0.1\"\nport = 0\n"+
			"drain-timeout = \"1s\"\nconnections = %d\n%starget = %s\n",
			connections, extra, tomlList([]string{w.sinks[0].Addr(), w.sinks[1].Addr()}))
	}
	path := writeConfig(t, dir, logs(4))
	proc := startCmd(t, command(bin, "--config", path))
	addr := listening(t, proc, 1)["logs"]
	const nClients, perClient = 4, 20000
	clientTLS := &tls.Config{RootCAs: p.pool(), ServerName: "localhost"}
	var sent map[uint32]uint32
	var sendErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		sent, sendErr = clients(nClients, perClient, func(c uint32) error {
			var conn net.Conn
			var err error
			if withTLS {
				conn, err = tls.Dial("tcp", addr, clientTLS)
			} else {
				conn, err = net.Dial("tcp", addr)
			}
			if err != nil {
				return err
			}
			defer conn.Close()
			var out io.Writer = conn
			if octet {
				out = &octetWriter{w: conn}
			}
			return linetest.SendPaced(out, c, 0, perClient, 3*time.Second)
		})
	}()
	w.waitLines(nClients * perClient / 10)
	os.WriteFile(path, []byte(logs(2)), 0o600) // connections: a new listener
	proc.waitLog("listener replaced; the old one drains", 10*time.Second)
	moved := proc.waitLog("reload: client connections handed over to the listener's replacement", 10*time.Second)
	if moved["connections"] != float64(nClients) {
		t.Errorf("handed over %v of %d clients", moved["connections"], nClients)
	}
	<-done // no client saw an error, though the old listener's drain timeout (1s) passed
	if sendErr != nil {
		t.Fatal(sendErr)
	}
	w.waitLines(nClients * perClient)
	proc.stopOK()
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	if g := proc.ledger("logs"); g.received != nClients*perClient || g.delivered != w.lines() {
		t.Fatalf("the listener's ledger %+v; clients sent %d, the sinks got %d", g, nClients*perClient, w.lines())
	}
	if l := proc.findLogs("drain timeout: read what the client had sent, then closed"); len(l) != 0 {
		t.Fatalf("a client was cut at the old listener's drain: %v", l[0])
	}
}

// octetWriter writes the lines given to it as octet-counted frames (each
// line without its newline), in two writes cut inside a frame.
type octetWriter struct {
	w   io.Writer
	buf []byte
}

func (o *octetWriter) Write(p []byte) (int, error) {
	o.buf = o.buf[:0]
	for rest := p; len(rest) > 0; {
		end := bytes.IndexByte(rest, '\n')
		if end < 0 {
			return 0, errors.New("octetWriter: a line without its newline")
		}
		o.buf = strconv.AppendInt(o.buf, int64(end), 10)
		o.buf = append(append(o.buf, ' '), rest[:end]...)
		rest = rest[end+1:]
	}
	cut := len(o.buf)/2 + 1 // inside a frame, most of the time
	for _, b := range [][]byte{o.buf[:min(cut, len(o.buf))], o.buf[min(cut, len(o.buf)):]} {
		if _, err := o.w.Write(b); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}
