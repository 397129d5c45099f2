package passthrough

import (
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// BenchmarkIdleSession reports the Go memory each idle proxied connection
// holds once parked, and its goroutines, measured in-process (the client
// and the echo target's side are measured alone first and taken off). bench/ measures the whole process's RSS against other proxies.
func BenchmarkIdleSession(b *testing.B) {
	cfg := DefaultConfig()
	cfg.ParkAfter = 50 * time.Millisecond
	echo, s := benchWorld(b, cfg)
	const n = 2000
	for b.Loop() {
		heap0, g0 := idleCost(b, echo, n, 0)
		heap, g := idleCost(b, s.Addr().String(), n, 4*cfg.ParkAfter)
		b.ReportMetric(float64(heap-heap0)/n, "heap-B/conn")
		b.ReportMetric(float64(g-g0)/n, "goroutines/conn")
	}
}

// idleCost opens n connections to addr, exchanges a byte on each, waits,
// and returns the growth of the heap and of the number of goroutines.
func idleCost(b *testing.B, addr string, n int, wait time.Duration) (heap, goroutines int64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	conns := make([]net.Conn, 0, n)
	buf := make([]byte, 1)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Write([]byte{1})
		io.ReadFull(c, buf)
		conns = append(conns, c)
	}
	time.Sleep(wait)
	runtime.GC()
	runtime.ReadMemStats(&after)
	goroutines = int64(runtime.NumGoroutine())
	for _, c := range conns {
		c.Close()
	}
	return int64(after.HeapInuse) - int64(before.HeapInuse), goroutines
}
