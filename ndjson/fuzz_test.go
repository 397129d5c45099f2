package ndjson

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/ndlb/ndlb/framer"
	"github.com/ndlb/ndlb/listener"
)

// FuzzIdleReader sends any input over a real loopback TCP connection in
// writes of any sizes, ending with a FIN or a reset, and frames it through
// the idle reader (the path every plain TCP client takes: a raw read, a
// buffer given back whenever the socket would block, a budget that may
// refuse it). The batches must be the input's lines, a reset must cut
// the unfinished line, and every charge must come back.
func FuzzIdleReader(f *testing.F) {
	f.Add([]byte("a\nbb\nccc\n"), []byte{1, 2, 3}, false, uint16(0))
	f.Add([]byte("a\nfragment"), []byte{5}, true, uint16(1))
	f.Add(bytes.Repeat([]byte("line of text\n"), 300), []byte{200, 7, 0}, false, uint16(3))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	pool := framer.NewPool()
	f.Fuzz(func(t *testing.T, in, sizes []byte, reset bool, budgetKiB uint16) {
		client, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer server.Close()
		sent := make(chan error, 1)
		go func() { sent <- write(client.(*net.TCPConn), in, sizes, reset) }()
		cfg := framer.Config{ReadBytes: 512, MaxLineBytes: 4096, MemoryWait: 0}
		c := &listener.Conn{Conn: server}
		fr := framer.New(clientReader(c, cfg.ReadBytes, DefaultReadCoalesce), cfg, pool)
		// A budget from 8 KiB (tight: long lines may be dropped for
		// memory) up to plenty.
		fr.Budget = framer.NewBudget(int64(8+int(budgetKiB%64)) << 10)
		var out []byte
		var memDrops int
		fr.OnDrop = func(d framer.Drop) {
			if d.Reason == framer.ReasonMemory {
				memDrops++
			}
		}
		for {
			b, err := fr.Next()
			if err != nil {
				if !reset && !errors.Is(err, io.EOF) {
					t.Fatalf("clean close ended with %v", err)
				}
				break
			}
			out = append(out, b.Data...)
			b.Release()
		}
		fr.Close()
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		if used := fr.Budget.Stats().Used; used != 0 {
			t.Fatalf("%d bytes still charged", used)
		}
		want := whole(in, cfg.MaxLineBytes, !reset)
		if memDrops == 0 && !reset && !bytes.Equal(out, want) {
			t.Fatalf("got %q, want %q", out, want)
		}
		// With a reset, what arrived before it is a prefix of the lines,
		// never a cut line.
		if reset && !bytes.HasPrefix(want, out) && memDrops == 0 {
			t.Fatalf("after a reset got %q, not a prefix of %q", out, want)
		}
	})
}

// write sends in in writes of the given sizes, then half-closes or resets.
func write(c *net.TCPConn, in, sizes []byte, reset bool) error {
	defer c.Close()
	for i := 0; len(in) > 0; i++ {
		n := len(in)
		if len(sizes) > 0 {
			n = min(n, max(1, int(sizes[i%len(sizes)])))
		}
		if _, err := c.Write(in[:n]); err != nil {
			return err
		}
		in = in[n:]
	}
	if reset {
		return c.SetLinger(0)
	}
	return c.CloseWrite()
}

// whole is the input's lines as the framer forwards them: lines over max
// dropped, and an unterminated tail kept (with a newline) only at a clean
// end.
func whole(in []byte, max int, clean bool) []byte {
	var out []byte
	for len(in) > 0 {
		i := bytes.IndexByte(in, '\n')
		if i < 0 {
			if clean && len(in) <= max {
				out = append(append(out, in...), '\n')
			}
			break
		}
		if i <= max {
			out = append(out, in[:i+1]...)
		}
		in = in[i+1:]
	}
	return out
}
