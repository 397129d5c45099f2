package integration

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// readPID reads the PID file, waiting up to 30 s for it to name a process
// other than not.
func readPID(t *testing.T, path string, not int) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid != not {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("the PID file %s does not name a process other than %d: %q", path, not, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ledgers sums the exit ledgers of every process that logged to p (an
// upgrade's old and new processes share its stderr), each of which must
// close.
func (p *proc) ledgers(name string) (sum ledger, n int) {
	p.t.Helper()
	for _, l := range p.findLogs("ledger") {
		if l["listener"] != name {
			continue
		}
		num := func(k string) uint64 { v, _ := l[k].(float64); return uint64(v) }
		g := ledger{received: num("received"), delivered: num("delivered"), dropped: num("dropped"), inFlight: num("in_flight"),
			spooled: num("spooled"), replayed: num("replayed")}
		if g.received != g.delivered+g.dropped+g.spooled || g.inFlight != 0 {
			p.t.Fatalf("a ledger of %q does not close: %+v", name, g)
		}
		sum.received += g.received
		sum.delivered += g.delivered
		sum.dropped += g.dropped
		sum.spooled += g.spooled
		sum.replayed += g.replayed
		n++
	}
	return sum, n
}

// An upgrade while 8 long-lived clients send flat out: the clients' own
// connections carry on (no error, no end of stream), a line that was half
// sent when the connection moved arrives whole, and nothing is lost,
// duplicated or torn; the two processes' ledgers close and add up to what
// was sent.
func TestUpgradeKeepsClientConnections(t *testing.T) {
	upgradeKeeps(t, false)
}

// Octet-counted clients move too, each from wherever it was in a frame
// (the clients here write each frame in two pieces; one holds half a
// frame across the upgrade).
func TestUpgradeKeepsOctetCountedClients(t *testing.T) {
	upgradeKeeps(t, true)
}

func upgradeKeeps(t *testing.T, octet bool) {
	w := newWorld(t, 2)
	pidFile := filepath.Join(t.TempDir(), "ndlb.pid")
	args := []string{"--target", w.targets(), "--pid-file", pidFile}
	out := func(c net.Conn) io.Writer { return c }
	frame := func(b []byte) []byte { return b }
	if octet {
		args = append(args, "--framing", "octet-counted", "--target-framing", "newline")
		out = func(c net.Conn) io.Writer { return &octetWriter{w: c} }
		frame = func(b []byte) []byte {
			var f []byte
			for len(b) > 0 {
				i := bytes.IndexByte(b, '\n')
				f = strconv.AppendInt(f, int64(i), 10)
				f, b = append(append(f, ' '), b[:i]...), b[i+1:]
			}
			return f
		}
	}
	p := startNDLB(t, args...)
	oldPID := readPID(t, pidFile, 0)
	if oldPID != p.cmd.Process.Pid {
		t.Fatalf("PID file names %d, ndlb is %d", oldPID, p.cmd.Process.Pid)
	}
	const n, perClient = 8, 40000
	upgraded := make(chan struct{})
	var wg sync.WaitGroup
	sent := map[uint32]uint32{}
	errs := make(chan error, n+1)
	for c := range uint32(n) {
		sent[c] = perClient
		conn := dial(t, p.addr)
		wg.Go(func() {
			// Flat out, in odd-sized writes that cut lines, until the
			// upgrade is done; then the rest.
			if _, err := linetest.Send(out(conn), c, 0, perClient/2, 3001); err != nil {
				errs <- fmt.Errorf("client %d before: %w", c, err)
				return
			}
			<-upgraded
			if _, err := linetest.Send(out(conn), c, perClient/2, perClient, 3001); err != nil {
				errs <- fmt.Errorf("client %d after: %w", c, err)
				return
			}
			errs <- endClean(conn)
		})
	}
	// One more client holds half a line across the upgrade.
	const half = n
	sent[half] = 2
	hc := dial(t, p.addr)
	line := frame(linetest.AppendLine(nil, half, 0))
	if _, err := hc.Write(line[:len(line)/2]); err != nil {
		t.Fatal(err)
	}
	w.waitLines(n * perClient / 4)
	if err := syscall.Kill(oldPID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	done := p.waitLog("upgrade: client connections handed over; this process delivers what it read and exits", time.Minute)
	if got := done["connections"].(float64); got != n+1 {
		t.Errorf("%v connections handed over, want %d", got, n+1)
	}
	newPID := readPID(t, pidFile, oldPID)
	close(upgraded)
	if _, err := hc.Write(append(line[len(line)/2:], frame(linetest.AppendLine(nil, half, 1))...)); err != nil {
		t.Fatal(err)
	}
	errs <- endClean(hc)
	wg.Wait()
	for range n + 1 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	carried := false
	moved := map[string]bool{}
	for _, l := range p.findLogs("client connection handed over (to the new process, or the listener's replacement)") {
		moved[l["conn"].(string)] = true
		if l["partial_bytes"].(float64) > 0 {
			carried = true
		}
	}
	if !carried {
		t.Error("no connection carried a partial line across the upgrade")
	}
	w.waitLines(n*perClient + 2)
	if err := syscall.Kill(newPID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(time.Minute); code != 0 {
		t.Errorf("the old process exited %d", code)
	}
	// The new process served the very connections the old one had.
	for _, l := range p.findLogs("client disconnected") {
		delete(moved, l["conn"].(string))
	}
	if len(moved) != 0 {
		t.Errorf("connections handed over but never ended in the new process: %v", moved)
	}
	r := w.check(sent)
	if r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 || r.Unexpected != 0 {
		t.Fatalf("upgrade lost or broke lines: %s", r)
	}
	sum, procs := p.ledgers("default")
	if procs != 2 || sum.received != r.Sent || sum.delivered != r.Received || sum.dropped != 0 {
		t.Fatalf("%d ledgers adding to %+v; sent %d, the sinks received %d", procs, sum, r.Sent, r.Received)
	}
}

// An upgrade while every target is down and the lines wait in the spool:
// the old process leaves them spooled, the new one replays and delivers
// them, once; its ledger counts them received again, as replayed, so
// that over both ledgers received - replayed is what the clients sent.
func TestUpgradeReplaysTheSpool(t *testing.T) {
	w := newWorld(t, 1)
	w.sinks[0].Kill(false)
	pidFile := filepath.Join(t.TempDir(), "ndlb.pid")
	p := startNDLB(t, "--target", w.targets(), "--pid-file", pidFile, "--spool-dir", t.TempDir(),
		"--deliver-timeout", "1s", "--backoff-max", "100ms")
	oldPID := readPID(t, pidFile, 0)
	const lines = 5000
	c := dial(t, p.addr)
	if _, err := linetest.Send(c, 0, 0, lines, 4096); err != nil {
		t.Fatal(err)
	}
	if err := endClean(c); err != nil { // every line read, and spooled
		t.Fatal(err)
	}
	if err := syscall.Kill(oldPID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	newPID := readPID(t, pidFile, oldPID)
	if l := p.waitLog("ledger", time.Minute); l["spooled"] != float64(lines) { // the old process's, at its exit
		t.Fatalf("the old process left %v lines spooled, want %d", l["spooled"], lines)
	}
	if err := w.sinks[0].Restart(); err != nil {
		t.Fatal(err)
	}
	w.waitLines(lines)
	if err := syscall.Kill(newPID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(time.Minute); code != 0 {
		t.Errorf("the old process exited %d", code)
	}
	if r := w.check(map[uint32]uint32{0: lines}); r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
	sum, procs := p.ledgers("default")
	if procs != 2 || sum.received-sum.replayed != lines || sum.replayed != lines || sum.spooled != lines || sum.delivered != lines {
		t.Fatalf("%d ledgers adding to %+v; sent %d", procs, sum, lines)
	}
}

// endClean half-closes conn and waits for ndlb to close it: a client that
// finished sees neither an error nor a reset.
func endClean(conn net.Conn) error {
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := io.Copy(io.Discard, conn); err != nil {
		return fmt.Errorf("after its last line: %w", err)
	}
	return nil
}

// An upgrade while clients open connections as fast as they can: none is
// refused or reset, and every line arrives.
func TestUpgradeRefusesNoConnection(t *testing.T) {
	w := newWorld(t, 1)
	pidFile := filepath.Join(t.TempDir(), "ndlb.pid")
	p := startNDLB(t, "--target", w.targets(), "--pid-file", pidFile)
	oldPID := readPID(t, pidFile, 0)
	stop := make(chan struct{})
	var opened atomic.Uint32
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	sent := map[uint32]uint32{}
	var mu sync.Mutex
	for g := range uint32(4) {
		wg.Go(func() {
			for i := uint32(0); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c := g<<20 | i
				conn, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
				if err != nil {
					errs <- fmt.Errorf("connection %d refused: %w", c, err)
					return
				}
				opened.Add(1)
				_, err = conn.Write(linetest.AppendLine(nil, c, 0))
				if err == nil {
					err = endClean(conn)
				}
				conn.Close()
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", c, err)
					return
				}
				mu.Lock()
				sent[c] = 1
				mu.Unlock()
			}
		})
	}
	waitOpened := func(n uint32) {
		deadline := time.Now().Add(time.Minute)
		for opened.Load() < n && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitOpened(200)
	if err := syscall.Kill(oldPID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	newPID := readPID(t, pidFile, oldPID)
	p.waitLog("upgrade: client connections handed over; this process delivers what it read and exits", time.Minute)
	at := opened.Load()
	waitOpened(at + 200)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := syscall.Kill(newPID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(time.Minute); code != 0 {
		t.Errorf("the old process exited %d", code)
	}
	r := w.check(sent)
	if r.Lost != 0 || r.Duplicated != 0 || r.Torn != 0 || len(sent) < 400 {
		t.Fatalf("%d connections: %s", len(sent), r)
	}
	if sum, procs := p.ledgers("default"); procs != 2 || sum.received != r.Sent || sum.dropped != 0 {
		t.Fatalf("%d ledgers adding to %+v; sent %d", procs, sum, r.Sent)
	}
}

// startCopy starts a copy of ndlb's binary from dir, which an upgrade test
// can replace, with a PID file there, to w's targets; it returns the
// process, the copy's path and the PID file's.
func startCopy(t *testing.T, dir string, w *world, args ...string) (p *proc, exe, pidFile string) {
	t.Helper()
	exe = filepath.Join(dir, "ndlb")
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	pidFile = filepath.Join(dir, "ndlb.pid")
	p = startCmd(t, exec.Command(exe, append([]string{"--addr", "127.0.0.1", "--port", "0", "--log-format", "json",
		"--target", w.targets(), "--pid-file", pidFile}, args...)...))
	return p, exe, pidFile
}

// An upgrade to a binary that exits at once: the old process logs why and
// serves on, with its PID file unchanged.
func TestUpgradeToABrokenBinaryKeepsServing(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, 1)
	p, exe, pidFile := startCopy(t, dir, w)
	oldPID := readPID(t, pidFile, 0)
	c := dial(t, p.addr)
	if _, err := linetest.Send(c, 0, 0, 100, 4096); err != nil {
		t.Fatal(err)
	}
	// The package manager replaces the binary; the new one is broken.
	broken := filepath.Join(dir, "broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho broken >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(broken, exe); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(oldPID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	failed := p.waitLog("upgrade failed; this process serves on", time.Minute)
	if !strings.Contains(fmt.Sprint(failed["err"]), "exited before it was ready") {
		t.Errorf("reason: %v", failed["err"])
	}
	// The same connection, and new ones, are served.
	if _, err := linetest.Send(c, 0, 100, 200, 4096); err != nil {
		t.Fatal(err)
	}
	c2 := dial(t, p.addr)
	if _, err := linetest.Send(c2, 1, 0, 100, 4096); err != nil {
		t.Fatal(err)
	}
	for _, conn := range []net.Conn{c, c2} {
		if err := endClean(conn); err != nil {
			t.Fatal(err)
		}
	}
	if pid := readPID(t, pidFile, 0); pid != oldPID {
		t.Fatalf("PID file names %d after a failed upgrade, want %d", pid, oldPID)
	}
	p.stopOK()
	if r := w.check(map[uint32]uint32{0: 200, 1: 100}); r.Lost != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PID file left behind at exit: %v", err)
	}
}

// An upgrade to a wrapper script that starts a process and is never
// ready: when the upgrade gives up, it ends the processes the script
// started too, which would otherwise hold the inherited sockets.
func TestFailedUpgradeLeavesNoProcessBehind(t *testing.T) {
	dir := t.TempDir()
	w := newWorld(t, 1)
	p, exe, pidFile := startCopy(t, dir, w, "--upgrade-timeout", "2s")
	oldPID := readPID(t, pidFile, 0)
	started := filepath.Join(dir, "started")
	wrapper := filepath.Join(dir, "wrapper")
	script := fmt.Sprintf("#!/bin/sh\nsleep 600 &\necho $! > %s\nwait\n", started)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(wrapper, exe); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(oldPID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	failed := p.waitLog("upgrade failed; this process serves on", time.Minute)
	if !strings.Contains(fmt.Sprint(failed["err"]), "not ready within") {
		t.Errorf("reason: %v", failed["err"])
	}
	pid := readPID(t, started, 0)
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("the wrapper's process %d outlived the failed upgrade", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c := dial(t, p.addr)
	if _, err := linetest.Send(c, 0, 0, 100, 4096); err != nil {
		t.Fatal(err)
	}
	if err := endClean(c); err != nil {
		t.Fatal(err)
	}
	p.stopOK()
	if r := w.check(map[uint32]uint32{0: 100}); r.Lost != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
}

// alive reports whether process pid runs (a zombie waiting for a reaper
// does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, ok := strings.Cut(string(b), ") ")
	return ok && !strings.HasPrefix(rest, "Z")
}

// The systemd unit in deploy/ runs flags ndlb has, reloads by upgrading,
// and reads the PID file ndlb writes.
func TestSystemdUnit(t *testing.T) {
	unit, err := os.ReadFile("../deploy/ndlb.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, line := range strings.Split(string(unit), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = v
		}
	}
	help, err := exec.Command(bin, "--help").Output()
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Fields(keys["ExecStart"])
	pid := ""
	for i, a := range args[1:] {
		if strings.HasPrefix(a, "--") && !strings.Contains(string(help), a+" ") {
			t.Errorf("ExecStart uses %s, which ndlb does not have", a)
		}
		if a == "--pid-file" {
			pid = args[i+2]
		}
	}
	if pid == "" || keys["PIDFile"] != pid {
		t.Errorf("PIDFile=%s, --pid-file %s", keys["PIDFile"], pid)
	}
	if !strings.Contains(keys["ExecReload"], "-USR2") {
		t.Errorf("ExecReload=%s does not upgrade", keys["ExecReload"])
	}
	for _, k := range []string{"NoNewPrivileges", "ProtectSystem", "DynamicUser", "RestrictAddressFamilies", "SystemCallFilter"} {
		if keys[k] == "" {
			t.Errorf("the unit lacks %s", k)
		}
	}
}

// An upgrade while every target is down and a client is held back (its
// reader waits for room in the queue, so it cannot move): the hand-over
// waits for it at most --upgrade-timeout, and the old process keeps and
// drains it, its ledger closing. A SIGTERM during the upgrade is acted on
// at once, not taken later for a second signal.
func TestUpgradeWhileAClientIsHeldBack(t *testing.T) {
	for _, term := range []bool{false, true} {
		t.Run(fmt.Sprint("sigterm=", term), func(t *testing.T) {
			w := newWorld(t, 1)
			w.sinks[0].Kill(false)
			timeout := "1s"
			if term {
				timeout = "2m" // the SIGTERM, not the timeout, ends the wait
			}
			pidFile := filepath.Join(t.TempDir(), "ndlb.pid")
			p := startNDLB(t, "--target", w.targets(), "--pid-file", pidFile, "--admin", "127.0.0.1:0",
				"--buffer-bytes", "2MiB", "--max-line-bytes", "64KiB", "--client-buffer-bytes", "1MiB", "--upgrade-timeout", timeout,
				"--drain-timeout", "1s", "--deliver-timeout", "1s", "--backoff-max", "100ms")
			api := newAdminAPI(t, p, "")
			oldPID := readPID(t, pidFile, 0)
			c := dial(t, p.addr)
			sending := make(chan error, 1)
			go func() { // far more than ndlb holds: it is held back
				_, err := linetest.Send(c, 1, 0, 400000, 64<<10)
				sending <- err
			}()
			// Held back: what ndlb received stops growing.
			last := uint64(0)
			for still := 0; still < 3; time.Sleep(100 * time.Millisecond) {
				var ls []struct {
					Ledger struct {
						Received uint64 `json:"received"`
					} `json:"ledger"`
				}
				api.call("GET", "/api/v1/listeners", &ls)
				if n := ls[0].Ledger.Received; n > 0 && n == last {
					still++
				} else {
					still, last = 0, n
				}
			}
			if err := syscall.Kill(oldPID, syscall.SIGUSR2); err != nil {
				t.Fatal(err)
			}
			newPID := readPID(t, pidFile, oldPID)
			t.Cleanup(func() { syscall.Kill(newPID, syscall.SIGKILL) })
			if term {
				p.waitLog("upgrade: the new process is ready; handing over", 30*time.Second)
				if err := syscall.Kill(oldPID, syscall.SIGTERM); err != nil {
					t.Fatal(err)
				}
			}
			p.waitLog("upgrade: client connections waiting for room in the queue were not handed over; this process drains them", 30*time.Second)
			l := p.waitLog("ledger", 30*time.Second) // the old process's, at its exit
			if len(p.findLogs("second signal: exiting without finishing the shutdown")) != 0 {
				t.Fatal("the SIGTERM was taken for a second signal")
			}
			if len(p.findLogs("ignoring NDLB_UPGRADE: no setting reads it")) != 0 {
				t.Fatal("the new process warned about its own variable")
			}
			received, _ := l["received"].(float64)
			delivered, _ := l["delivered"].(float64)
			dropped, _ := l["dropped"].(float64)
			if received == 0 || received != delivered+dropped || l["in_flight"] != float64(0) {
				t.Fatalf("the old process's ledger %v", l)
			}
			select {
			case <-sending: // the old process closed the client at its drain
			case <-time.After(30 * time.Second):
				t.Fatal("the held-back client was not told by the old process's drain that its connection ended")
			}
			if err := syscall.Kill(newPID, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			p.wait(time.Minute)
		})
	}
}

// Two listeners upgrade at once: one whose client is held back (its only
// target down, its queue full) does not spend the other's time, whose
// client, idle in the middle of a line, moves to the new process at once
// and carries on there past the old process's drain.
func TestUpgradeHeldBackListenerDoesNotDelayTheOthers(t *testing.T) {
	dir := t.TempDir()
	down, live := newWorld(t, 1), newWorld(t, 1)
	down.sinks[0].Kill(false)
	pidFile := filepath.Join(dir, "ndlb.pid")
	path := writeConfig(t, dir, fmt.Sprintf(`log-format = "json"
pid-file = %q
upgrade-timeout = "5s"
[[listener]]
name = "held"
addr = "127.0.0.1"
port = 0
target = [%q]
buffer-bytes = "2MiB"
max-line-bytes = "64KiB"
client-buffer-bytes = "1MiB"
drain-timeout = "1s"
deliver-timeout = "1s"
[[listener]]
name = "live"
addr = "127.0.0.1"
port = 0
target = [%q]
drain-timeout = "1s"
`, pidFile, down.sinks[0].Addr(), live.sinks[0].Addr()))
	p := startCmd(t, command(bin, "--config", path))
	addrs := listening(t, p, 2)
	oldPID := readPID(t, pidFile, 0)
	held := dial(t, addrs["held"])
	go linetest.Send(held, 1, 0, 400000, 64<<10) // far more than ndlb holds: held back
	c := dial(t, addrs["live"])
	line := linetest.AppendLine(nil, 2, 1)
	if _, err := c.Write(append(linetest.AppendLine(nil, 2, 0), line[:9]...)); err != nil {
		t.Fatal(err)
	}
	live.waitLines(1)
	if err := syscall.Kill(oldPID, syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	newPID := readPID(t, pidFile, oldPID)
	t.Cleanup(func() { syscall.Kill(newPID, syscall.SIGKILL) })
	l := p.waitLog("upgrade: client connections handed over; this process delivers what it read and exits", 30*time.Second)
	if l["connections"] != float64(1) {
		t.Fatalf("handed over %v connections, want the live one", l["connections"])
	}
	p.waitLog("ledger", 30*time.Second) // the old process is done: past its drain
	if _, err := c.Write(append(line[9:], linetest.AppendLine(nil, 2, 2)...)); err != nil {
		t.Fatal(err)
	}
	live.waitLines(3)
	if err := endClean(c); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(newPID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.wait(time.Minute)
	if r := live.check(map[uint32]uint32{2: 3}); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatal(r)
	}
}
