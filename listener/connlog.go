package listener

import (
	"context"
	"log/slog"
	"net"
)

// connHandler gives a connection's log records its attributes (conn,
// client, proxy) when they are logged, rather than formatting them when
// the connection opens as slog's Logger.With does: an idle connection then
// holds a pointer and an address for its logger, not a copy of the base
// handler and its preformatted attributes (about 200 bytes). Records come
// out as With would write them: the connection's attributes first.
type connHandler struct {
	h      slog.Handler
	c      *Conn
	proxy  net.Addr // the PROXY header's sender, or nil
	client bool     // c.Client is known (the PROXY header was read)
}

// connLogger returns c's logger over base.
func connLogger(base *slog.Logger, c *Conn, proxy net.Addr, client bool) *slog.Logger {
	return slog.New(&connHandler{h: base.Handler(), c: c, proxy: proxy, client: client})
}

// attrs returns the connection's attributes in buf.
func (h *connHandler) attrs(buf *[3]slog.Attr) []slog.Attr {
	as := append(buf[:0], slog.String("conn", h.c.ID.String()))
	if h.client {
		as = append(as, slog.String("client", h.c.Client.String()))
	}
	if h.proxy != nil {
		as = append(as, slog.String("proxy", h.proxy.String()))
	}
	return as
}

// Enabled implements slog.Handler.
func (h *connHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.h.Enabled(ctx, level)
}

// Handle implements slog.Handler.
func (h *connHandler) Handle(ctx context.Context, r slog.Record) error {
	var buf [3]slog.Attr
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(h.attrs(&buf)...)
	r.Attrs(func(a slog.Attr) bool {
		nr.AddAttrs(a)
		return true
	})
	return h.h.Handle(ctx, nr)
}

// WithAttrs implements slog.Handler.
func (h *connHandler) WithAttrs(as []slog.Attr) slog.Handler {
	var buf [3]slog.Attr
	return h.h.WithAttrs(append(h.attrs(&buf), as...))
}

// WithGroup implements slog.Handler.
func (h *connHandler) WithGroup(name string) slog.Handler {
	var buf [3]slog.Attr
	return h.h.WithAttrs(h.attrs(&buf)).WithGroup(name)
}
