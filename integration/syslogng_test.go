package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// syslogNGRoot is where scripts/test.sh unpacks syslog-ng's Debian package
// when syslog-ng is not installed: Debian's syslog-ng-core and rsyslog
// conflict, and the rsyslog test needs rsyslog installed.
const syslogNGRoot = "/opt/ndlb-test/syslog-ng"

// syslogNG returns how to run syslog-ng in the foreground with conf: the
// installed one, else the one unpacked under syslogNGRoot.
func syslogNG(t *testing.T, dir, conf string) *exec.Cmd {
	t.Helper()
	args := []string{"-F", "--no-caps", "-f", conf, "-R", filepath.Join(dir, "persist"), "-p", filepath.Join(dir, "pid"), "-c", filepath.Join(dir, "ctl")}
	if path, err := exec.LookPath("syslog-ng"); err == nil {
		return exec.Command(path, args...)
	}
	path := filepath.Join(syslogNGRoot, "usr/sbin/syslog-ng")
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("syslog-ng is neither installed nor unpacked in %s (scripts/test.sh unpacks it)", syslogNGRoot)
	}
	lib := filepath.Join(syslogNGRoot, "usr/lib/syslog-ng")
	mods, _ := filepath.Glob(filepath.Join(lib, "3.*"))
	if len(mods) == 0 {
		t.Fatalf("no syslog-ng modules under %s", lib)
	}
	cmd := exec.Command(path, append(args, "--module-path="+mods[0])...)
	cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+lib)
	return cmd
}

// syslog-ng, a second shipper nobody here wrote, forwards through ndlb in
// the two framings it offers: lines with its network() driver, and RFC
// 5424 octet-counted frames holding newlines with its syslog() driver.
// Every message arrives once and whole, and the ledgers agree with the
// sinks.
func TestSyslogNG(t *testing.T) {
	w := newWorld(t, 2)
	lines := startNDLB(t, "--target", w.targets())
	a, b := newOctetSink(t), newOctetSink(t)
	frames := startNDLB(t, "--framing", "octet-counted", "--target", a.ln.Addr().String()+","+b.ln.Addr().String())
	_, linesPort, _ := net.SplitHostPort(lines.addr)
	_, framesPort, _ := net.SplitHostPort(frames.addr)
	dir := t.TempDir()
	inLines, inFrames := freePort(t), freePort(t)
	// no-parse keeps each line whole in $MSG; the syslog() source reads
	// octet-counted frames, and the syslog() destination writes them.
	conf := fmt.Sprintf(`@version: 3.38
options { stats_freq(0); log_msg_size(65536); flush_lines(100); };
source lines_in { network(ip("127.0.0.1") port(%s) transport("tcp") flags(no-parse) log_msg_size(65536)); };
destination lines_out { network("127.0.0.1" port(%s) transport("tcp") template("$MSG\n")); };
log { source(lines_in); destination(lines_out); };
source frames_in { syslog(ip("127.0.0.1") port(%s) transport("tcp")); };
destination frames_out { syslog("127.0.0.1" port(%s) transport("tcp")); };
log { source(frames_in); destination(frames_out); };
`, inLines, linesPort, inFrames, framesPort)
	path := filepath.Join(dir, "syslog-ng.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	stop := startPeer(t, "syslog-ng", syslogNG(t, dir, path))
	dialIn := func(port string) net.Conn { return dialPeer(t, nil, "127.0.0.1:"+port) }

	// Lines: two connections of numbered lines.
	const perClient = 3000
	sent := map[uint32]uint32{}
	for c := uint32(1); c <= 2; c++ {
		if _, err := linetest.Send(dialIn(inLines), c, 0, perClient, 16<<10); err != nil {
			t.Fatal(err)
		}
		sent[c] = perClient
	}

	// Frames: stack traces, newlines and tabs inside.
	const n = 1000
	body := func(i int) string {
		return fmt.Sprintf("event %d failed\nTraceback (most recent call last):\n  File \"app.py\", line %d\n\tValueError: #%d", i, i%97, i)
	}
	fw := bufio.NewWriter(dialIn(inFrames))
	for i := range n {
		msg := fmt.Sprintf("<11>1 2026-12-02T10:00:00.000Z host app %d - - %s", i, body(i))
		fmt.Fprintf(fw, "%d %s", len(msg), msg)
	}
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}

	w.waitLines(2 * perClient)
	var got []string
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ma, _ := a.messages()
		mb, _ := b.messages()
		if got = append(ma, mb...); len(got) >= n {
			break
		}
	}
	// syslog-ng rewrites the header (its own timestamp and host) and
	// ends each frame with a newline; the message between is what was
	// sent.
	index := map[string]int{}
	for i := range n {
		index[body(i)] = i
	}
	seen := map[int]int{}
	for _, m := range got {
		if at := strings.Index(m, " event "); at >= 0 {
			if i, ok := index[strings.TrimSuffix(m[at+1:], "\n")]; ok {
				seen[i]++
			}
		}
	}
	for i := range n {
		if seen[i] != 1 {
			t.Fatalf("frame %d arrived %d times (of %d frames; a sample: %q)", i, seen[i], len(got), got[:min(len(got), 2)])
		}
	}
	if _, ta := a.messages(); ta != 0 {
		t.Fatalf("torn frames: %d", ta)
	}
	if _, tb := b.messages(); tb != 0 {
		t.Fatalf("torn frames: %d", tb)
	}

	stop() // its connections to ndlb end, so the drains are quick
	lines.stopOK()
	frames.stopOK()
	if r := w.check(sent); r.Lost != 0 || r.Torn != 0 || r.Duplicated != 0 {
		t.Fatalf("lines through syslog-ng: %v", r)
	}
	w.checkLedger(lines, true)
	if g := frames.ledger("default"); g.delivered != n {
		t.Fatalf("frames ledger %+v, want %d delivered", g, n)
	}
}
