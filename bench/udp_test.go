package bench

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// UDP passthrough: small datagrams, request/response, straight to an echo
// backend, through ndlb --passthrough --udp, and through nginx's stream
// proxy (listen ... udp) when it is installed (apt-get install nginx
// libnginx-mod-stream), one after the other in each iteration. Each of 16
// clients (its own address and port, so its own flow) sends a datagram and
// waits for the answer, udpExchanges times.
//
//	go test ./bench -run '^$' -bench UDPPassthrough -benchtime 1x -count 3

// udpExchanges is each client's round trips per size and peer.
const udpExchanges = 4000

func BenchmarkUDPPassthrough(b *testing.B) {
	bin := buildNDLB(b)
	echo := newUDPEcho(b)
	defer echo.Close()
	peers := []peer{{name: "direct", addr: echo.LocalAddr().String(), stop: func() {}}}
	port := udpFreePort(b)
	peers = append(peers, startUDPProxy(b, "ndlb", port, exec.Command(bin, "--passthrough", "--udp", "--addr", "127.0.0.1",
		"--port", port, "--target", echo.LocalAddr().String(), "--log-level", "warn")))
	if p, ok := startNginxUDP(b, echo.LocalAddr().String()); ok {
		peers = append(peers, p)
	}
	defer stopAll(peers)
	round := 0
	for b.Loop() {
		for _, size := range []int{64, 512} {
			rate, cpu := map[string]float64{}, map[string]float64{}
			order := slices.Clone(peers)
			if round++; round%2 == 0 {
				slices.Reverse(order[1:]) // neither proxy always runs first
			}
			for _, p := range order {
				before := cpuTree(p.pid)
				n, lost, elapsed, err := udpReqResp(p.addr, 16, udpExchanges, size)
				if err != nil {
					b.Fatalf("%s: %v", p.name, err)
				}
				if lost > n/100 {
					b.Fatalf("%s: %d of %d datagrams lost", p.name, lost, n)
				}
				rate[p.name] = float64(n) / elapsed.Seconds()
				if p.pid != 0 {
					cpu[p.name] = (cpuTree(p.pid) - before) / float64(n) * 1e6
				}
			}
			line := fmt.Sprintf("%d-byte datagrams, 16 clients request/response:", size)
			for _, p := range peers {
				line += fmt.Sprintf("  %s %.0f exchanges/s (%.2f of direct", p.name, rate[p.name], rate[p.name]/rate["direct"])
				if ng, ok := rate["nginx"]; ok && p.name == "ndlb" {
					line += fmt.Sprintf(", %.2f of nginx", rate[p.name]/ng)
				}
				line += ")"
				if c, ok := cpu[p.name]; ok {
					line += fmt.Sprintf(" %.1f CPU-µs/exchange", c)
				}
				b.ReportMetric(rate[p.name], fmt.Sprintf("%s-%dB-ex/s", p.name, size))
			}
			if ng, ok := cpu["nginx"]; ok {
				line += fmt.Sprintf("  (ndlb CPU per exchange %.2f of nginx's)", cpu["ndlb"]/ng)
			}
			b.Log(line)
		}
	}
	b.ReportMetric(0, "ns/op")
}

// newUDPEcho is an in-process backend that answers every datagram with
// itself, on two goroutines.
func newUDPEcho(b *testing.B) *net.UDPConn {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	for range 2 {
		go func() {
			buf := make([]byte, 64<<10)
			for {
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				_, _ = c.WriteToUDPAddrPort(buf[:n], from)
			}
		}()
	}
	return c
}

// udpFreePort is a loopback UDP port free a moment ago.
func udpFreePort(b *testing.B) string {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	return strconv.Itoa(c.LocalAddr().(*net.UDPAddr).Port)
}

// startUDPProxy runs cmd, which listens on port, and waits until a
// datagram sent through it comes back.
func startUDPProxy(b *testing.B, name, port string, cmd *exec.Cmd) peer {
	b.Helper()
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	addr := "127.0.0.1:" + port
	stop := stopper(cmd)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, _, _, err := udpReqResp(addr, 1, 1, 16); err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			b.Fatalf("%s does not answer on %s: %s", name, addr, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	return peer{name: name, addr: addr, pid: cmd.Process.Pid, stop: stop}
}

// startNginxUDP runs nginx's stream proxy in front of backend, as its
// documentation sets up UDP: a worker per core, reuseport, sessions that
// live until proxy_timeout (as ndlb's flows do until --udp-idle-timeout).
// ok is false when nginx or its stream module is not installed.
func startNginxUDP(b *testing.B, backend string) (peer, bool) {
	path, err := exec.LookPath("nginx")
	if err != nil {
		if _, err = os.Stat("/usr/sbin/nginx"); err != nil {
			return peer{}, false
		}
		path = "/usr/sbin/nginx"
	}
	module := ""
	for _, m := range []string{"/usr/lib/nginx/modules/ngx_stream_module.so", "/usr/share/nginx/modules/ngx_stream_module.so"} {
		if _, err := os.Stat(m); err == nil {
			module = "load_module " + m + ";"
		}
	}
	dir, port := b.TempDir(), udpFreePort(b)
	conf := fmt.Sprintf(`%s
daemon off;
master_process on;
worker_processes 2;
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 4096; }
stream {
  server {
    listen 127.0.0.1:%s udp reuseport;
    proxy_pass %s;
    proxy_timeout 60s;
  }
}
`, module, dir, dir, port, backend)
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command(path, "-t", "-p", dir, "-e", dir+"/error.log", "-c", cfg).CombinedOutput(); err != nil &&
		strings.Contains(string(out), "unknown directive \"stream\"") {
		b.Logf("nginx lacks the stream module (apt-get install libnginx-mod-stream): %s", out)
		return peer{}, false
	}
	p := startUDPProxy(b, "nginx", port, exec.Command(path, "-p", dir, "-e", dir+"/error.log", "-c", cfg))
	return p, true
}

// udpReqResp runs clients sockets, each sending n datagrams of size bytes
// one at a time and waiting for each answer (up to 1s: then it is lost).
func udpReqResp(addr string, clients, n, size int) (done, lost int, elapsed time.Duration, err error) {
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return 0, 0, 0, err
	}
	var ok, miss atomic.Int64
	var g errgroup.Group
	var ready sync.WaitGroup
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		if conns[i], err = net.DialUDP("udp", nil, ra); err != nil {
			return 0, 0, 0, err
		}
		defer conns[i].Close()
	}
	start := time.Now()
	for _, c := range conns {
		ready.Add(1)
		g.Go(func() error {
			defer ready.Done()
			msg, buf := bytes.Repeat([]byte("u"), size), make([]byte, 64<<10)
			for range n {
				if _, err := c.Write(msg); err != nil {
					return err
				}
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				m, err := c.Read(buf)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					miss.Add(1)
					continue
				}
				if err != nil {
					return err
				}
				if m != size {
					return fmt.Errorf("answer of %d bytes to %d", m, size)
				}
				ok.Add(1)
			}
			return nil
		})
	}
	err = g.Wait()
	elapsed = time.Since(start)
	if err == nil && ok.Load() == 0 {
		err = errors.New("no answer")
	}
	return int(ok.Load()), int(miss.Load()), elapsed, err
}

// cpuTree is the user+system CPU seconds of pid and its children (nginx's
// workers); 0 for pid 0.
func cpuTree(pid int) float64 {
	if pid == 0 {
		return 0
	}
	total := cpuSecondsOf(pid)
	kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	for _, f := range strings.Fields(string(kids)) {
		if k, err := strconv.Atoi(f); err == nil {
			total += cpuSecondsOf(k)
		}
	}
	return total
}
