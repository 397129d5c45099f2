package ndjson

import (
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ndlb/ndlb/internal/linetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newLocalListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// A server starts, frames clients into the queue, delivers, drops an
// oversize line with a count, and stops without leaking goroutines.
func TestServeAndShutdown(t *testing.T) {
	ledger := linetest.NewLedger()
	sink, err := linetest.NewSink("127.0.0.1:0", ledger)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	cfg := DefaultConfig()
	cfg.Targets = []string{sink.Addr()}
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
	b := linetest.AppendLine(nil, 1, 0)
	b = append(b, strings.Repeat("z", 5000)+"\n"...)
	b = linetest.AppendLine(b, 1, 1)
	c.Write(b)
	c.Close()
	sum := srv.Shutdown()
	if !sum.Clean || sum.DroppedOversize != 1 || sum.Queue.LinesOut != 2 {
		t.Fatalf("summary %+v", sum)
	}
	sink.WaitDrained(5 * time.Second)
	if r := ledger.Check(map[uint32]uint32{1: 2}); r.Lost != 0 || r.Received != 2 {
		t.Fatal(r)
	}
	if srv.Targets()[0].Lines != 2 {
		t.Fatalf("target stats %+v", srv.Targets())
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
	}{
		{name: "no targets", mod: func(c *Config) { c.Targets = nil }},
		{name: "zero drain", mod: func(c *Config) { c.DrainTimeout = 0 }},
		{name: "buffer smaller than a line", mod: func(c *Config) { c.Queue.MaxBytes = 1024 }},
		{name: "bad pool", mod: func(c *Config) { c.Pool.Connections = 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Targets = []string{"127.0.0.1:1"}
			tt.mod(&c)
			if err := c.Validate(); err == nil {
				t.Fatal("Validate accepted a bad config")
			}
			if _, err := New(c); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
	c := DefaultConfig()
	if err := c.Validate(); !errors.Is(err, ErrConfig) {
		t.Fatalf("no targets: %v", err)
	}
}
