package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// octetSink is a receiver of octet-counted frames (RFC 6587).
type octetSink struct {
	ln   net.Listener
	mu   sync.Mutex
	msgs []string
	torn int
	wg   sync.WaitGroup
}

func newOctetSink(t *testing.T) *octetSink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &octetSink{ln: ln}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() { defer c.Close(); s.read(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *octetSink) read(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		head, err := r.ReadString(' ')
		if err != nil {
			if head != "" {
				s.mu.Lock()
				s.torn++
				s.mu.Unlock()
			}
			return
		}
		n, err := strconv.Atoi(strings.TrimSuffix(head, " "))
		msg := make([]byte, max(n, 0))
		if err == nil {
			_, err = io.ReadFull(r, msg)
		}
		s.mu.Lock()
		if err != nil {
			s.torn++
		} else {
			s.msgs = append(s.msgs, string(msg))
		}
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (s *octetSink) messages() ([]string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.msgs...), s.torn
}

// rsyslog, a shipper nobody here wrote, forwards syslog messages that hold
// newlines (stack traces) with TCP_Framing="octet-counted" through ndlb to
// two receivers: every message arrives once, intact, newlines and all.
func TestRsyslogOctetCounted(t *testing.T) {
	rsyslogd, err := exec.LookPath("rsyslogd")
	if err != nil {
		t.Fatal("rsyslogd is not installed (scripts/test.sh installs it)")
	}
	a, b := newOctetSink(t), newOctetSink(t)
	p := startNDLB(t, "--framing", "octet-counted", "--target", a.ln.Addr().String()+","+b.ln.Addr().String())
	_, ndlbPort, _ := net.SplitHostPort(p.addr)
	dir := t.TempDir()
	in := freePort(t)
	conf := fmt.Sprintf(`global(workDirectory=%q parser.escapeControlCharactersOnReceive="off" maxMessageSize="64k")
module(load="imtcp")
template(name="msgonly" type="string" string="%%msg%%")
ruleset(name="fwd") {
  action(type="omfwd" target="127.0.0.1" port=%q protocol="tcp" TCP_Framing="octet-counted" template="msgonly"
         action.resumeRetryCount="-1" action.resumeInterval="1")
}
input(type="imtcp" address="127.0.0.1" port=%q ruleset="fwd")
`, dir, ndlbPort, in)
	path := filepath.Join(dir, "rsyslog.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	stop := startPeer(t, "rsyslogd", exec.Command(rsyslogd, "-n", "-f", path, "-i", filepath.Join(dir, "rsyslog.pid")))
	c := dialPeer(t, nil, "127.0.0.1:"+in)
	const n = 2000
	body := func(i int) string {
		return fmt.Sprintf("event %d failed\nTraceback (most recent call last):\n  File \"app.py\", line %d\n\tValueError: #%d", i, i%97, i)
	}
	w := bufio.NewWriter(c)
	for i := range n {
		msg := fmt.Sprintf("<11>1 2026-12-02T10:00:00.000Z host app %d - - %s", i, body(i))
		fmt.Fprintf(w, "%d %s", len(msg), msg)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	deadline := time.Now().Add(60 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ma, _ := a.messages()
		mb, _ := b.messages()
		if got = append(ma, mb...); len(got) >= n {
			break
		}
	}
	seen := map[string]int{}
	for _, m := range got {
		seen[strings.TrimPrefix(m, " ")]++
	}
	for i := range n {
		if seen[body(i)] != 1 {
			t.Fatalf("message %d arrived %d times (of %d messages; a sample: %q)", i, seen[body(i)], len(got), got[:min(len(got), 2)])
		}
	}
	_, ta := a.messages()
	_, tb := b.messages()
	ma, _ := a.messages()
	mb, _ := b.messages()
	// Workers pull batches from one queue, so under this light load one
	// worker may take every batch: the spread is logged, not required.
	if ta+tb != 0 {
		t.Fatalf("torn %d+%d; spread %d/%d", ta, tb, len(ma), len(mb))
	}
	t.Logf("spread %d/%d", len(ma), len(mb))
	c.Close()
	stop() // its connection to ndlb ends, so ndlb's drain is quick
	p.stopOK()
	if g := p.ledger("default"); g.delivered != n {
		t.Fatalf("ledger %+v", g)
	}
}
