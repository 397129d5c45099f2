//go:build linux

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// inNetns marks the copy of this test binary that runs inside its own network
// namespace.
const inNetns = "NDLB_TEST_IN_NETNS"

// A target that becomes a black hole (its packets silently dropped, no RST,
// no FIN) is detected through TCP_USER_TIMEOUT within seconds, and its
// unacknowledged lines are delivered elsewhere.
//
// The black hole is a route: the target listens on 127.0.0.2, and mid-stream
// a more specific "blackhole 127.0.0.2" route goes into the local table, so
// every packet to it is silently discarded. Changing routes needs root and
// must not touch the host, so the test runs itself again in a fresh network
// namespace and changes only that namespace's table.
func TestBlackHoledTargetDetectedInSeconds(t *testing.T) {
	if os.Getenv(inNetns) == "" {
		if os.Geteuid() != 0 {
			t.Skip("needs root for a private network namespace (CI runs as root)")
		}
		if _, err := exec.LookPath("ip"); err != nil {
			t.Fatal("ip (iproute2) is missing; .ci/run installs it")
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestBlackHoledTargetDetectedInSeconds$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), inNetns+"=1", "NDLB_TEST_BIN="+bin)
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
		out, err := cmd.CombinedOutput()
		t.Logf("in a private network namespace:\n%s", out)
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("the namespaced run failed: %v", err)
		}
		return
	}
	run(t, "ip", "link", "set", "lo", "up")

	w := &world{t: t, ledger: linetest.NewLedger()}
	for _, addr := range []string{"127.0.0.2:0", "127.0.0.1:0"} {
		s, err := linetest.NewSink(addr, w.ledger)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		w.sinks = append(w.sinks, s)
	}
	p := startNDLB(t, "--target", w.targets(), "--tcp-user-timeout", "2s", "--write-timeout", "60s", "--connect-timeout", "1s")
	var holed time.Time
	faults := make(chan struct{})
	go func() {
		defer close(faults)
		w.untilLines(40000) // mid-stream, by what was delivered
		// Every packet to the first target is discarded from now on.
		holed = time.Now()
		run(t, "ip", "route", "add", "blackhole", "127.0.0.2/32", "table", "local")
	}()
	sent, err := clients(4, 60000, func(c uint32) error {
		conn, err := dialClient(p.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		return linetest.SendPaced(conn, c, 0, 60000, 6*time.Second)
	})
	if err != nil {
		t.Fatal(err)
	}
	<-faults
	down := p.waitLog("target down: connection failed", 20*time.Second)
	if down["conn"] == nil || down["worker"] == nil {
		t.Errorf("the target down line lacks conn or worker: %v", down)
	}
	at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(down["time"]))
	if err != nil || holed.IsZero() {
		t.Fatalf("cannot time the detection: log time %v (%v), fault at %v", down["time"], err, holed)
	}
	detected := at.Sub(holed)
	t.Logf("black hole detected after %s (TCP_USER_TIMEOUT 2s): %v", detected.Round(time.Millisecond), down["err"])
	if detected > 8*time.Second {
		t.Errorf("black hole took %s to detect", detected)
	}
	p.stopOK()
	// The black-holed sink is alive and read everything its kernel acked;
	// its connections are stuck, so only the other sink is waited for.
	if !w.sinks[1].WaitDrained(10 * time.Second) {
		t.Fatal("the healthy sink did not finish")
	}
	r := w.ledger.Check(sent)
	t.Log(r)
	if r.Lost != 0 || r.Torn != 0 {
		t.Fatal(r)
	}
}

func run(t *testing.T, name string, args ...string) {
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
