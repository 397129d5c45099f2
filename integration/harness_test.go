package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/internal/linetest"
)

// bin is ndlb built for these tests (with -race when the tests have it);
// staticBin is built the way the Dockerfile builds it.
var bin, staticBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ndlb-integration")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin, staticBin = filepath.Join(dir, "ndlb"), filepath.Join(dir, "ndlb-static")
	var code int
	if b := os.Getenv("NDLB_TEST_BIN"); b != "" {
		bin = b // a re-run of this binary (in a network namespace) reuses the parent's build
	} else if code = build(bin, raceEnabled, nil); code == 0 {
		code = build(staticBin, false, []string{"CGO_ENABLED=0"})
	}
	exit := func(code int) {
		os.RemoveAll(dir) // the builds: 40 MB per run
		os.Exit(code)
	}
	if code == 0 {
		goleak.VerifyTestMain(m, goleak.Cleanup(exit))
	}
	exit(code)
}

// build compiles cmd/ndlb; the static build uses the Dockerfile's flags.
func build(out string, race bool, env []string) int {
	args := []string{"build", "-o", out, "-trimpath", "-ldflags=-s -w -X main.buildVersion=it"}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "../cmd/ndlb")...)
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building ndlb: %v\n%s", err, b)
		return 1
	}
	return 0
}

// proc is a running ndlb.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string

	mu     sync.Mutex
	logs   []map[string]any // guarded by mu
	stderr bytes.Buffer     // guarded by mu
	logged chan struct{}    // signalled on every log line
	done   chan struct{}    // closed when the process has exited
	code   int              // exit code, once done
}

// startNDLB runs ndlb on a free loopback port with JSON logs and waits until
// it listens.
func startNDLB(t *testing.T, args ...string) *proc {
	t.Helper()
	return startCmd(t, exec.Command(bin, append([]string{"--addr", "127.0.0.1", "--port", "0", "--log-format", "json"}, args...)...))
}

// testBudget bounds one integration test: past it the test fails and its
// ndlb processes are killed, which unblocks every wait on them and on their
// sockets, so a hang costs one test, not the package's results.
const testBudget = 4 * time.Minute

func startCmd(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, cmd: cmd, logged: make(chan struct{}, 1), done: make(chan struct{})}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go p.readLogs(stderr)
	watchdog := time.AfterFunc(testBudget, func() {
		t.Errorf("%s ran past its %s budget: ndlb (pid %d) killed", t.Name(), testBudget, cmd.Process.Pid)
		cmd.Process.Kill()
	})
	t.Cleanup(func() {
		watchdog.Stop()
		select {
		case <-p.done:
		default:
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			p.mu.Lock()
			t.Logf("ndlb stderr (last 4 KiB):\n%s", tail(p.stderr.Bytes(), 4096))
			// A race report scrolls out of the tail: show it whole.
			if i := bytes.Index(p.stderr.Bytes(), []byte("WARNING: DATA RACE")); i >= 0 {
				t.Logf("RACE:\n%s", p.stderr.Bytes()[i:min(len(p.stderr.Bytes()), i+8000)])
			}
			p.mu.Unlock()
		}
	})
	l := p.waitLog("listening", 20*time.Second)
	p.addr, _ = l["addr"].(string)
	return p
}

func tail(b []byte, n int) []byte { return b[max(0, len(b)-n):] }

func (p *proc) readLogs(r interface{ Read([]byte) (int, error) }) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		_ = json.Unmarshal(sc.Bytes(), &m)
		p.mu.Lock()
		p.stderr.Write(sc.Bytes())
		p.stderr.WriteByte('\n')
		if m != nil {
			p.logs = append(p.logs, m)
		}
		p.mu.Unlock()
		select {
		case p.logged <- struct{}{}:
		default:
		}
	}
	err := p.cmd.Wait()
	p.code = 0
	if ee, ok := err.(*exec.ExitError); ok {
		p.code = ee.ExitCode()
	}
	close(p.done)
}

// findLogs returns the log lines with message msg.
func (p *proc) findLogs(msg string) []map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []map[string]any
	for _, l := range p.logs {
		if l["msg"] == msg {
			out = append(out, l)
		}
	}
	return out
}

// waitLog waits for a log line with message msg. Call it from the test's
// goroutine; others use awaitLog.
func (p *proc) waitLog(msg string, timeout time.Duration) map[string]any {
	p.t.Helper()
	l, err := p.awaitLog(msg, timeout)
	if err != nil {
		p.t.Fatal(err)
	}
	return l
}

// awaitLog waits for a log line with message msg and returns an error
// rather than failing the test, so any goroutine may call it.
func (p *proc) awaitLog(msg string, timeout time.Duration) (map[string]any, error) {
	ls, err := p.awaitLogs(msg, 1, timeout)
	if err != nil {
		return nil, err
	}
	return ls[0], nil
}

// waitLogs waits for n log lines with message msg and returns them. Call
// it from the test's goroutine.
func (p *proc) waitLogs(msg string, n int, timeout time.Duration) []map[string]any {
	p.t.Helper()
	ls, err := p.awaitLogs(msg, n, timeout)
	if err != nil {
		p.t.Fatal(err)
	}
	return ls
}

// awaitLogs is waitLogs returning an error rather than failing the test.
func (p *proc) awaitLogs(msg string, n int, timeout time.Duration) ([]map[string]any, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if ls := p.findLogs(msg); len(ls) >= n {
			return ls, nil
		}
		select {
		case <-p.logged:
		case <-p.done:
			if ls := p.findLogs(msg); len(ls) >= n {
				return ls, nil
			}
			return nil, fmt.Errorf("ndlb exited (code %d) before logging %q %d times", p.code, msg, n)
		case <-deadline.C:
			return nil, fmt.Errorf("%d of %d %q log lines in %s", len(p.findLogs(msg)), n, msg, timeout)
		}
	}
}

// stop sends sig and waits for the exit code.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) int {
	p.t.Helper()
	_ = p.cmd.Process.Signal(sig)
	return p.wait(timeout)
}

// stopOK sends SIGTERM and fails the test unless ndlb exits 0.
func (p *proc) stopOK() {
	p.t.Helper()
	if code := p.stop(syscall.SIGTERM, 30*time.Second); code != 0 {
		p.t.Fatalf("exit code %d, want 0", code)
	}
}

func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		p.t.Fatalf("ndlb did not exit within %s", timeout)
		return -1
	}
}

// summary returns a counter from the summary log line; a missing key fails
// the test (a renamed key must not read as 0).
func (p *proc) summary(key string) uint64 {
	p.t.Helper()
	ls := p.findLogs("summary")
	if len(ls) == 0 {
		p.t.Fatal("no summary log line")
	}
	v, ok := ls[0][key].(float64)
	if !ok {
		p.t.Fatalf("the summary has no %q", key)
	}
	return uint64(v)
}

// ledger is a listener's account from the "ledger" log line ndlb writes at
// exit, over the listener's whole life.
type ledger struct {
	received, delivered, dropped, inFlight uint64
	spooled, replayed                      uint64 // left in the spool at exit; found there at open
	byReason                               map[string]uint64
}

// ledger returns the exit ledger of listener name ("default" without a
// config file) and fails the test unless it closes: received = delivered +
// dropped + spooled, nothing in flight, and the reasons add up.
func (p *proc) ledger(name string) ledger {
	p.t.Helper()
	for _, l := range p.findLogs("ledger") {
		if l["listener"] != name {
			continue
		}
		num := func(k string) uint64 {
			v, ok := l[k].(float64)
			if !ok {
				p.t.Fatalf("ledger line lacks %q: %v", k, l)
			}
			return uint64(v)
		}
		g := ledger{received: num("received"), delivered: num("delivered"), dropped: num("dropped"),
			inFlight: num("in_flight"), spooled: num("spooled"), replayed: num("replayed"), byReason: map[string]uint64{}}
		var sum uint64
		for _, r := range []string{"oversize", "incomplete", "memory", "shutdown", "binary", "unrouted", "spool_full", "spool_lost"} {
			g.byReason[r] = num("dropped_" + r)
			sum += g.byReason[r]
		}
		if g.received != g.delivered+g.dropped+g.spooled || g.inFlight != 0 || sum != g.dropped {
			p.t.Fatalf("ledger of %q does not close: %+v", name, g)
		}
		return g
	}
	p.t.Fatalf("no ledger line for listener %q", name)
	return ledger{}
}

// checkLedger asserts the exit ledger closes and that what ndlb counts as
// delivered is what the sinks received, when no fault can make the two
// differ (a target reset after its kernel acknowledged data, a duplicate).
func (w *world) checkLedger(p *proc, exact bool) ledger {
	w.t.Helper()
	g := p.ledger("default")
	var got uint64
	for _, s := range w.sinks {
		got += s.Lines()
	}
	if exact && g.delivered != got {
		w.t.Fatalf("ndlb counted %d lines delivered, the sinks received %d", g.delivered, got)
	}
	for _, s := range w.sinks {
		if n := s.TornEOF(); n != 0 {
			w.t.Fatalf("sink %s saw %d fragments followed by a clean end of stream", s.Addr(), n)
		}
	}
	return g
}

// vmHWM is the process's peak resident set size in bytes.
func (p *proc) vmHWM() uint64 { return p.status("VmHWM:") }

// vmRSS is the process's resident set size now, in bytes.
func (p *proc) vmRSS() uint64 { return p.status("VmRSS:") }

// status reads a size in kB from /proc/PID/status.
func (p *proc) status(key string) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == key {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// world is a set of sinks sharing one ledger.
type world struct {
	t      *testing.T
	ledger *linetest.Ledger
	sinks  []*linetest.Sink
}

func newWorld(t *testing.T, n int) *world {
	t.Helper()
	w := &world{t: t, ledger: linetest.NewLedger()}
	for range n {
		s, err := linetest.NewSink("127.0.0.1:0", w.ledger)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		w.sinks = append(w.sinks, s)
	}
	return w
}

func (w *world) targets() string {
	var a []string
	for _, s := range w.sinks {
		a = append(a, s.Addr())
	}
	return strings.Join(a, ",")
}

// drained waits for the sinks to read everything ndlb sent before it closed
// its connections.
func (w *world) drained() {
	w.t.Helper()
	for _, s := range w.sinks {
		if !s.WaitDrained(10 * time.Second) {
			w.t.Fatalf("sink %s still has open connections", s.Addr())
		}
	}
}

// lines is what the sinks have counted so far.
func (w *world) lines() uint64 {
	var n uint64
	for _, s := range w.sinks {
		n += s.Lines()
	}
	return n
}

// untilLines waits until the sinks have counted n lines (at most 60 s): a
// fault injected then lands mid-stream by what was delivered, not by the
// clock. It returns false on timeout; any goroutine may call it.
func (w *world) untilLines(n uint64) bool {
	deadline := time.Now().Add(60 * time.Second)
	for w.lines() < n {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// waitLines is untilLines for the test's goroutine: it fails the test on
// timeout.
func (w *world) waitLines(n uint64) {
	w.t.Helper()
	if !w.untilLines(n) {
		w.t.Fatalf("%d lines arrived, want %d", w.lines(), n)
	}
}

// check compares what the sinks got with what was sent.
func (w *world) check(sent map[uint32]uint32) linetest.Report {
	w.t.Helper()
	w.drained()
	r := w.ledger.Check(sent)
	w.t.Log(r)
	return r
}

// dial connects to addr and closes the connection when the test ends. It
// fails the test, so call it from the test's goroutine only; clients use
// dialClient.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := dialClient(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialClient connects to addr within 5 s; any goroutine may call it.
func dialClient(addr string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return c, nil
}

// clientsBudget bounds a clients() run.
const clientsBudget = 2 * time.Minute

// clients runs n clients, each sending lines 0..lines-1 through send, and
// returns what was sent and the first error. send runs on its own
// goroutine: it must return errors, never fail the test. Clients still
// running after clientsBudget are reported as an error (the test then
// ends, and its cleanup closes what they wait on).
func clients(n int, lines uint32, send func(c uint32) error) (map[uint32]uint32, error) {
	sent := make(map[uint32]uint32, n)
	errs := make(chan error, n)
	for c := range uint32(n) {
		sent[c] = lines
		go func() { errs <- send(c) }()
	}
	var first error
	deadline := time.NewTimer(clientsBudget)
	defer deadline.Stop()
	for range n {
		select {
		case err := <-errs:
			if err != nil && first == nil {
				first = err
			}
		case <-deadline.C:
			return sent, fmt.Errorf("clients still sending after %s", clientsBudget)
		}
	}
	return sent, first
}

// freePort returns a loopback port that was free a moment ago, for the few
// tests that must name a port in advance (the healthcheck reads NDLB_PORT).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// pacedClients starts n clients that each send lines to addr evenly over
// d, in the background. wait returns what was sent and the first error.
func pacedClients(addr string, n int, lines uint32, d time.Duration) (wait func() (map[uint32]uint32, error)) {
	var sent map[uint32]uint32
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		sent, err = clients(n, lines, func(c uint32) error {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			return linetest.SendPaced(conn, c, 0, lines, d)
		})
	}()
	return func() (map[uint32]uint32, error) { <-done; return sent, err }
}
