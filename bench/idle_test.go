package bench

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ndlb/ndlb/internal/linetest"
)

// rss is a process's resident set size in bytes.
func rss(pid int) float64 {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb * 1024
		}
	}
	return 0
}

// BenchmarkIdleClients opens 5000 client connections to ndlb that each send
// one line and then stay open and silent, as idle shippers do, and reports
// ndlb's resident memory per connection.
func BenchmarkIdleClients(b *testing.B) {
	const conns = 5000
	bin := buildNDLB(b)
	sink, err := linetest.NewSink("127.0.0.1:0", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	var perConn float64
	for b.Loop() {
		p := startNDLB(b, bin, []string{sink.Addr()})
		time.Sleep(200 * time.Millisecond) // let the workers connect
		before, want := rss(p.cmd.Process.Pid), sink.Lines()+conns
		open := make([]net.Conn, 0, conns)
		line := linetest.AppendLine(nil, 0, 0)
		for range conns {
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				b.Fatal(err)
			}
			c.Write(line)
			open = append(open, c)
		}
		for sink.Lines() < want {
			time.Sleep(time.Millisecond)
		}
		perConn += (rss(p.cmd.Process.Pid) - before) / conns
		for _, c := range open {
			c.Close()
		}
		p.stop()
	}
	b.ReportMetric(perConn/float64(b.N)/1024, "KiB/idle-conn")
	b.ReportMetric(0, "ns/op")
}
