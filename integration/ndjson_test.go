package integration

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// 8 client connections × 50 000 lines into 2 targets: every line arrives
// exactly once, none torn, each target gets at least a quarter.
func TestSpreadsEveryLineOnce(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--target", w.targets())
	sent, err := clients(8, 50000, func(c uint32) error {
		conn, err := dialClient(p.addr)
		if err != nil {
			return err
		}
		_, err = linetest.Send(conn, c, 0, 50000, 16<<10)
		conn.Close()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	p.stopOK()
	r := w.check(sent)
	if r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 || r.Unexpected != 0 {
		t.Fatal(r)
	}
	for _, s := range w.sinks {
		if n := s.OutOfOrder(); n != 0 {
			t.Fatalf("sink %s: %d lines out of order on their connection", s.Addr(), n)
		}
		if share := float64(s.Lines()) / float64(r.Sent); share < 0.25 {
			t.Errorf("target %s got %.1f%% of the lines, want at least 25%%", s.Addr(), 100*share)
		}
	}
	if in, out := p.summary("lines_in"), p.summary("lines_out"); in != 400000 || out != 400000 {
		t.Fatalf("summary lines_in %d lines_out %d, want 400000", in, out)
	}
	if g := w.checkLedger(p, true); g.received != 400000 || g.dropped != 0 {
		t.Fatalf("ledger %+v", g)
	}
}

// A target's listener closes and its connections are reset mid-stream (after
// it read what its kernel had); it returns 3 s later. Nothing is lost or
// torn, workers fail over, and later fail back.
func TestTargetResetFailoverAndFailback(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--target", w.targets(), "--failback", "1s", "--backoff-max", "200ms")
	victim := w.sinks[0]
	faults := make(chan error, 1)
	go func() {
		// Mid-stream, by what was delivered: a seventh of the 280 000.
		if !w.untilLines(40000) {
			faults <- errors.New("the clients never got going")
			return
		}
		victim.Kill(true)
		// Down while the other target takes 60 000 more.
		other := w.sinks[1].Lines()
		for w.sinks[1].Lines() < other+60000 && w.lines() < 280000 {
			time.Sleep(2 * time.Millisecond)
		}
		faults <- victim.Restart()
	}()
	sent, err := clients(4, 70000, func(c uint32) error {
		conn, err := dialClient(p.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		return linetest.SendPaced(conn, c, 0, 70000, 7*time.Second)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-faults; err != nil {
		t.Fatal(err)
	}
	p.waitLog("failed back", 10*time.Second)
	// After the failback the restarted target takes lines again.
	before := victim.Lines()
	more := uint32(0)
	for c := uint32(100); victim.Lines() == before; c++ {
		if c > 200 {
			t.Fatal("the restarted target got no lines after failing back")
		}
		conn := dial(t, p.addr)
		if _, err := linetest.Send(conn, c, 0, 2000, 16<<10); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		sent[c] = 2000
		more += 2000
		deadline := time.Now().Add(5 * time.Second)
		for w.sinks[0].Lines()+w.sinks[1].Lines() < uint64(280000+more) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	p.stopOK()
	r := w.check(sent)
	if r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
	if len(p.findLogs("failed over")) == 0 {
		t.Error("no failover logged")
	}
	if g := w.checkLedger(p, false); g.received != r.Sent || g.dropped != 0 {
		t.Fatalf("ledger %+v, sent %d", g, r.Sent)
	}
	if r.Duplicated > p.summary("retried_lines") {
		t.Fatalf("%d duplicates, but only %d lines were sent again", r.Duplicated, p.summary("retried_lines"))
	}
}

// A target stops reading for 2 s, so its buffers fill, then resets its
// connections. The only lines lost are those still unread in its own
// receive queue at the reset (measured there with SIOCINQ): no sender can
// recover bytes the target's kernel acknowledged.
func TestStalledTargetResetLosesOnlyItsUnreadQueue(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--target", w.targets())
	victim := w.sinks[0]
	killed := make(chan linetest.KillResult, 1)
	go func() {
		w.untilLines(100000) // a fifth of the way
		victim.Pause()
		// Stalled while the other target takes 100 000 more: its
		// buffers are full by then.
		other := w.sinks[1].Lines()
		for w.sinks[1].Lines() < other+100000 && w.lines() < 400000 {
			time.Sleep(2 * time.Millisecond)
		}
		killed <- victim.Kill(false)
	}()
	// About 100 000 lines/s in all, for 5 s.
	sent, err := clients(4, 125000, func(c uint32) error {
		conn, err := dialClient(p.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		return linetest.SendPaced(conn, c, 0, 125000, 5*time.Second)
	})
	if err != nil {
		t.Fatal(err)
	}
	k := <-killed
	p.stopOK()
	r := w.check(sent)
	unreadLines := uint64(bytes.Count(k.Unread, []byte{'\n'}))
	t.Logf("unread in the target's receive queue at the reset: %d bytes, %d lines; lost %d lines",
		k.UnreadBytes, unreadLines, r.Lost)
	if r.Torn != 0 || r.Lost > unreadLines+1 {
		t.Fatalf("%s; more lost than the target's unread queue (%d lines)", r, unreadLines)
	}
	// Every lost line is one of those the target held unread (in its
	// kernel, or begun in its own buffer).
	unread := map[uint64]bool{}
	for _, part := range k.UnreadConns {
		for key := range linetest.Keys(part) {
			unread[key] = true
		}
	}
	for _, key := range w.ledger.Lost(sent) {
		if !unread[key] {
			t.Fatalf("line %d of client %d was lost but was not in the target's unread queue", uint32(key), key>>32)
		}
	}
	if k.UnreadBytes == 0 {
		t.Fatal("the stalled target had nothing unread: the stall did not happen")
	}
	if g := w.checkLedger(p, false); g.received != r.Sent || g.dropped != 0 {
		t.Fatalf("ledger %+v, sent %d", g, r.Sent)
	}
}

// Many clients close without a final newline, sharing one worker: every
// tail arrives as a line of its own, none merged with another.
func TestUnterminatedTailsNeverMerge(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--connections", "1")
	const n = 50
	sent, err := clients(n, 20, func(c uint32) error {
		conn, err := dialClient(p.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		b := linetest.AppendLine(nil, c, 0)
		for s := uint32(1); s < 20; s++ {
			b = linetest.AppendLine(b, c, s)
		}
		_, err = conn.Write(b[:len(b)-1]) // no final newline
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	p.stopOK()
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	if g := w.checkLedger(p, true); g.received != n*20 {
		t.Fatalf("ledger %+v", g)
	}
}

// A 5 MiB line with --max-line-bytes 1MiB is dropped and counted, the lines
// around it arrive, and so do lines after binary garbage; memory stays
// bounded.
func TestOversizeLineDroppedAndCounted(t *testing.T) {
	w := newWorld(t, 1)
	p := startCmd(t, cmdStatic("--addr", "127.0.0.1", "--port", "0", "--log-format", "json",
		"--target", w.targets(), "--max-line-bytes", "1MiB"))
	conn := dial(t, p.addr)
	var b []byte
	b = linetest.AppendLine(b, 1, 0)
	b = append(b, bytes.Repeat([]byte("x"), 5<<20)...)
	b = append(b, '\n')
	b = linetest.AppendLine(b, 1, 1)
	garbage := make([]byte, 3<<20) // random bytes with no newline: one oversize "line"
	rand.Read(garbage)
	garbage = bytes.ReplaceAll(garbage, []byte{'\n'}, []byte{'x'})
	b = append(b, garbage...)
	b = append(b, '\n')
	b = linetest.AppendLine(b, 1, 2)
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	p.waitLog("client disconnected", 10*time.Second)
	hwm := p.vmHWM()
	p.stopOK()
	if r := w.check(map[uint32]uint32{1: 3}); r.Lost != 0 || r.Torn != 0 || r.Received != 3 {
		t.Fatal(r)
	}
	if got := p.summary("dropped_oversize"); got != 2 {
		t.Fatalf("dropped_oversize %d, want 2", got)
	}
	if len(p.findLogs("line longer than --max-line-bytes dropped")) == 0 {
		t.Fatal("the drop was not logged")
	}
	if g := w.checkLedger(p, true); g.received != 5 || g.byReason["oversize"] != 2 {
		t.Fatalf("ledger %+v", g)
	}
	t.Logf("peak RSS %d MiB after 8 MiB of oversize input", hwm>>20)
	if hwm > 48<<20 {
		t.Fatalf("peak RSS %d MiB: memory grew with the oversize line", hwm>>20)
	}
}

// All targets are down for 5 s while clients keep sending: the clients are
// slowed, not disconnected, and everything arrives once the targets return.
func TestAllTargetsDownClientsSlowedNotDropped(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--target", w.targets(), "--buffer-bytes", "8MiB", "--backoff-max", "200ms")
	down := make(chan error, 1)
	go func() {
		time.Sleep(500 * time.Millisecond)
		w.sinks[0].Kill(true)
		w.sinks[1].Kill(true)
		time.Sleep(5 * time.Second)
		err := w.sinks[0].Restart()
		if err == nil {
			err = w.sinks[1].Restart()
		}
		down <- err
	}()
	start := time.Now()
	sent, err := clients(4, 200000, func(c uint32) error {
		conn, err := dialClient(p.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = linetest.Send(conn, c, 0, 200000, 32<<10)
		return err
	})
	if err != nil {
		t.Fatalf("a client was disconnected: %v", err)
	}
	if err := <-down; err != nil {
		t.Fatal(err)
	}
	// 100 MB is more than the buffers and both sides' sockets can hold:
	// the clients must have waited for the targets to come back.
	if took := time.Since(start); took < 5*time.Second {
		t.Fatalf("clients finished in %s, before the targets returned: nothing held them back", took)
	}
	p.stopOK()
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
	if g := w.checkLedger(p, false); g.dropped != 0 || g.received != 800000 {
		t.Fatalf("ledger %+v", g)
	}
}

// SIGTERM while clients are sending: ndlb stops accepting, reads the open
// connections until their clients close them, delivers everything and exits 0.
func TestSIGTERMDeliversEverythingRead(t *testing.T) {
	w := newWorld(t, 2)
	p := startNDLB(t, "--target", w.targets())
	held := dial(t, p.addr) // keeps ndlb draining until the check below
	signalled := make(chan struct{})
	go func() {
		w.untilLines(60000) // a quarter of the way
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		close(signalled)
	}()
	sent, err := clients(4, 60000, func(c uint32) error {
		conn, err := dialClient(p.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		return linetest.SendPaced(conn, c, 0, 60000, 3*time.Second)
	})
	if err != nil {
		t.Fatal(err)
	}
	<-signalled
	p.waitLog("shutting down: no new connections; draining clients", 10*time.Second)
	// ndlb is still draining (held is open); past the backlog grace it
	// accepts nothing new.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("new connections are still accepted seconds after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-p.done:
		t.Fatal("ndlb exited before the held client closed: the check above proved nothing")
	default:
	}
	held.Close()
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	if p.summary("lines_out") != 240000 {
		t.Fatalf("summary lines_out %d", p.summary("lines_out"))
	}
	if g := w.checkLedger(p, true); g.received != 240000 {
		t.Fatalf("ledger %+v", g)
	}
}

// A client that keeps its connection open past --drain-timeout is cut off;
// its last, unfinished line is dropped as incomplete, and ndlb exits 0.
func TestDrainTimeoutCutsSlowClient(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--drain-timeout", "500ms", "--log-level", "debug")
	conn := dial(t, p.addr)
	b := linetest.AppendLine(nil, 1, 0)
	b = linetest.AppendLine(b, 1, 1)
	if _, err := conn.Write(b[:len(b)-10]); err != nil { // one line and most of another
		t.Fatal(err)
	}
	p.waitLog("client connected", 5*time.Second)
	p.stopOK()
	if r := w.check(map[uint32]uint32{1: 1}); r.Lost != 0 || r.Torn != 0 || r.Received != 1 {
		t.Fatal(r)
	}
	if p.summary("dropped_incomplete") != 1 {
		t.Fatalf("dropped_incomplete %d, want 1", p.summary("dropped_incomplete"))
	}
	if g := w.checkLedger(p, true); g.received != 2 || g.byReason["incomplete"] != 1 {
		t.Fatalf("ledger %+v", g)
	}
}

// Bad flags and values exit 2 with one line on stderr naming the flag.
func TestBadFlagsExit2(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{name: "no target", args: nil, want: "--target"},
		{name: "not host:port", args: []string{"-target", "localhost"}, want: "--target"},
		{name: "port out of range in target", args: []string{"-target", "a:70000"}, want: "--target"},
		{name: "duplicate target", args: []string{"-target", "a:1,b:2", "-target", "a:1"}, want: "--target"},
		{name: "listen port out of range", args: []string{"-target", "a:1", "-port", "65536"}, want: "--port"},
		{name: "connections below 1", args: []string{"-target", "a:1", "-connections", "0"}, want: "--connections"},
		{name: "connections not a number", args: []string{"-target", "a:1", "--connections", "four"}, want: "connections"},
		{name: "cert without key", args: []string{"-target", "a:1", "-tls-cert", dir + "/c.pem"}, want: "--tls-key"},
		{name: "unreadable cert", args: []string{"-target", "a:1", "-tls-cert", dir + "/c.pem", "-tls-key", dir + "/k.pem"}, want: "--tls-cert"},
		{name: "bad size", args: []string{"-target", "a:1", "--max-line-bytes", "lots"}, want: "--max-line-bytes"},
		{name: "buffer below one line", args: []string{"-target", "a:1", "--buffer-bytes", "64KiB"}, want: "--buffer-bytes"},
		{name: "negative failback", args: []string{"-target", "a:1", "--failback", "-1s"}, want: "--failback"},
		{name: "client buffer below two lines", args: []string{"-target", "a:1", "--client-buffer-bytes", "1MiB"}, want: "--client-buffer-bytes"},
		{name: "negative line timeout", args: []string{"-target", "a:1", "--line-timeout", "-1s"}, want: "--line-timeout"},
		{name: "line timeout with passthrough", args: []string{"-passthrough", "-target", "a:1", "--line-timeout", "1s"}, want: "--line-timeout"},
		{name: "bad log format", args: []string{"-target", "a:1", "--log-format", "xml"}, want: "--log-format"},
		{name: "unknown flag", args: []string{"-target", "a:1", "--bogus"}, want: "-bogus"},
		{name: "bad env var", env: []string{"NDLB_TARGET=a:1", "NDLB_CONNECTIONS=-3"}, want: "--connections"},
		{name: "skip verify without tls-target", args: []string{"-target", "a:1", "-tls-target-skip-verify"}, want: "--tls-target"},
		{name: "unknown balance", args: []string{"-passthrough", "-target", "a:1", "--balance", "fastest"}, want: "--balance"},
		{name: "bad hash key", args: []string{"-passthrough", "-target", "a:1", "--balance", "hash", "--hash-key", "mac"}, want: "--hash-key"},
		{name: "hash key without hash", args: []string{"-passthrough", "-target", "a:1", "--hash-key", "ip"}, want: "--hash-key"},
		{name: "bad PROXY version", args: []string{"-passthrough", "-target", "a:1", "--send-proxy", "v3"}, want: "--send-proxy"},
		{name: "send-proxy in NDJSON mode", args: []string{"-target", "a:1", "--send-proxy", "v1"}, want: "--send-proxy"},
		{name: "NDJSON flag with passthrough", args: []string{"-passthrough", "-target", "a:1", "--max-line-bytes", "1KiB"}, want: "--max-line-bytes"},
		{name: "negative max-conns", args: []string{"-target", "a:1", "--max-conns", "-1"}, want: "--max-conns"},
		{name: "negative retries", args: []string{"-passthrough", "-target", "a:1", "--connect-retries", "-1"}, want: "--connect-retries"},
		{name: "negative idle timeout", env: []string{"NDLB_PASSTHROUGH=true", "NDLB_TARGET=a:1", "NDLB_IDLE_TIMEOUT=-1s"}, want: "--idle-timeout"},
		{name: "unknown check", args: []string{"-target", "a:1", "--check", "icmp"}, want: "--check"},
		{name: "check flag without check", args: []string{"-target", "a:1", "--check-rise", "5"}, want: "--check"},
		{name: "http check flag on tcp check", args: []string{"-target", "a:1", "--check", "tcp", "--check-http-path", "/x"}, want: "--check http"},
		{name: "check timeout over interval", args: []string{"-target", "a:1", "--check", "tcp", "--check-timeout", "10s"}, want: "--check"},
		{name: "token file without admin", args: []string{"-target", "a:1", "--admin-token-file", "/x"}, want: "--admin"},
		{name: "bad weight", args: []string{"-target", "a:1=0"}, want: "--target"},
		{name: "DNS target without port", args: []string{"--target-dns", "logs.example"}, want: "--target-dns"},
		{name: "bad SRV name", args: []string{"--target-srv", "logs.example"}, want: "--target-srv"},
		{name: "dns interval without names", args: []string{"-target", "a:1", "--dns-interval", "5s"}, want: "--target-dns"},
		{name: "header timeout without accept-proxy", args: []string{"-target", "a:1", "--proxy-header-timeout", "1s"}, want: "--accept-proxy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := command(bin, tt.args...)
			cmd.Env = tt.env
			var stderr strings.Builder
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := cmd.ProcessState.ExitCode()
			msg := strings.TrimSpace(stderr.String())
			if code != 2 || strings.Count(msg, "\n") != 0 || !strings.Contains(msg, tt.want) {
				t.Fatalf("exit %d (%v), stderr %q: want exit 2 and one line naming %s", code, err, msg, tt.want)
			}
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-v"}} {
		out, err := command(bin, args...).Output()
		if err != nil || string(out) != "ndlb it\n" {
			t.Fatalf("%v: %q %v", args, out, err)
		}
	}
	out, err := command(bin, "--help").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"--target", "NDLB_TARGET", "--max-line-bytes", "--failback", "--drain-timeout", "--tls-client-ca"} {
		if !strings.Contains(string(out), f) {
			t.Errorf("--help does not mention %s", f)
		}
	}
}

// The README's flag table names every flag of --help with its variable.
func TestREADMEListsEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	help, err := command(bin, "--help").Output()
	if err != nil {
		t.Fatal(err)
	}
	flags := regexp.MustCompile(`(?m)^[ \t]+(--[a-z-]+)(?:[^\[\n]|\[[^$])*\[\$(NDLB_[A-Z_]+)\]`).FindAllStringSubmatch(string(help), -1)
	if len(flags) < 20 {
		t.Fatalf("found only %d flags in --help", len(flags))
	}
	for _, f := range flags {
		row := fmt.Sprintf("| `%s` | `%s` |", f[1], f[2])
		if !strings.Contains(string(readme), row) {
			t.Errorf("README lacks the row %s", row)
		}
	}
	// Defaults read the same in both, written as a user would (5m, not
	// 5m0s).
	defaults := regexp.MustCompile(`(?m)^[ \t]+(--[a-z-]+) .*\(default: "?([^")]*)"?\) \[\$NDLB_`).FindAllStringSubmatch(string(help), -1)
	if len(defaults) < 20 {
		t.Fatalf("found only %d defaults in --help", len(defaults))
	}
	for _, d := range defaults {
		if d[2] == "false" || strings.Contains(d[2], " ") {
			continue // an off switch, or a phrase the table words its own way
		}
		row := regexp.MustCompile("(?m)^\\| `" + regexp.QuoteMeta(d[1]) + "` \\| `[A-Z_]+` \\| ([^|]*) \\|").FindStringSubmatch(string(readme))
		if row == nil || row[1] != "`"+d[2]+"`" {
			t.Errorf("%s: --help says the default is %s, the README %v", d[1], d[2], row)
		}
	}
}

// With every target gone, lines still queued when the shutdown deadline
// passes are dropped, counted and logged, and ndlb exits 1, not 0.
func TestShutdownDeadlineCountsUndelivered(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--drain-timeout", "300ms", "--deliver-timeout", "300ms", "--backoff-max", "50ms")
	w.sinks[0].Kill(true)
	conn := dial(t, p.addr)
	if _, err := linetest.Send(conn, 1, 0, 1000, 16<<10); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	p.waitLog("client disconnected", 5*time.Second)
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if got := p.summary("dropped_shutdown"); got != 1000 {
		t.Fatalf("dropped_shutdown %d, want 1000", got)
	}
	if len(p.findLogs("shutdown deadline passed: undelivered lines dropped")) == 0 {
		t.Fatal("the drop was not logged")
	}
	if g := w.checkLedger(p, true); g.received != 1000 || g.byReason["shutdown"] != 1000 {
		t.Fatalf("ledger %+v", g)
	}
}

// A second signal during the drain exits at once, with status 1.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--log-level", "debug")
	conn := dial(t, p.addr) // stays open: the drain would wait 30 s for it
	if _, err := conn.Write(linetest.AppendLine(nil, 1, 0)); err != nil {
		t.Fatal(err)
	}
	p.waitLog("client connected", 5*time.Second)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitLog("shutting down: no new connections; draining clients", 5*time.Second)
	if code := p.stop(syscall.SIGTERM, 5*time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if len(p.findLogs("second signal: exiting without finishing the shutdown")) == 0 {
		t.Fatal("the second signal was not logged")
	}
}

// One client address opening connections in a loop is held to
// --max-conn-rate-per-source, while another address is served normally.
func TestPerSourceConnectionRate(t *testing.T) {
	w := newWorld(t, 1)
	p := startNDLB(t, "--target", w.targets(), "--max-conn-rate-per-source", "5")
	send := func(from string, client, seq uint32) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(linetest.AppendLine(nil, client, seq))
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		io.Copy(io.Discard, c) // until ndlb closes it
		c.Close()
	}
	start := time.Now()
	for i := range uint32(40) {
		send("127.0.0.1", 1, i) // the noisy one
	}
	elapsed := time.Since(start)
	for i := range uint32(3) {
		send("127.0.0.2", 2, i) // a quiet neighbour
	}
	p.waitLog("connection refused: its client address is over its limit (--max-conns-per-source, --max-conn-rate-per-source)", 5*time.Second)
	p.stopOK()
	r := w.check(map[uint32]uint32{2: 3})
	noisy := r.Unexpected // client 1's lines: not counted as sent
	if r.Lost != 0 || r.Torn != 0 || noisy == 0 || float64(noisy) > 5+5*elapsed.Seconds()+1 {
		t.Fatalf("quiet client lost %d of 3 lines; noisy one got %d of 40 through in %s (want at most 5 + 5/s)", r.Lost, noisy, elapsed)
	}
	t.Logf("noisy: %d of 40 connections served in %s; quiet: 3 of 3", noisy, elapsed.Round(time.Millisecond))
}

// With the only target slow and the buffer full, a quiet client's lines
// keep arriving while a flooding client is held back: the freed space goes
// to waiting clients in turn, not to the fastest.
func TestQuietClientNotStarvedByFlood(t *testing.T) {
	w := newWorld(t, 1)
	w.sinks[0].Throttle(512 << 10)
	p := startNDLB(t, "--target", w.targets(), "--max-line-bytes", "16KiB", "--read-bytes", "16KiB",
		"--buffer-bytes", "512KiB", "--client-buffer-bytes", "1MiB")
	flood := dial(t, p.addr)
	stop := make(chan struct{})
	flooded := make(chan uint32, 1)
	go func() { // flat out until told to stop: held back by TCP
		var seq uint32
		for {
			select {
			case <-stop:
				flood.Close()
				flooded <- seq
				return
			default:
			}
			if _, err := flood.Write(linetest.AppendLine(nil, 1, seq)); err != nil {
				flooded <- seq
				return
			}
			seq++
		}
	}()
	quiet := dial(t, p.addr)
	for i := range uint32(20) {
		if _, err := quiet.Write(linetest.AppendLine(nil, 2, i)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	quiet.Close()
	// Every quiet line arrives while the flood still runs.
	deadline := time.Now().Add(20 * time.Second)
	for w.ledger.Client(2) < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("the quiet client's lines: %d of 20 arrived while the flood ran", w.ledger.Client(2))
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	n := <-flooded
	w.sinks[0].Throttle(0)
	p.stopOK()
	if r := w.check(map[uint32]uint32{2: 20}); r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
	t.Logf("the flood wrote %d lines meanwhile", n)
}
