package passthrough

import (
	"io"
	"net"
	"testing"
)

// BenchmarkNewConn is one client connection through the proxy: connect, a
// 16-byte exchange, close. Run with -cpuprofile to see the per-connection
// cost; bench/ compares it with other proxies.
func BenchmarkNewConn(b *testing.B) {
	_, s := benchWorld(b, DefaultConfig())
	msg, buf := []byte("0123456789abcdef"), make([]byte, 16)
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			c.Write(msg)
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
}

// benchWorld starts an echo target and a server in front of it, with cfg
// (its targets and logger set here), and returns the target's address and
// the server.
func benchWorld(b *testing.B, cfg Config) (string, *Server) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	cfg.Targets = []string{ln.Addr().String()}
	cfg.Logger = quiet()
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	pl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s.Start(pl)
	b.Cleanup(func() { s.Shutdown() })
	return ln.Addr().String(), s
}

// BenchmarkRequestResponse is one 64-byte request and its answer on a
// kept-alive proxied connection: with -benchmem, whether the proxy
// allocates per message (the client and the echo target are measured too;
// both allocate nothing per message).
func BenchmarkRequestResponse(b *testing.B) {
	_, s := benchWorld(b, DefaultConfig())
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 64)
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, msg); err != nil {
			b.Fatal(err)
		}
	}
}
