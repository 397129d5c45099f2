package ndjson

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ndlb/ndlb/dispatch"
	"github.com/ndlb/ndlb/framer"
)

// rawSink keeps every byte its connections send.
type rawSink struct {
	ln  net.Listener
	mu  sync.Mutex
	got []byte
	wg  sync.WaitGroup
}

func newRawSink(t *testing.T) *rawSink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawSink{ln: ln}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				s.mu.Lock()
				s.got = append(s.got, b...)
				s.mu.Unlock()
			})
		}
	})
	t.Cleanup(func() { ln.Close(); s.wg.Wait() })
	return s
}

func (s *rawSink) bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.got)
}

// splitMessages cuts what a target got into its messages, sorted.
func splitMessages(t *testing.T, b []byte, f framer.Framing) []string {
	var out []string
	for len(b) > 0 {
		if f == framer.Newline {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				t.Fatalf("a torn line: %q", b)
			}
			out, b = append(out, string(b[:i])), b[i+1:]
			continue
		}
		sp := bytes.IndexByte(b, ' ')
		n, err := strconv.Atoi(string(b[:max(sp, 0)]))
		if sp < 0 || err != nil || sp+1+n > len(b) {
			return append(out, "TORN:"+string(b))
		}
		out, b = append(out, string(b[sp+1:sp+1+n])), b[sp+1+n:]
	}
	slices.Sort(out)
	return out
}

func octetFrames(msgs ...string) []byte {
	var b []byte
	for _, m := range msgs {
		b = strconv.AppendInt(b, int64(len(m)), 10)
		b = append(append(b, ' '), m...)
	}
	return b
}

// Octet-counted clients: to octet-counted targets every message arrives
// byte for byte, newlines and all; to newline targets a message's newlines
// are written #012. An oversize message is dropped and counted, a bad
// prefix closes its client, counted, and the ledger closes. The limit is
// on a message as the targets get it: one of exactly MaxLineBytes, all
// backslashes and newlines, reaches octet-counted targets byte for byte
// (ndlb escapes both inside, doubling its length there) and is too long
// for newline targets once its newlines are #012.
func TestOctetCounted(t *testing.T) {
	msgs := []string{"<13>1 2026-12-02T10:00:00Z host app - - - plain", "stack trace:\n  at a()\n  at b()", "back\\slash #012 literal", ""}
	for _, target := range []framer.Framing{framer.OctetCounted, framer.Newline} {
		t.Run(string(target), func(t *testing.T) {
			sink := newRawSink(t)
			cfg := DefaultConfig()
			cfg.Targets, cfg.Framing, cfg.TargetFraming = []string{sink.ln.Addr().String()}, framer.OctetCounted, target
			cfg.Framer.MaxLineBytes = 1000
			cfg.Logger = slog.New(slog.DiscardHandler)
			srv, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			srv.Start(newLocalListener(t))
			c, err := net.Dial("tcp", srv.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			in := octetFrames(msgs...)
			in = append(in, octetFrames(string(bytes.Repeat([]byte("o"), 2000)))...) // oversize
			in = append(in, octetFrames(msgs[1])...)
			full := strings.Repeat("\\\n", cfg.Framer.MaxLineBytes/2)
			in = append(in, octetFrames(full)...)
			for i := 0; i < len(in); i += 7 { // in small pieces
				c.Write(in[i:min(i+7, len(in))])
			}
			c.Close()
			bad, err := net.Dial("tcp", srv.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			bad.Write(append(octetFrames("fine"), "x7 oops"...))
			io.Copy(io.Discard, bad) // closed by ndlb
			bad.Close()
			sum := srv.Shutdown()
			// Two clients: their messages may interleave in any order.
			want := append(append([]string{}, msgs...), msgs[1], "fine")
			delivered, oversize := uint64(7), uint64(1)
			if target == framer.OctetCounted {
				want = append(want, full)
			} else {
				delivered, oversize = 6, 2
			}
			if target == framer.Newline {
				for i, m := range want {
					want[i] = strings.ReplaceAll(m, "\n", "#012")
				}
			}
			slices.Sort(want)
			var got []string
			deadline := time.Now().Add(5 * time.Second)
			for ; time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if got = splitMessages(t, sink.bytes(), target); slices.Equal(got, want) {
					break
				}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("the target got\n%q\nwant\n%q", got, want)
			}
			l := sum.Ledger
			if !sum.Clean || !l.Closed() || l.Delivered != delivered || l.Dropped[dispatch.DropOversize] != oversize || sum.BadFrames != 1 {
				t.Fatalf("summary %+v", sum)
			}
		})
	}
}

// Octet-counted clients: idle ones hold none of the client memory; one
// that stops inside a message is closed at the line timeout, its fragment
// counted; bytes that came with a PROXY header are framed too.
func TestOctetCountedClients(t *testing.T) {
	sink := newRawSink(t)
	cfg := DefaultConfig()
	cfg.Targets, cfg.Framing = []string{sink.ln.Addr().String()}, framer.OctetCounted
	cfg.LineTimeout = 200 * time.Millisecond
	cfg.Listener.AcceptProxy = true
	cfg.Logger = slog.New(slog.DiscardHandler)
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(newLocalListener(t))
	dial := func() net.Conn {
		c, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	hdr := "PROXY TCP4 192.0.2.1 192.0.2.2 5000 514\r\n"
	// Frames in the same write as the header, and after it.
	c := dial()
	c.Write(append([]byte(hdr), octetFrames("first", "second\nline")...))
	c.Write(octetFrames("third"))
	var idle []net.Conn
	for range 20 {
		ic := dial()
		ic.Write(append([]byte(hdr), octetFrames("hello")...))
		idle = append(idle, ic)
	}
	waitUntil(t, "23 messages", func() bool { return srv.Stats().Ledger.Delivered == 23 })
	waitUntil(t, "idle clients hold no memory", func() bool { return srv.Stats().ClientMemory.Used == 0 })
	stuck := dial()
	stuck.Write(append([]byte(hdr), "100 partial"...))
	waitUntil(t, "the stuck client timed out", func() bool { return srv.Stats().LineTimeouts == 1 })
	for _, ic := range append(idle, c, stuck) {
		ic.Close()
	}
	sum := srv.Shutdown()
	if l := sum.Ledger; !l.Closed() || l.Delivered != 23 || l.Dropped[dispatch.DropIncomplete] != 1 {
		t.Fatalf("summary %+v", sum)
	}
	var got []string // the targets' framing is the clients'
	waitUntil(t, "the sink has every message", func() bool { got = splitMessages(t, sink.bytes(), framer.OctetCounted); return len(got) == 23 })
	if !slices.Contains(got, "first") || !slices.Contains(got, "second\nline") || !slices.Contains(got, "third") {
		t.Fatalf("got %q", got)
	}
}
