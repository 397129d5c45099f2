package passthrough

import (
	"io"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
)

func TestIdleMemoryBreakdown(t *testing.T) {
	if testing.Short() {
		t.Skip()
	}
	ln := newLocalListener(t)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	s := start(t, testConfig(ln.Addr().String()))
	const n = 2000
	for _, addr := range []string{ln.Addr().String(), s.Addr().String()} {
		measure(t, addr, n)
	}
}

func measure(t *testing.T, addr string, n int) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var conns []net.Conn
	buf := make([]byte, 1)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte{1})
		io.ReadFull(c, buf)
		conns = append(conns, c)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	t.Logf("%s per conn: heap %d B, stack %d B, other sys %d B", addr,
		(after.HeapInuse-before.HeapInuse)/uint64(n), (after.StackInuse-before.StackInuse)/uint64(n), (after.Sys-before.Sys)/uint64(n))
	if f := os.Getenv("HEAPPROF"); f != "" {
		w, _ := os.Create(f + addr[len(addr)-5:])
		pprof.WriteHeapProfile(w)
		w.Close()
	}
	for _, c := range conns {
		c.Close()
	}
}
