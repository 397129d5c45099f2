package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// Passthrough benchmarks: the same work direct to the backend, through
// ndlb --passthrough, and through HAProxy (mode tcp) and socat when they are
// installed, one after the other in each iteration.
//
//	go test ./bench -run '^$' -bench Passthrough -benchtime 1x -count 3

// peer is a way to reach the backend: direct, or through a proxy.
type peer struct {
	name string
	addr string
	pid  int // 0 for direct
	stop func()
}

// startPeers starts every proxy in front of backend. Proxies not installed
// are left out. NDLB_BENCH_ARGS adds flags to ndlb; NDLB_BENCH_ALT_ARGS or
// NDLB_BENCH_ALT_ENV (NAME=VALUE ...), when set, start a second ndlb
// ("ndlb-alt") with those flags instead, or that environment added, so that
// two settings are compared in the same run, in the same ABBA turns.
func startPeers(b *testing.B, ndlb, backend string) []peer {
	b.Helper()
	peers := []peer{{name: "direct", addr: backend, stop: func() {}}}
	startNDLB := func(name, args string, env ...string) {
		port := freeLoopbackPort(b)
		ncmd := exec.Command(ndlb, append([]string{"--passthrough", "--addr", "127.0.0.1", "--port", port,
			"--target", backend, "--log-level", "warn"}, strings.Fields(args)...)...)
		if v := os.Getenv("NDLB_BENCH_GOMAXPROCS"); v != "" {
			env = append(env, "GOMAXPROCS="+v)
		}
		ncmd.Env = append(os.Environ(), env...)
		peers = append(peers, startProxy(b, name, port, ncmd))
	}
	startNDLB("ndlb", os.Getenv("NDLB_BENCH_ARGS"))
	alt, ok := os.LookupEnv("NDLB_BENCH_ALT_ARGS")
	if altEnv := os.Getenv("NDLB_BENCH_ALT_ENV"); ok || altEnv != "" {
		startNDLB("ndlb-alt", alt, strings.Fields(altEnv)...)
	}
	if path, err := exec.LookPath("haproxy"); err == nil {
		port := freeLoopbackPort(b)
		cfg := filepath.Join(b.TempDir(), "haproxy.cfg")
		// HAProxy's defaults, as most deployments run it: no logging,
		// no kernel splicing, one thread per core.
		conf := fmt.Sprintf(`global
  maxconn 9000
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
frontend f
  bind 127.0.0.1:%s
  default_backend b
backend b
  server s1 %s
`, port, backend)
		if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
			b.Fatal(err)
		}
		peers = append(peers, startProxy(b, "haproxy", port, exec.Command(path, "-db", "-f", cfg)))
	}
	if path, err := exec.LookPath("socat"); err == nil {
		port := freeLoopbackPort(b)
		peers = append(peers, startProxy(b, "socat", port, exec.Command(path,
			"TCP-LISTEN:"+port+",bind=127.0.0.1,fork,reuseaddr,backlog=4096", "TCP:"+backend)))
	}
	return peers
}

func freeLoopbackPort(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// startProxy runs cmd and waits until it accepts on port.
func startProxy(b *testing.B, name, port string, cmd *exec.Cmd) peer {
	b.Helper()
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	addr := "127.0.0.1:" + port
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			b.Fatalf("%s does not accept on %s", name, addr)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return peer{name: name, addr: addr, pid: cmd.Process.Pid, stop: stopper(cmd)}
}

// stopper returns a function that stops cmd: SIGTERM, then SIGKILL after
// 5 s.
func stopper(cmd *exec.Cmd) func() {
	return func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
}

func stopAll(peers []peer) {
	for _, p := range peers {
		p.stop()
	}
}

// server is an in-process backend: it serves each connection with fn.
type server struct {
	ln net.Listener
	wg sync.WaitGroup
}

func newServer(b *testing.B, fn func(net.Conn)) *server {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := &server{ln: ln}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() { defer c.Close(); fn(c) })
		}
	})
	return s
}

func (s *server) addr() string { return s.ln.Addr().String() }
func (s *server) close()       { s.ln.Close(); s.wg.Wait() }

// echoConn echoes until EOF.
func echoConn(c net.Conn) {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// ratioTable logs one metric per peer and its ratio to direct and to
// HAProxy.
type ratioTable map[string]float64

func (r ratioTable) report(b *testing.B, metric, unit string, order []peer) {
	line := metric + ":"
	for _, p := range order {
		v, ok := r[p.name]
		if !ok {
			continue
		}
		line += fmt.Sprintf("  %s %.0f %s (%.2f of direct", p.name, v, unit, v/r["direct"])
		if h, ok := r["haproxy"]; ok && p.name != "haproxy" && p.name != "direct" {
			line += fmt.Sprintf(", %.2f of haproxy", v/h)
		}
		line += ")"
		b.ReportMetric(v, p.name+"-"+unit)
	}
	b.Log(line)
}

// BenchmarkPassthrough measures bulk throughput with 1 and 4 streams,
// request/response rate and latency over kept-alive connections, and new
// connections per second.
func BenchmarkPassthrough(b *testing.B) {
	bin := buildNDLB(b)
	b.Run("throughput", func(b *testing.B) {
		var received atomic.Int64
		sink := newServer(b, func(c net.Conn) {
			buf := make([]byte, 256<<10)
			for {
				n, err := c.Read(buf)
				received.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
		defer sink.close()
		peers := startPeers(b, bin, sink.addr())
		defer stopAll(peers)
		for b.Loop() {
			for _, streams := range []int{1, 4} {
				r := ratioTable{}
				for _, p := range peers {
					const perStream = 512 << 20
					received.Store(0)
					start := time.Now()
					if err := bulkSend(p.addr, streams, perStream); err != nil {
						b.Fatalf("%s: %v", p.name, err)
					}
					for received.Load() < int64(streams*perStream) {
						time.Sleep(100 * time.Microsecond)
					}
					r[p.name] = float64(streams*perStream) / time.Since(start).Seconds() / 1e6
				}
				r.report(b, fmt.Sprintf("%d stream(s)", streams), "MB/s", peers)
			}
		}
		b.ReportMetric(0, "ns/op")
	})
	for _, apart := range []bool{false, true} {
		// reqresp-apart runs the clients in a process of their own (this
		// test binary), apart from the echo server, as wrk would: their
		// goroutines no longer share a runtime and its threads with the
		// backend.
		name, what := "reqresp", "16 connections, 64-byte request/response"
		if apart {
			name, what = "reqresp-apart", what+", client apart"
		}
		b.Run(name, func(b *testing.B) {
			echo := newServer(b, echoConn)
			defer echo.close()
			peers := startPeers(b, bin, echo.addr())
			defer stopAll(peers)
			for b.Loop() {
				// A warm-up through each peer, then two turns of 1500
				// exchanges per connection in ABBA order (as
				// newConnRates); each figure is the mean of the turns'.
				for _, p := range peers {
					if _, err := closedLoop(p.addr, 16, 200, apart); err != nil {
						b.Fatalf("%s: warm-up: %v", p.name, err)
					}
				}
				rate, p50, p99, p999 := ratioTable{}, ratioTable{}, ratioTable{}, ratioTable{}
				err := abba(peers, func(p peer) error {
					r, err := closedLoop(p.addr, 16, 1500, apart)
					for i, t := range []ratioTable{rate, p50, p99, p999} {
						t[p.name] += r[i] / 2
					}
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				rate.report(b, what, "req/s", peers)
				p50.report(b, what+", latency p50", "µs-p50", peers)
				p99.report(b, what+", latency p99", "µs-p99", peers)
				p999.report(b, what+", latency p99.9", "µs-p99.9", peers)
			}
			b.ReportMetric(0, "ns/op")
		})
	}
	b.Run("paced", func(b *testing.B) {
		// Latency at a fixed request rate every peer sustains: in the
		// closed loop above, a faster proxy also loads the clients'
		// process more, and its tail grows with it.
		echo := newServer(b, echoConn)
		defer echo.close()
		peers := startPeers(b, bin, echo.addr())
		defer stopAll(peers)
		for b.Loop() {
			p50, p99, p999 := ratioTable{}, ratioTable{}, ratioTable{}
			for _, p := range peers {
				n, elapsed, lat, err := reqResp(p.addr, pacedConns, int(pacedFor/pacedEvery), pacedEvery)
				if err != nil {
					b.Fatalf("%s: %v", p.name, err)
				}
				r := summarize(n, elapsed, lat)
				p50[p.name], p99[p.name], p999[p.name] = r[1], r[2], r[3]
			}
			what := fmt.Sprintf("%d connections, a 64-byte exchange every %s each (%d/s)", pacedConns, pacedEvery,
				pacedConns*int(time.Second/pacedEvery))
			p50.report(b, what+", latency p50", "µs-p50", peers)
			p99.report(b, what+", latency p99", "µs-p99", peers)
			p999.report(b, what+", latency p99.9", "µs-p99.9", peers)
		}
		b.ReportMetric(0, "ns/op")
	})
	b.Run("newconns", func(b *testing.B) {
		echo := newServer(b, echoConn)
		defer echo.close()
		peers := startPeers(b, bin, echo.addr())
		defer stopAll(peers)
		for b.Loop() {
			r, err := newConnRates(peers, 8, 8000, func(addr string, workers, each int) (float64, error) {
				start := time.Now()
				err := newConns(addr, workers, each)
				return time.Since(start).Seconds(), err
			})
			if err != nil {
				b.Fatal(err)
			}
			r.report(b, "new connections (connect, 16-byte exchange, close; 8 at a time)", "conn/s", peers)
		}
		b.ReportMetric(0, "ns/op")
	})
	b.Run("newconns-apart", func(b *testing.B) {
		echo := newServer(b, echoConn)
		defer echo.close()
		peers := startPeers(b, bin, echo.addr())
		defer stopAll(peers)
		for b.Loop() {
			for _, workers := range []int{8, 32} {
				r, err := newConnRates(peers, workers, 8000, newConnsApart)
				if err != nil {
					b.Fatal(err)
				}
				r.report(b, fmt.Sprintf("new connections from a client process (%d at a time, %d in all)", workers, 8000), "conn/s", peers)
			}
		}
		b.ReportMetric(0, "ns/op")
	})
}

// newConnRates measures the new connections per second through each peer,
// workers at a time, with run (which returns the seconds n connections
// took). Each peer first serves an untimed warm-up, so that no proxy pays
// its first connections' page faults and pool growth in the figure; then
// the peers take two timed turns of n/2 in ABBA order, so that drift (the
// TIME_WAIT sockets each turn leaves, a neighbour's load) weighs on every
// peer alike.
func newConnRates(peers []peer, workers, n int, run func(addr string, workers, each int) (float64, error)) (ratioTable, error) {
	const warm = 1024
	for _, p := range peers {
		if _, err := run(p.addr, workers, warm/workers); err != nil {
			return nil, fmt.Errorf("%s: warm-up: %w", p.name, err)
		}
	}
	each := n / 2 / workers
	secs := map[string]float64{}
	err := abba(peers, func(p peer) error {
		s, err := run(p.addr, workers, each)
		secs[p.name] += s
		return err
	})
	if err != nil {
		return nil, err
	}
	r := ratioTable{}
	for name, s := range secs {
		r[name] = float64(2*workers*each) / s
	}
	return r, nil
}

// bulkSend writes bytes on each of streams connections, 256 KiB at a time.
func bulkSend(addr string, streams, bytes int) error {
	chunk := make([]byte, 256<<10)
	var g errgroup.Group
	for range streams {
		g.Go(func() error {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			for sent := 0; sent < bytes; sent += len(chunk) {
				if _, err := c.Write(chunk); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// reqResp runs conns kept-alive connections, each making n sequential
// 64-byte exchanges, and returns the count, the time taken and the sorted
// latencies. every = 0 starts each exchange when the last one's reply came
// (a closed loop). A positive every starts them at that interval instead,
// spread over one interval between the connections, and measures each
// latency from when its exchange was due (a late start counts against the
// exchange, so that a stall is not hidden by the requests it delayed).
func reqResp(addr string, conns, n int, every time.Duration) (int, time.Duration, []time.Duration, error) {
	lats := make([][]time.Duration, conns)
	var g errgroup.Group
	start := time.Now()
	for i := range conns {
		g.Go(func() error {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			req, resp := make([]byte, 64), make([]byte, 64)
			lats[i] = make([]time.Duration, 0, n)
			first := start.Add(every * time.Duration(i) / time.Duration(conns))
			for k := range n {
				t := time.Now()
				if every > 0 {
					t = first.Add(every * time.Duration(k))
					time.Sleep(time.Until(t))
				}
				if _, err := c.Write(req); err != nil {
					return err
				}
				if _, err := io.ReadFull(c, resp); err != nil {
					return err
				}
				lats[i] = append(lats[i], time.Since(t))
			}
			return nil
		})
	}
	err := g.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lats...)
	slices.Sort(all)
	if len(all) == 0 && err == nil {
		err = errors.New("no exchanges")
	}
	return len(all), elapsed, all, err
}

// The paced latency run: connections, the interval between one
// connection's exchanges, and how long.
const (
	pacedConns = 16
	pacedEvery = 2 * time.Millisecond
	pacedFor   = 3 * time.Second
)

// abba runs turn for each peer, in order, then again in reverse order, so
// that drift over the run weighs on every peer alike.
func abba(peers []peer, turn func(peer) error) error {
	order := slices.Clone(peers)
	for range 2 {
		for _, p := range order {
			if err := turn(p); err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
		}
		slices.Reverse(order)
	}
	return nil
}

// newConnsApart is newConns from a child process (this test binary): the
// client no longer shares its process, and its cores' scheduling, with the
// echo server. It returns the seconds taken.
func newConnsApart(addr string, workers, each int) (float64, error) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", newConnsEnv, addr, workers, each))
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("client process: %w", err)
	}
	secs, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil || secs <= 0 {
		return 0, fmt.Errorf("client process printed %q", out)
	}
	return secs, nil
}

// closedLoop runs reqResp as a closed loop, in this process or, apart, in
// a child process (this test binary). It returns the exchanges per second
// and the p50, p99 and p99.9 latencies in µs (summarize).
func closedLoop(addr string, conns, each int, apart bool) ([4]float64, error) {
	if !apart {
		n, elapsed, lat, err := reqResp(addr, conns, each, 0)
		if err != nil {
			return [4]float64{}, err
		}
		return summarize(n, elapsed, lat), nil
	}
	var r [4]float64
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", reqRespEnv, addr, conns, each))
	out, err := cmd.Output()
	if err != nil {
		return r, fmt.Errorf("client process: %w", err)
	}
	if _, err := fmt.Sscan(string(out), &r[0], &r[1], &r[2], &r[3]); err != nil || r[0] <= 0 {
		return r, fmt.Errorf("client process printed %q", out)
	}
	return r, nil
}

// summarize is n exchanges in elapsed with sorted latencies lat as
// exchanges per second and the p50, p99 and p99.9 latencies in µs.
func summarize(n int, elapsed time.Duration, lat []time.Duration) [4]float64 {
	us := func(perMille int) float64 { return float64(lat[len(lat)*perMille/1000].Microseconds()) }
	return [4]float64{float64(n) / elapsed.Seconds(), us(500), us(990), us(999)}
}

// newConns runs workers that each open each connections in turn: connect,
// one 16-byte exchange, close.
func newConns(addr string, workers, each int) error {
	var g errgroup.Group
	for range workers {
		g.Go(func() error {
			msg, buf := []byte("0123456789abcdef"), make([]byte, 16)
			for range each {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					return err
				}
				_, err = c.Write(msg)
				if err == nil {
					_, err = io.ReadFull(c, buf)
				}
				c.Close()
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// BenchmarkPassthroughIdle holds 5000 idle proxied connections through ndlb
// (and HAProxy when installed) and reports each proxy's resident memory per
// connection 2 s after the last of them went quiet, and after 6 s (parked).
func BenchmarkPassthroughIdle(b *testing.B) {
	const conns = 5000
	bin := buildNDLB(b)
	echo := newServer(b, echoConn)
	defer echo.close()
	peers := startPeers(b, bin, echo.addr())
	defer stopAll(peers)
	for b.Loop() {
		r, at2 := ratioTable{}, ratioTable{}
		for _, p := range peers {
			if p.pid == 0 || p.name == "socat" { // socat forks a process per connection
				continue
			}
			before := rss(p.pid)
			open := make([]net.Conn, 0, conns)
			buf := make([]byte, 1)
			for range conns {
				c, err := net.Dial("tcp", p.addr)
				if err != nil {
					b.Fatalf("%s: %v", p.name, err)
				}
				// One byte each way: the connection is proxied.
				if _, err := c.Write([]byte{'x'}); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				open = append(open, c)
			}
			// Idle connections: ndlb lets the goroutines of quiet
			// connections go (--park-after), and returns their
			// stacks to the system.
			time.Sleep(2 * time.Second)
			at2[p.name] = (rss(p.pid) - before) / conns / 1024
			time.Sleep(4 * time.Second)
			r[p.name] = (rss(p.pid) - before) / conns / 1024
			b.Logf("%s: RSS %.1f MiB with %d idle connections (%.1f MiB before)", p.name, rss(p.pid)/(1<<20), conns, before/(1<<20))
			for _, c := range open {
				c.Close()
			}
		}
		r["direct"], at2["direct"] = 1, 1 // no proxy; keeps the ratio columns meaningful
		at2.report(b, strconv.Itoa(conns)+" proxied connections quiet for 2 s", "KiB/conn-at-2s", peers)
		r.report(b, strconv.Itoa(conns)+" idle proxied connections, after 6 s", "KiB/conn", peers)
	}
	b.ReportMetric(0, "ns/op")
}
