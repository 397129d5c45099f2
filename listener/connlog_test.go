package listener

import (
	"bytes"
	"log/slog"
	"net"
	"testing"

	"github.com/segmentio/ksuid"
)

// A connection's logger writes what slog's With would have: the same
// attributes in the same order, through WithAttrs and WithGroup too.
func TestConnLoggerWritesAsWith(t *testing.T) {
	client := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}
	proxy := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000}
	c := &Conn{ID: ksuid.New(), Client: client}
	opts := &slog.HandlerOptions{ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}}
	for _, tc := range []struct {
		name   string
		proxy  net.Addr
		client bool
		with   []any
	}{
		{"plain", nil, true, []any{"conn", c.ID.String(), "client", client.String()}},
		{"proxy", proxy, true, []any{"conn", c.ID.String(), "client", client.String(), "proxy", proxy.String()}},
		{"rejected proxy", proxy, false, []any{"conn", c.ID.String(), "proxy", proxy.String()}},
	} {
		var want, got bytes.Buffer
		wl := slog.New(slog.NewJSONHandler(&want, opts)).With(tc.with...)
		gl := connLogger(slog.New(slog.NewJSONHandler(&got, opts)), c, tc.proxy, tc.client)
		for _, l := range []*slog.Logger{wl, gl} {
			l.Info("proxying", "target", "10.0.0.1:80", "attempts", 1)
			l.With("extra", 2).Warn("closed", "n", 3)
			l.WithGroup("g").Info("grouped", "k", "v")
			for i := range 8 { // more attributes than a record holds inline
				l.Info("many", "a", i, "b", i, "c", i, "d", i, "e", i, "f", i)
			}
		}
		if got.String() != want.String() {
			t.Errorf("%s:\ngot  %s\nwant %s", tc.name, got.String(), want.String())
		}
	}
	if !connLogger(slog.New(slog.NewJSONHandler(&bytes.Buffer{}, &slog.HandlerOptions{Level: slog.LevelWarn})), c, nil, true).Enabled(t.Context(), slog.LevelWarn) {
		t.Error("a warning is not enabled")
	}
}
