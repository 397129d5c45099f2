package ndjson

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/ndlb/ndlb/internal/certtest"
	"github.com/ndlb/ndlb/internal/linetest"
)

// splitConn writes each TLS record in two parts, so that the server
// reads records that came in part.
type splitConn struct{ net.Conn }

func (c splitConn) Write(p []byte) (int, error) {
	h := len(p) / 2
	n, err := c.Conn.Write(p[:h])
	if err != nil {
		return n, err
	}
	m, err := c.Conn.Write(p[h:])
	return n + m, err
}

// TLS clients are read as plain ones are (TestIdleClientsHoldNoBuffer): a
// quiet one holds nothing of the client memory budget, so many idle TLS
// clients cannot take it all and stop the others. Through a plain read of
// the TLS connection, each held a 16 KiB read buffer while it waited: 8
// idle clients filled this test's 256 KiB, and the next client's lines
// were not read.
func TestIdleTLSClientsHoldNoBuffer(t *testing.T) {
	serverTLS, clientTLS, err := certtest.Configs("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv, sink := startServer(t, func(c *Config) {
		c.Listener.TLS = serverTLS
		c.ClientMemory, c.Framer.MaxLineBytes = 256<<10, 16<<10
	})
	dial := func(split bool) *tls.Conn {
		t.Helper()
		nc, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if split {
			nc = splitConn{nc}
		}
		c := tls.Client(nc, clientTLS)
		t.Cleanup(func() { c.Close() })
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		return c
	}
	var conns []*tls.Conn
	for i := range 40 {
		c := dial(i%2 == 1)
		conns = append(conns, c)
		if _, err := c.Write(linetest.AppendLine(nil, uint32(i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "40 lines delivered", func() bool { return sink.Lines() == 40 })
	waitUntil(t, "no memory held by idle TLS clients", func() bool { return srv.Stats().ClientMemory.Used == 0 })
	late := dial(false) // a budget held by the idle clients would leave it unread
	late.Write(linetest.AppendLine(nil, 100, 0))
	waitUntil(t, "the late client's line", func() bool { return sink.Lines() == 41 })
	for _, c := range conns[:10] {
		c.Write([]byte("a partial line of forty bytes, no end.."))
	}
	waitUntil(t, "ten small partial lines", func() bool { return srv.Stats().ClientMemory.Used == 10*512 })
	for _, c := range conns[:10] {
		c.Write([]byte("\n"))
	}
	waitUntil(t, "the ten lines ended", func() bool { return sink.Lines() == 51 })
	for _, c := range append(conns, late) {
		c.Close()
	}
	sum := srv.Shutdown()
	if sum.Ledger.Received != 51 || sum.Ledger.Delivered != 51 || !sum.Ledger.Closed() {
		t.Fatalf("ledger %+v", sum.Ledger)
	}
}
