package integration

import (
	"net"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startPeer runs cmd, a real peer (a shipper such as rsyslog, a balancer
// such as HAProxy), for the test. Its output is kept and shown when the
// test fails. stop ends it (SIGTERM, then its exit), once; the test's
// cleanup calls it too.
func startPeer(t *testing.T, name string, cmd *exec.Cmd) (stop func()) {
	t.Helper()
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return stop
}

// dialPeer connects to addr (through d, when not nil), waiting up to 20 s
// for the peer to listen; the connection is closed when the test ends.
func dialPeer(t *testing.T, d *net.Dialer, addr string) net.Conn {
	t.Helper()
	if d == nil {
		d = &net.Dialer{Timeout: 5 * time.Second}
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := d.Dial("tcp", addr)
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s: %v", addr, err)
		}
	}
}
