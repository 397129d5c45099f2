package bench

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

const (
	e2eBytes = 512 << 20 // per run, over all clients
	e2eChunk = 64 << 10  // bytes per client write
)

// e2eClients is the number of client connections of an end-to-end run: 4,
// or NDLB_BENCH_CLIENTS (the issue 15 baseline used 8), which must share
// the run's 64 KiB chunks evenly (a power of two up to 8192), so that
// every client sends as much and the GB counted are the GB sent.
var e2eClients = func() int {
	v := os.Getenv("NDLB_BENCH_CLIENTS")
	if v == "" {
		return 4
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || (e2eBytes/e2eChunk)%n != 0 {
		fmt.Fprintf(os.Stderr, "NDLB_BENCH_CLIENTS=%q: want a number of clients that divides %d (a power of two)\n", v, e2eBytes/e2eChunk)
		os.Exit(2)
	}
	return n
}()

// buildNDLB builds the static binary the Dockerfile builds;
// NDLB_BENCH_BIN names a binary to use instead (one with symbols, to
// profile with perf).
func buildNDLB(b *testing.B) string {
	b.Helper()
	if bin := os.Getenv("NDLB_BENCH_BIN"); bin != "" {
		return bin
	}
	out := filepath.Join(b.TempDir(), "ndlb")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "../cmd/ndlb")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, msg)
	}
	return out
}

// ndlbProc is ndlb running as a child process.
type ndlbProc struct {
	cmd  *exec.Cmd
	addr string
}

func startNDLB(b *testing.B, bin string, targets []string, env ...string) *ndlbProc {
	b.Helper()
	return startNDLBArgs(b, bin, targets, nil, env...)
}

// startNDLBArgs is startNDLB with more flags.
func startNDLBArgs(b *testing.B, bin string, targets, extra []string, env ...string) *ndlbProc {
	b.Helper()
	args := append([]string{"--addr", "127.0.0.1", "--port", "0", "--log-format", "json", "--target", strings.Join(targets, ",")}, strings.Fields(os.Getenv("NDLB_BENCH_ARGS"))...)
	cmd := exec.Command(bin, append(args, extra...)...)
	cmd.Env = append(os.Environ(), env...)
	if v := os.Getenv("NDLB_BENCH_GOMAXPROCS"); v != "" {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+v)
	}
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &ndlbProc{cmd: cmd}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if line := sc.Text(); strings.Contains(line, `"msg":"listening"`) {
			i := strings.Index(line, `"addr":"`) + len(`"addr":"`)
			p.addr = line[i : i+strings.IndexByte(line[i:], '"')]
			break
		}
	}
	go func() {
		for sc.Scan() { // keep draining logs
		}
	}()
	if p.addr == "" {
		b.Fatal("ndlb did not start")
	}
	return p
}

func (p *ndlbProc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait()
}

// cpuSeconds is the process's user+system CPU time so far.
func (p *ndlbProc) cpuSeconds() float64 { return cpuSecondsOf(p.cmd.Process.Pid) }

// cpuSecondsOf is process pid's user+system CPU time so far.
func cpuSecondsOf(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func (p *ndlbProc) peakRSS() float64 { return peakRSSOf(p.cmd.Process.Pid) }

// peakRSSOf is process pid's peak resident set size in MiB.
func peakRSSOf(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// A generator writes one client's share of the run to w.
type generator interface {
	// chunks is how many writes one client makes; each holds chunkLines lines.
	chunks() int
	chunkLines() int
	// write makes and writes chunk i.
	write(w net.Conn, buf []byte, i int) ([]byte, error)
}

// bulk writes ready-made 64 KiB chunks: the cheapest possible client, so the
// direct run measures the kernel's copying alone.
type bulk struct{ chunk []byte }

func (g bulk) chunks() int     { return e2eBytes / e2eClients / len(g.chunk) }
func (g bulk) chunkLines() int { return len(g.chunk) / 256 }
func (g bulk) write(w net.Conn, buf []byte, _ int) ([]byte, error) {
	_, err := w.Write(g.chunk)
	return buf, err
}

// shipper formats every line as a 256-byte JSON log record and writes 16 KiB
// at a time, as log shippers do.
type shipper struct{}

const shipperLines = 64 // 16 KiB of 256-byte records

func (shipper) chunks() int     { return e2eBytes / e2eClients / (shipperLines * 256) }
func (shipper) chunkLines() int { return shipperLines }
func (shipper) write(w net.Conn, buf []byte, i int) ([]byte, error) {
	buf = buf[:0]
	for j := range shipperLines {
		buf = appendRecord(buf, i*shipperLines+j)
	}
	_, err := w.Write(buf)
	return buf, err
}

// octetShipper is shipper with each record sent as an RFC 6587
// octet-counted frame ("256 " and the record, its newline included, as
// syslog senders often end a message), the way rsyslog and syslog-ng
// send syslog over TCP; ndlb runs with octetArgs. The newline ending each
// message lets the sinks count messages sent to them directly or through
// HAProxy, which forwards the frames as they are; ndlb writes each message
// as a line (its ending newline dropped, one added).
type octetShipper struct{}

// octetArgs are ndlb's flags for octetShipper's clients.
var octetArgs = []string{"--framing", "octet-counted", "--target-framing", "newline"}

func (octetShipper) chunks() int     { return shipper{}.chunks() }
func (octetShipper) chunkLines() int { return shipperLines }
func (octetShipper) write(w net.Conn, buf []byte, i int) ([]byte, error) {
	buf = buf[:0]
	for j := range shipperLines {
		buf = append(buf, "256 "...)
		buf = appendRecord(buf, i*shipperLines+j)
	}
	_, err := w.Write(buf)
	return buf, err
}

var epoch = time.Date(2026, 11, 21, 0, 0, 0, 0, time.UTC)

// appendRecord appends a 256-byte JSON log record (255 bytes and '\n').
func appendRecord(dst []byte, seq int) []byte {
	start := len(dst)
	dst = append(dst, `{"ts":"`...)
	dst = epoch.Add(time.Duration(seq)*time.Microsecond).AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","level":"info","host":"web-`...)
	dst = strconv.AppendInt(dst, int64(seq%64), 10)
	dst = append(dst, `","service":"checkout","seq":`...)
	dst = strconv.AppendInt(dst, int64(seq), 10)
	dst = append(dst, `,"msg":"order placed","pad":"`...)
	for len(dst)-start < 253 {
		dst = append(dst, 'x')
	}
	return append(dst, "\"}\n"...)
}

// generate sends e2eBytes of 256-byte lines over e2eClients connections,
// client i to addrs[i%len(addrs)], and waits until the sinks have counted
// every line. It returns the elapsed time. With oneCPU the clients run in a
// separate process limited to one CPU (GOMAXPROCS=1), as a single-threaded
// shipper would.
func generate(b *testing.B, gen generator, oneCPU bool, addrs []string, sinks []*linetest.Sink) time.Duration {
	b.Helper()
	want := uint64(0)
	for _, s := range sinks {
		want += s.Lines()
	}
	want += uint64(e2eClients * gen.chunks() * gen.chunkLines())
	start := time.Now()
	if oneCPU {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), genEnv+"="+strings.Join(addrs, ","), "GOMAXPROCS=1")
		if _, ok := gen.(octetShipper); ok {
			cmd.Env = append(cmd.Env, genOctetEnv+"=1")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("generator process: %v\n%s", err, out)
		}
	} else if err := runGenerator(addrs, gen); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := uint64(0)
		for _, s := range sinks {
			got += s.Lines()
		}
		if got >= want {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			b.Fatalf("sinks got %d of %d lines", got, want)
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// BenchmarkEndToEnd moves 512 MiB of 256-byte lines from e2eClients client
// connections into 2 sinks, directly, through ndlb and through HAProxy
// (mode tcp, round-robin over the same sinks: it forwards whole
// connections), in each iteration, rotating the order between iterations.
// It reports each one's rate, the ratios, and CPU seconds per GB and peak
// RSS of both proxies: with shipper-like clients that format every record,
// in a single-threaded process of their own and spread over both CPUs, and
// with bulk clients that write ready-made chunks, and with the
// single-threaded shipper sending octet-counted syslog frames
// (octetShipper). HAProxy must be installed (apt-get install haproxy): a
// missing peer fails the benchmark.
func BenchmarkEndToEnd(b *testing.B) {
	bin := buildNDLB(b)
	b.Run("shipper-1cpu", func(b *testing.B) { endToEnd(b, bin, shipper{}, true) })
	b.Run("shipper", func(b *testing.B) { endToEnd(b, bin, shipper{}, false) })
	b.Run("bulk", func(b *testing.B) { endToEnd(b, bin, bulk{lines256(e2eChunk)}, false) })
	b.Run("octet-1cpu", func(b *testing.B) { endToEnd(b, bin, octetShipper{}, true, octetArgs...) })
}

// startHAProxy runs HAProxy in mode tcp in front of addrs, round-robin,
// with the same threads as ndlb has cores.
func startHAProxy(b *testing.B, addrs []string) peer {
	b.Helper()
	path, err := exec.LookPath("haproxy")
	if err != nil {
		b.Fatal("haproxy is not installed (apt-get install haproxy): the end-to-end benchmark compares with it")
	}
	port := freeLoopbackPort(b)
	var servers strings.Builder
	for i, a := range addrs {
		fmt.Fprintf(&servers, "  server s%d %s\n", i, a)
	}
	conf := fmt.Sprintf("global\n  maxconn 9000\n  nbthread 2\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n"+
		"frontend f\n  bind 127.0.0.1:%s\n  default_backend b\nbackend b\n  balance roundrobin\n%s", port, servers.String())
	cfg := filepath.Join(b.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		b.Fatal(err)
	}
	return startProxy(b, "haproxy", port, exec.Command(path, "-db", "-f", cfg))
}

// endToEnd runs gen directly, through ndlb (with args) and through HAProxy.
func endToEnd(b *testing.B, bin string, gen generator, oneCPU bool, args ...string) {
	sinks, addrs := newSinks(b, 2)
	p := startNDLBArgs(b, bin, addrs, args)
	var once sync.Once
	defer once.Do(p.stop)
	hap := startHAProxy(b, addrs)
	defer hap.stop()
	var took [3]time.Duration // direct, ndlb, haproxy
	var cpu [2]float64        // ndlb, haproxy
	runs := []func(){
		func() { took[0] += generate(b, gen, oneCPU, addrs, sinks) },
		func() {
			c0 := p.cpuSeconds()
			took[1] += generate(b, gen, oneCPU, []string{p.addr}, sinks)
			cpu[0] += p.cpuSeconds() - c0
		},
		func() {
			c0 := cpuSecondsOf(hap.pid)
			took[2] += generate(b, gen, oneCPU, []string{hap.addr}, sinks)
			cpu[1] += cpuSecondsOf(hap.pid) - c0
		},
	}
	// One untimed run through each first: a proxy's first gigabyte pays
	// for touching its buffers' memory for the first time (page faults,
	// about 5 % of ndlb's CPU in a three-iteration run), which a
	// long-running proxy does not.
	generate(b, gen, oneCPU, []string{p.addr}, sinks)
	generate(b, gen, oneCPU, []string{hap.addr}, sinks)
	i := 0
	for b.Loop() {
		for k := range runs {
			runs[(i+k)%len(runs)]()
		}
		i++
	}
	gb := float64(b.N) * e2eBytes / 1e9
	rss, hapRSS := p.peakRSS(), peakRSSOf(hap.pid)
	once.Do(p.stop)
	b.ReportMetric(gb*1e3/took[0].Seconds(), "direct-MB/s")
	b.ReportMetric(gb*1e3/took[1].Seconds(), "ndlb-MB/s")
	b.ReportMetric(gb*1e9/256/took[1].Seconds(), "ndlb-lines/s")
	b.ReportMetric(gb*1e3/took[2].Seconds(), "haproxy-MB/s")
	b.ReportMetric(took[0].Seconds()/took[1].Seconds(), "ndlb/direct")
	b.ReportMetric(took[0].Seconds()/took[2].Seconds(), "haproxy/direct")
	b.ReportMetric(took[2].Seconds()/took[1].Seconds(), "ndlb/haproxy")
	b.ReportMetric(cpu[0]/gb, "ndlb-cpu-s/GB")
	b.ReportMetric(cpu[1]/gb, "haproxy-cpu-s/GB")
	b.ReportMetric(cpu[0]/cpu[1], "ndlb/haproxy-cpu")
	b.ReportMetric(rss, "ndlb-peak-RSS-MiB")
	b.ReportMetric(hapRSS, "haproxy-peak-RSS-MiB")
	b.ReportMetric(0, "ns/op")
}

// newSinks starts n counting sinks, closed when b ends.
func newSinks(b *testing.B, n int) ([]*linetest.Sink, []string) {
	var sinks []*linetest.Sink
	var addrs []string
	for range n {
		s, err := linetest.NewSink("127.0.0.1:0", nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(s.Close)
		sinks = append(sinks, s)
		addrs = append(addrs, s.Addr())
	}
	return sinks, addrs
}

// buildRevision builds the static binary of git revision rev (the working
// tree is not touched: the revision is exported with git archive).
func buildRevision(b *testing.B, rev string) string {
	b.Helper()
	src := b.TempDir()
	archive := exec.Command("sh", "-c", fmt.Sprintf("git archive %q | tar -x -C %q", rev, src))
	archive.Dir = ".."
	if out, err := archive.CombinedOutput(); err != nil {
		b.Fatalf("git archive %s: %v\n%s", rev, err, out)
	}
	out := filepath.Join(b.TempDir(), "ndlb-"+rev)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/ndlb")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build %s: %v\n%s", rev, err, msg)
	}
	return out
}

// BenchmarkEndToEndBeforeAfter is BenchmarkEndToEnd with two builds of
// ndlb in one invocation: the working tree ("after") and the git revision
// NDLB_BENCH_BASE ("before", default HEAD). Each iteration runs direct,
// before and after, in an order that rotates between iterations, and the
// benchmark reports each one's lines/s and CPU seconds per GB and the
// after/before ratios. NDLB_BENCH_AFTER_ARGS holds flags for the "after"
// build only, to compare a setting with the same code.
func BenchmarkEndToEndBeforeAfter(b *testing.B) {
	base := os.Getenv("NDLB_BENCH_BASE")
	if base == "" {
		base = "HEAD"
	}
	after, before := buildNDLB(b), buildRevision(b, base)
	b.Logf("before: %s", base)
	b.Run("shipper-1cpu", func(b *testing.B) { beforeAfter(b, before, after, shipper{}, true) })
	b.Run("shipper", func(b *testing.B) { beforeAfter(b, before, after, shipper{}, false) })
	b.Run("bulk", func(b *testing.B) { beforeAfter(b, before, after, bulk{lines256(e2eChunk)}, false) })
	b.Run("octet-1cpu", func(b *testing.B) { beforeAfter(b, before, after, octetShipper{}, true, octetArgs...) })
}

// beforeAfter runs gen directly and through both builds (with args).
func beforeAfter(b *testing.B, beforeBin, afterBin string, gen generator, oneCPU bool, args ...string) {
	sinks, addrs := newSinks(b, 2)
	procs := []*ndlbProc{startNDLBArgs(b, beforeBin, addrs, args),
		startNDLBArgs(b, afterBin, addrs, append(slices.Clone(args), strings.Fields(os.Getenv("NDLB_BENCH_AFTER_ARGS"))...))}
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	var took [3]time.Duration // direct, before, after
	var cpu [2]float64
	for _, p := range procs { // untimed, as in endToEnd
		generate(b, gen, oneCPU, []string{p.addr}, sinks)
	}
	i := 0
	for b.Loop() {
		for k := range 3 {
			run := (i + k) % 3
			switch run {
			case 0:
				took[0] += generate(b, gen, oneCPU, addrs, sinks)
			default:
				p := procs[run-1]
				c0 := p.cpuSeconds()
				took[run] += generate(b, gen, oneCPU, []string{p.addr}, sinks)
				cpu[run-1] += p.cpuSeconds() - c0
			}
		}
		i++
	}
	gb := float64(b.N) * e2eBytes / 1e9
	lines := func(d time.Duration) float64 { return gb * 1e9 / 256 / d.Seconds() }
	b.ReportMetric(lines(took[0]), "direct-lines/s")
	b.ReportMetric(lines(took[1]), "before-lines/s")
	b.ReportMetric(lines(took[2]), "after-lines/s")
	b.ReportMetric(took[1].Seconds()/took[2].Seconds(), "after/before-rate")
	b.ReportMetric(cpu[0]/gb, "before-cpu-s/GB")
	b.ReportMetric(cpu[1]/gb, "after-cpu-s/GB")
	b.ReportMetric(cpu[1]/cpu[0], "after/before-cpu")
	b.ReportMetric(procs[0].peakRSS(), "before-peak-RSS-MiB")
	b.ReportMetric(procs[1].peakRSS(), "after-peak-RSS-MiB")
	b.ReportMetric(0, "ns/op")
}
